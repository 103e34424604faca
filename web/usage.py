"""A tenant's usage against each of its quotas, read from where each quota is enforced (so the
numbers are the ones the next request will be checked against), for ``GET /v1/tenants/me/usage``.
"""

from __future__ import annotations

from typing import Any

import redis

from shared import keys
from shared.sessions import Sessions
from shared.settings import Settings
from shared.slots import PROXIES, SOCKETS, STREAMS, WAITS, Slots
from shared.store import Store


def setting_name(field: str) -> str:
    """The environment variable of a Settings field."""
    return f"PADDOCK_{field.upper()}"


def _tenant_quota(used: int, limit: int, field: str) -> dict[str, Any]:
    return {"used": used, "limit": limit, "setting": setting_name(field), "per": "tenant"}


def _sandbox_quota(by_sandbox: dict[str, int], limit: int, field: str) -> dict[str, Any]:
    return {
        "used": max(by_sandbox.values(), default=0),
        "limit": limit,
        "setting": setting_name(field),
        "per": "sandbox",
        "by_sandbox": by_sandbox,
    }


def tenant_usage(r: redis.Redis, settings: Settings, tenant_id: str) -> dict[str, Any]:
    """``{"quotas": {name: {used, limit, setting, per, by_sandbox?}}}`` (the TenantUsage
    schema). Per-sandbox quotas report the most used sandbox as ``used``."""
    sandbox_ids = Store(r).tenant_sandbox_ids(tenant_id)
    slots = Slots(r)
    pipe = r.pipeline(transaction=False)
    pipe.get(keys.tenant_output_bytes(tenant_id))
    for sandbox_id in sandbox_ids:
        pipe.scard(keys.sandbox_running(sandbox_id))
        pipe.get(keys.sandbox_output_bytes(sandbox_id))
    kept, *per_sandbox = pipe.execute()
    running = {sid: int(n) for sid, n in zip(sandbox_ids, per_sandbox[0::2], strict=True)}
    outputs = {sid: int(n or 0) for sid, n in zip(sandbox_ids, per_sandbox[1::2], strict=True)}
    s = settings
    return {
        "quotas": {
            "sandboxes": _tenant_quota(
                len(sandbox_ids), s.tenant_max_sandboxes, "tenant_max_sandboxes"
            ),
            "agent_sessions": _tenant_quota(
                Sessions(r).live_count(tenant_id), s.tenant_max_sessions, "tenant_max_sessions"
            ),
            "kept_output_bytes": _tenant_quota(
                max(0, int(kept or 0)), s.tenant_output_bytes, "tenant_output_bytes"
            ),
            "concurrent_waits": _tenant_quota(
                slots.count(WAITS, tenant_id), s.tenant_max_waits, "tenant_max_waits"
            ),
            "concurrent_streams": _tenant_quota(
                slots.count(STREAMS, tenant_id), s.tenant_max_streams, "tenant_max_streams"
            ),
            "websockets": _tenant_quota(
                slots.count(SOCKETS, tenant_id), s.tenant_max_sockets, "tenant_max_sockets"
            ),
            "proxied_connections": _tenant_quota(
                slots.count(PROXIES, tenant_id), s.tenant_max_proxied, "tenant_max_proxied"
            ),
            "processes_per_sandbox": _sandbox_quota(
                running, s.sandbox_max_processes, "sandbox_max_processes"
            ),
            "kept_output_bytes_per_sandbox": _sandbox_quota(
                outputs, s.sandbox_output_bytes, "sandbox_output_bytes"
            ),
        }
    }
