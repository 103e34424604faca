"""``/v1/sandboxes``: the tenant's sandboxes, whichever API created them."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from shared.store import Sandbox
from web.api.deps import api_tenant, services
from web.api.v1.common import iso

bp = Blueprint("v1_sandboxes", __name__)

# A lost sandbox (its container stopped behind Paddock's back: workers/hosts.py) shows as
# `lost` until the reaper purges its record (PADDOCK_LOST_KEEP); it holds no slot meanwhile.
_STATES = {"creating": "creating", "running": "running", "deleting": "stopping", "lost": "lost"}


def _json(sb: Sandbox) -> dict:
    last, expires = services().sandboxes.store.sandbox_times(sb.sandbox_id)
    return {
        "sandbox_id": sb.sandbox_id,
        "template": sb.template,
        "state": _STATES.get(sb.status, sb.status),
        "host": sb.host_id,
        "created_at": iso(sb.created_at),
        "last_active_at": iso(last),
        "expires_at": iso(expires),
        "metadata": {},
        "network": sb.network.to_json(),
    }


@bp.get("/v1/sandboxes")
def list_sandboxes() -> Response:
    tenant_id = api_tenant()
    return jsonify({"sandboxes": [_json(sb) for sb in services().sandboxes.of_tenant(tenant_id)]})


@bp.get("/v1/sandboxes/<sandbox_id>")
def get_sandbox(sandbox_id: str) -> Response:
    tenant_id = api_tenant()
    return jsonify(_json(services().sandboxes.get(tenant_id, sandbox_id, include_lost=True)))


@bp.delete("/v1/sandboxes/<sandbox_id>")
def delete_sandbox(sandbox_id: str) -> tuple[str, int]:
    tenant_id = api_tenant()
    svc = services().sandboxes
    svc.delete(svc.get(tenant_id, sandbox_id, include_lost=True))
    return "", 204
