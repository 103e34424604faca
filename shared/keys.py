"""Every Redis key and channel name Paddock uses, built in one place."""

from __future__ import annotations

PREFIX = "pdk"


def host(host_id: str) -> str:
    """Hash: a host's heartbeat (capacity, templates, updated). Expires when the host dies."""
    return f"{PREFIX}:host:{host_id}"


def hosts() -> str:
    """Set of host ids that have ever heartbeated; dead ones are pruned by readers."""
    return f"{PREFIX}:hosts"


def host_sandboxes(host_id: str) -> str:
    """Set of sandbox ids placed on a host (its used capacity)."""
    return f"{PREFIX}:host:{host_id}:sandboxes"


def sandbox(sandbox_id: str) -> str:
    """Hash: one sandbox (tenant, host, template, status, created_at)."""
    return f"{PREFIX}:sbx:{sandbox_id}"


def sandbox_processes(sandbox_id: str) -> str:
    """Set of process ids started in a sandbox."""
    return f"{PREFIX}:sbx:{sandbox_id}:procs"


def tenant_sandboxes(tenant_id: str) -> str:
    """Set of a tenant's sandbox ids."""
    return f"{PREFIX}:tenant:{tenant_id}:sandboxes"


def idle_index() -> str:
    """Sorted set: sandbox id scored by the time of the last request that named it."""
    return f"{PREFIX}:idle"


def expiry_index() -> str:
    """Sorted set: sandbox id scored by the end of its maximum lifetime."""
    return f"{PREFIX}:expiry"


def process(sandbox_id: str, process_id: str) -> str:
    """Hash: one process (cmd, status, exit_code, pid inside the sandbox)."""
    return f"{PREFIX}:proc:{sandbox_id}:{process_id}"


def output(sandbox_id: str, process_id: str) -> str:
    """Stream: a process's output lines, then one end entry."""
    return f"{PREFIX}:out:{sandbox_id}:{process_id}"


def reply(task_id: str) -> str:
    """List: the one reply of a task the web side waits for (BLPOP)."""
    return f"{PREFIX}:reply:{task_id}"


def task_log(sandbox_id: str) -> str:
    """List: which host ran each task of a sandbox (audit; capped)."""
    return f"{PREFIX}:sbx:{sandbox_id}:tasklog"


def api_key(digest: str) -> str:
    """Hash: the API key with this SHA-256 digest (tenant, revoked)."""
    return f"{PREFIX}:apikey:{digest}"
