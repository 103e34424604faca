"""``/docs``: a self-contained page (no CDN needed) that renders the v1 OpenAPI document and
points to both machine-readable documents."""

from __future__ import annotations

import html
from functools import cache

from flask import Blueprint, Response

from web.api.v1.openapi import build_spec

bp = Blueprint("docs", __name__)


@bp.get("/docs")
def docs() -> Response:
    return Response(_page(), mimetype="text/html")


@cache
def _page() -> str:
    """Written once per process: the document it renders never changes while it runs, and
    anyone may ask for the page."""
    doc = build_spec()
    rows = []
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            codes = ", ".join(op.get("responses", {}))
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {})
            ref = body.get("schema", {}).get("$ref", "").rsplit("/", 1)[-1]
            rows.append(
                f"<tr><td><code>{method.upper()}</code></td><td><code>{html.escape(path)}"
                f"</code></td><td>{html.escape(op.get('summary', ''))}</td>"
                f"<td>{html.escape(ref)}</td><td>{codes}</td></tr>"
            )
    schemas = []
    for sname, schema in doc["components"]["schemas"].items():
        props = ", ".join(f"<code>{html.escape(p)}</code>" for p in schema.get("properties", {}))
        schemas.append(f"<li><b>{html.escape(sname)}</b>: {props}</li>")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Paddock API</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:72em}}td,th{{padding:4px 8px;
border-bottom:1px solid #ddd;text-align:left;vertical-align:top}}</style></head><body>
<h1>{html.escape(doc["info"]["title"])} {html.escape(doc["info"]["version"])}</h1>
<p>Machine-readable: <a href="/v1/openapi.json">/v1/openapi.json</a>. The E2B-compatible API:
<a href="/openapi.json">/openapi.json</a>. Errors: <code>{{"error": {{type, code, message,
param?, request_id}}}}</code>.</p>
<table><tr><th>method</th><th>path</th><th>what</th><th>body</th><th>responses</th></tr>
{"".join(rows)}</table><h2>Schemas</h2><ul>{"".join(schemas)}</ul></body></html>"""
