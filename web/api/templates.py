"""``/v1/templates``: the sandbox templates the live hosts offer, with what is inside them.

The web side never talks to Docker: every host worker publishes its template catalog in its
heartbeat, and this route reads it from Redis.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, jsonify

from web.api.deps import services, tenant

bp = Blueprint("templates", __name__)


@bp.get("/v1/templates")
def list_templates() -> Response:
    tenant()
    catalog = services().sandboxes.store.template_catalog()
    return jsonify({"templates": [template_json(entry) for entry in catalog]})


def template_json(entry: dict[str, Any]) -> dict[str, Any]:
    """One catalog entry as the API shows it (``built_at`` as an ISO 8601 UTC time)."""
    built = float(entry.get("built_at") or 0)
    return {
        "name": entry["name"],
        "image": entry.get("image", ""),
        "size_bytes": int(entry.get("size_bytes") or 0),
        "built_at": datetime.fromtimestamp(built, UTC).isoformat().replace("+00:00", "Z")
        if built
        else None,
        "versions": dict(entry.get("versions") or {}),
        "hash": entry.get("hash", ""),
        "hosts": list(entry.get("hosts") or []),
    }
