"""``/v1/sandboxes``: the tenant's sandboxes, whichever API created them."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify

from shared.store import Sandbox
from web.api.v1.schemas import SandboxInfo, SandboxList
from web.auth import tenant_from_api_key
from web.sandboxes import Sandboxes
from web.services import current_services

bp = Blueprint("sandboxes", __name__, url_prefix="/sandboxes")


def _info(sandboxes: Sandboxes, sandbox: Sandbox) -> dict[str, Any]:
    """What `SandboxInfo` writes: the record with its timers."""
    last_active_at, expires_at = sandboxes.times(sandbox)
    return {
        "sandbox_id": sandbox.sandbox_id,
        "template": sandbox.template,
        "status": sandbox.status,
        "host": sandbox.host_id,
        "created_at": sandbox.created_at,
        "last_active_at": last_active_at,
        "expires_at": expires_at,
        "metadata": {},
        "network": sandbox.network.to_json(),
        "lost_reason": sandbox.lost_reason,
    }


@bp.get("")
@tenant_from_api_key
def list_sandboxes(tenant_id: str) -> Response:
    sandboxes = current_services().sandboxes
    infos = [_info(sandboxes, sandbox) for sandbox in sandboxes.of_tenant(tenant_id)]
    return jsonify(SandboxList().dump({"sandboxes": infos}))


@bp.get("/<sandbox_id>")
@tenant_from_api_key
def get_sandbox(tenant_id: str, sandbox_id: str) -> Response:
    sandboxes = current_services().sandboxes
    sandbox = sandboxes.get(tenant_id, sandbox_id, include_lost=True)
    return jsonify(SandboxInfo().dump(_info(sandboxes, sandbox)))


@bp.delete("/<sandbox_id>")
@tenant_from_api_key
def delete_sandbox(tenant_id: str, sandbox_id: str) -> tuple[str, int]:
    sandboxes = current_services().sandboxes
    sandboxes.delete(sandboxes.get(tenant_id, sandbox_id, include_lost=True))
    return "", 204
