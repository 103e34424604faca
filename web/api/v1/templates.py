"""``/v1/templates``: the sandbox templates the live hosts offer, with what is inside them.

The web side never talks to Docker: every host worker publishes its template catalog in its
heartbeat, and this route reads it from Redis.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify

from web.api.v1.schemas import TemplateList
from web.auth import tenant_from_api_key
from web.services import current_services

bp = Blueprint("templates", __name__)


@bp.get("/templates")
@tenant_from_api_key
def list_templates(tenant_id: str) -> Response:
    catalog = current_services().sandboxes.template_catalog()
    return jsonify(TemplateList().dump({"templates": [template_info(e) for e in catalog]}))


def template_info(entry: dict[str, Any]) -> dict[str, Any]:
    """One catalog entry as `TemplateInfo` writes it: ``built_at`` None when unknown (0),
    ``hosts`` the live hosts that have the template."""
    return {
        "name": entry["name"],
        "image": entry.get("image", ""),
        "size_bytes": int(entry.get("size_bytes") or 0),
        "built_at": float(entry.get("built_at") or 0) or None,
        "versions": dict(entry.get("versions") or {}),
        "hash": entry.get("hash", ""),
        "hosts": list(entry.get("hosts") or []),
    }
