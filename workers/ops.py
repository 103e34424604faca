"""What a host does for each command: plain functions over the worker context.

Tasks (workers/tasks.py) only unpack ids and call these, so they can be tested without Celery.
"""

from __future__ import annotations

import base64
import logging
import time
from typing import Any

import docker.errors

from shared.egress import NetworkPolicy
from shared.errors import BadRequest, SandboxError
from workers.context import WorkerContext
from workers.images import available_templates

logger = logging.getLogger(__name__)


def create_sandbox(
    ctx: WorkerContext,
    sandbox_id: str,
    tenant_id: str,
    template: str,
    network: dict[str, Any] | None = None,
) -> dict:
    """Make the sandbox's storage and start its container, with its network policy (the web
    validated it; a message without one, from an older web, means no network).

    Raises BadRequest for a template this host lacks, NoCapacity when the host's disk cannot
    hold another sandbox's cap, EgressUnavailable when internet is asked and this host's rules
    are not in place, SandboxError (StorageError included) when it cannot start; the driver
    has then removed whatever it made.
    """
    image = available_templates(ctx.docker, ctx.settings.image_prefix).get(template)
    if image is None:
        raise BadRequest(f"template {template!r} is not available on this host")
    try:
        ctx.driver.create(sandbox_id, tenant_id, image, NetworkPolicy.from_json(network))
    except docker.errors.APIError as exc:
        logger.error("sandbox %s: create failed: %s", sandbox_id, exc)
        raise SandboxError(f"could not start the sandbox: {exc.explanation or exc}") from exc
    record = ctx.store.raw_sandbox(sandbox_id)
    if not record or record.get("status") == "deleting":
        # The requester gave up (timeout) or deleted it meanwhile: leave nothing behind.
        logger.warning("sandbox %s: deleted while it was being created; removing", sandbox_id)
        destroy_sandbox(ctx, sandbox_id)
        raise SandboxError("the sandbox was deleted while it was being created")
    ctx.store.set_sandbox_status(sandbox_id, "running")
    return {"host": ctx.settings.host_id}


def destroy_sandbox(ctx: WorkerContext, sandbox_id: str) -> dict:
    """Remove container, storage, processes and state of a sandbox. Idempotent, and bounded in
    time whatever the sandbox's processes do (a wedged container's processes are killed from
    the host: DockerDriver.destroy).

    Raises SandboxError when the container could not be removed, StorageError when the
    storage cannot be freed: the record stays (``deleting``) and the reaper sends the destroy
    again."""
    started = time.monotonic()
    ctx.processes.forget_sandbox(sandbox_id)
    ctx.driver.destroy(sandbox_id)
    ctx.store.purge_sandbox(sandbox_id)
    logger.info("sandbox %s: destroyed in %.1f s", sandbox_id, time.monotonic() - started)
    return {}


def ports(ctx: WorkerContext, sandbox_id: str) -> list[dict[str, Any]]:
    return ctx.driver.ports(sandbox_id)


def list_dir(ctx: WorkerContext, sandbox_id: str, path: str) -> list[dict[str, Any]]:
    return [{"name": n, "isDir": d} for n, d in ctx.driver.list_dir(sandbox_id, path)]


def make_dir(ctx: WorkerContext, sandbox_id: str, path: str) -> None:
    ctx.driver.make_dir(sandbox_id, path)


def remove(ctx: WorkerContext, sandbox_id: str, path: str) -> None:
    ctx.driver.remove(sandbox_id, path)


def read_file(ctx: WorkerContext, sandbox_id: str, path: str) -> dict:
    """The file's bytes, base64 (the reply channel is JSON)."""
    return {"data": base64.b64encode(ctx.driver.read_file(sandbox_id, path)).decode()}


def write_file(ctx: WorkerContext, sandbox_id: str, path: str, data: str) -> None:
    ctx.driver.write_file(sandbox_id, path, base64.b64decode(data))


def start_process(
    ctx: WorkerContext,
    sandbox_id: str,
    process_id: str,
    cmd: str,
    env: dict[str, str],
    cwd: str,
    tenant_id: str,
) -> None:
    """Raises QuotaExceeded (the sandbox runs its most processes), SandboxGone."""
    ctx.processes.start(sandbox_id, process_id, cmd, env, cwd, tenant_id)


def write_stdin(ctx: WorkerContext, sandbox_id: str, process_id: str, data: str) -> dict:
    return {"written": ctx.processes.write_stdin(sandbox_id, process_id, data.encode())}


def kill_process(ctx: WorkerContext, sandbox_id: str, process_id: str) -> dict:
    return {"killed": ctx.processes.kill(sandbox_id, process_id)}
