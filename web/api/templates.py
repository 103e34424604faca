"""``/v1/templates``: the sandbox templates the live hosts offer, with what is inside them.

The web side never talks to Docker: every host worker publishes its template catalog in its
heartbeat (workers.hosts), and this route reads it from Redis.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify

from web.api.deps import api_tenant, services
from web.api.v1.common import iso

bp = Blueprint("templates", __name__)


@bp.get("/v1/templates")
def list_templates() -> Response:
    api_tenant()
    catalog = services().sandboxes.store.template_catalog()
    return jsonify({"templates": [template_json(entry) for entry in catalog]})


def template_json(entry: dict[str, Any]) -> dict[str, Any]:
    """One catalog entry as the API shows it: ``built_at`` in ISO 8601 UTC, ``hosts`` the
    live hosts that have the template."""
    built = float(entry.get("built_at") or 0)
    return {
        "name": entry["name"],
        "image": entry.get("image", ""),
        "size_bytes": int(entry.get("size_bytes") or 0),
        "built_at": iso(built) if built else None,
        "versions": dict(entry.get("versions") or {}),
        "hash": entry.get("hash", ""),
        "hosts": list(entry.get("hosts") or []),
    }
