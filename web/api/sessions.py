"""E2B ``/sessions``: create, refresh (with listening ports), delete."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from web.api import validation
from web.api.deps import sandbox, services, tenant
from web.api.schemas import CreateSessionBody, session_json

bp = Blueprint("sessions", __name__)


@bp.post("/sessions")
def create_session() -> Response:
    data = validation.body(CreateSessionBody(), "body")
    tenant_id = tenant(body_key=data.get("apiKey"))
    svc = services().sandboxes
    network = svc.network(data.get("network"), "body.network")
    sb = svc.create(tenant_id, data["envID"], network=network)
    return jsonify(session_json(sb.sandbox_id, []))


@bp.get("/sessions/<session_id>")
def get_session(session_id: str) -> Response:
    sb = sandbox(session_id)
    return jsonify(session_json(sb.sandbox_id, services().sandboxes.ports(sb)))


@bp.delete("/sessions/<session_id>")
def delete_session(session_id: str) -> tuple[str, int]:
    services().sandboxes.delete(sandbox(session_id))
    return "", 204
