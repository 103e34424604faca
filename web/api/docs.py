"""``/docs``: Swagger UI for both OpenAPI documents (v1 at ``/v1/openapi.json``, the
E2B-compatible API at ``/openapi.json``), with "try it" against this same server.

Swagger UI's files come from the ``swagger-ui-bundle`` package (pinned with its hashes in
requirements.lock) and are served from the virtualenv under ``/docs/assets/``: no CDN, nothing
fetched at run time. Its start-up script is our own file (``docs_static/docs.js``), so the page
runs under the console's Content-Security-Policy with no inline script. Without JavaScript the
page still lists every v1 route (the ``<noscript>`` table). An API key typed into Authorize
stays in the page's memory (``persistAuthorization`` off) and goes only to this origin.
"""

from __future__ import annotations

import html
from functools import cache
from pathlib import Path

import swagger_ui_bundle  # type: ignore[import-untyped]
from flask import Blueprint, Response, abort, send_from_directory

from web.api.v1.openapi import build_spec
from web.console.headers import page_headers

bp = Blueprint("docs", __name__)

SWAGGER_DIR = Path(swagger_ui_bundle.swagger_ui_path)
OWN_DIR = Path(__file__).parent / "docs_static"
# The only files served from the package (it also holds source maps and demo pages).
SWAGGER_FILES = frozenset(
    {
        "swagger-ui.css",
        "swagger-ui-bundle.js",
        "swagger-ui-standalone-preset.js",
        "favicon-32x32.png",
    }
)
OWN_FILES = frozenset({"docs.js", "docs.css"})
ASSET_MAX_AGE = 3600  # seconds; the files change only with the package (a new deploy)


@bp.get("/docs")
def docs() -> Response:
    return page_headers(Response(_page(), mimetype="text/html"))


@bp.get("/docs/assets/<name>")
def asset(name: str) -> Response:
    """One of Swagger UI's files or ours; 404 for anything else."""
    if name in SWAGGER_FILES:
        resp = send_from_directory(SWAGGER_DIR, name, max_age=ASSET_MAX_AGE)
    elif name in OWN_FILES:
        resp = send_from_directory(OWN_DIR, name, max_age=ASSET_MAX_AGE)
    else:
        abort(404)
    return page_headers(resp)


@cache
def _page() -> str:
    """Written once per process: the document it lists never changes while it runs, and
    anyone may ask for the page."""
    doc = build_spec()
    rows = []
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            rows.append(
                f"<tr><td><code>{method.upper()}</code></td><td><code>{html.escape(path)}"
                f"</code></td><td>{html.escape(op.get('summary', ''))}</td></tr>"
            )
    title = html.escape(f"{doc['info']['title']} {doc['info']['version']}")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Paddock API docs</title>
<link rel="icon" href="/docs/assets/favicon-32x32.png">
<link rel="stylesheet" href="/docs/assets/swagger-ui.css">
<link rel="stylesheet" href="/docs/assets/docs.css">
</head><body>
<header class="pdk-bar"><a href="/console/">Console</a>
<span>Machine-readable: <a href="/v1/openapi.json">/v1/openapi.json</a> and the
E2B-compatible <a href="/openapi.json">/openapi.json</a>. Authorize takes an API key
(<code>pdk_live_…</code>), or an account token for <code>/v1/api-keys</code>.</span></header>
<main id="swagger-ui" aria-label="API reference"></main>
<noscript><h1>{title}</h1><table><tr><th>method</th><th>path</th><th>what</th></tr>
{"".join(rows)}</table></noscript>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script src="/docs/assets/swagger-ui-standalone-preset.js"></script>
<script src="/docs/assets/docs.js"></script>
</body></html>"""
