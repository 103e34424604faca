"""E2B ``/sessions``: create, refresh (with listening ports), delete. A "session" of this API
is a Paddock sandbox."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from web.api import validation
from web.api.e2b.schemas import CreateSessionsRequest, Session
from web.auth import tenant_from_e2b_key, tenant_from_e2b_key_or_body
from web.services import current_services

bp = Blueprint("sessions", __name__)


@bp.post("/sessions")
@tenant_from_e2b_key_or_body
def create_session(tenant_id: str) -> Response:
    data = validation.body(CreateSessionsRequest(), "body")
    sandboxes = current_services().sandboxes
    network = sandboxes.network(data.get("network"), "body.network")
    sandbox = sandboxes.create(tenant_id, data["envID"], network=network)
    return jsonify(Session().dump({"id": sandbox.sandbox_id, "ports": []}))


@bp.get("/sessions/<session_id>")
@tenant_from_e2b_key
def get_session(tenant_id: str, session_id: str) -> Response:
    sandboxes = current_services().sandboxes
    sandbox = sandboxes.get(tenant_id, session_id)
    ports = sandboxes.ports(sandbox)
    return jsonify(Session().dump({"id": sandbox.sandbox_id, "ports": ports}))


@bp.delete("/sessions/<session_id>")
@tenant_from_e2b_key
def delete_session(tenant_id: str, session_id: str) -> tuple[str, int]:
    sandboxes = current_services().sandboxes
    sandboxes.delete(sandboxes.get(tenant_id, session_id))
    return "", 204
