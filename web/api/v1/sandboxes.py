"""``/v1/sandboxes``: the tenant's sandboxes, whichever API created them."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify

from shared.store import Sandbox
from web.api.e2b_control.state import ControlState, control_state
from web.api.v1.schemas import SandboxInfo, SandboxList
from web.auth import tenant_from_api_key
from web.services import Services, current_services

bp = Blueprint("sandboxes", __name__, url_prefix="/sandboxes")


def _info(services: Services, state: ControlState, sandbox: Sandbox) -> dict[str, Any]:
    """What `SandboxInfo` writes: the record with its timers, and the metadata the E2B control
    API keeps for it (none for a sandbox made by another API)."""
    last_active_at, expires_at = services.sandboxes.times(sandbox)
    record = state.record(sandbox)
    # The reaper ends a sandbox idle for `idle_timeout` (workers/control/reaper.py). A paused
    # one has left the idle index (no last_active_at), so has an agent session's.
    idle_expires_at = (
        None
        if last_active_at is None or record.paused
        else last_active_at + services.settings.idle_timeout
    )
    return {
        "sandbox_id": sandbox.sandbox_id,
        "template": sandbox.template,
        "status": sandbox.status,
        "host": sandbox.host_id,
        "created_at": sandbox.created_at,
        "last_active_at": last_active_at,
        "expires_at": expires_at,
        "idle_expires_at": idle_expires_at,
        "metadata": record.metadata,
        "network": sandbox.network.to_json(),
        "lost_reason": sandbox.lost_reason,
    }


@bp.get("")
@tenant_from_api_key
def list_sandboxes(tenant_id: str) -> Response:
    services = current_services()
    state = control_state(services)
    infos = [_info(services, state, sandbox) for sandbox in services.sandboxes.of_tenant(tenant_id)]
    return jsonify(SandboxList().dump({"sandboxes": infos}))


@bp.get("/<sandbox_id>")
@tenant_from_api_key
def get_sandbox(tenant_id: str, sandbox_id: str) -> Response:
    services = current_services()
    sandbox = services.sandboxes.get(tenant_id, sandbox_id, include_lost=True)
    return jsonify(SandboxInfo().dump(_info(services, control_state(services), sandbox)))


@bp.delete("/<sandbox_id>")
@tenant_from_api_key
def delete_sandbox(tenant_id: str, sandbox_id: str) -> tuple[str, int]:
    sandboxes = current_services().sandboxes
    sandboxes.delete(sandboxes.get(tenant_id, sandbox_id, include_lost=True))
    return "", 204
