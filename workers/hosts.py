"""A host's life: announce capacity (heartbeat), and make Redis and Docker agree at start."""

from __future__ import annotations

import logging
import threading
import time

from shared.errors import SandboxError
from shared.output import STDERR, Line
from workers.context import WorkerContext
from workers.storage import StorageError
from workers.templates import template_catalog

logger = logging.getLogger(__name__)


def heartbeat_once(ctx: WorkerContext) -> None:
    """Announce capacity and the local templates, with what /v1/templates shows of each (image,
    size, build date, language versions), all from one image listing of the engine."""
    s = ctx.settings
    catalog = template_catalog(ctx.docker, s.image_prefix)
    egress_error = ctx.egress.check()
    ctx.store.heartbeat(
        s.host_id,
        s.host_capacity,
        [t.name for t in catalog],
        ttl=s.heartbeat_interval * 3,
        catalog=[t.to_json() for t in catalog],
        egress=egress_error or "ok",
    )


def start_heartbeat(ctx: WorkerContext, stop: threading.Event) -> threading.Thread:
    def loop() -> None:
        while not stop.is_set():
            try:
                heartbeat_once(ctx)
            except Exception:
                logger.exception("host %s: heartbeat failed", ctx.settings.host_id)
            stop.wait(ctx.settings.heartbeat_interval)
        ctx.store.host_down(ctx.settings.host_id)
        logger.info("host %s: heartbeat stopped", ctx.settings.host_id)

    t = threading.Thread(target=loop, name="heartbeat", daemon=True)
    t.start()
    return t


def reconcile(ctx: WorkerContext) -> None:
    """At start: remove containers nobody knows and free their storage, free storage whose
    container is gone, forget sandboxes whose container is gone, and close the output of
    processes whose pump died with the previous worker."""
    host = ctx.settings.host_id
    containers = ctx.driver.list_sandboxes()
    orphans: set[str] = set()
    for sandbox_id, container_id in containers.items():
        record = ctx.store.raw_sandbox(sandbox_id)
        if not record or record.get("host") != host or record.get("status") == "deleting":
            logger.warning("sandbox %s: orphan container on host %s, removing", sandbox_id, host)
            orphans.add(sandbox_id)
            try:
                ctx.driver.destroy(sandbox_id, container_id)
            except SandboxError:  # StorageError included: the worker starts all the same
                logger.exception("sandbox %s: orphan not removed", sandbox_id)
                continue  # keep the record: a later destroy retries
            if record.get("status") == "deleting":
                ctx.store.purge_sandbox(sandbox_id)
    # Storage without a live container: the previous worker died between making the storage
    # and starting the container, or the container was removed behind Paddock's back.
    for sandbox_id in ctx.storage.sandbox_ids():
        if sandbox_id in containers and sandbox_id not in orphans:
            continue
        if _being_created(ctx, ctx.store.raw_sandbox(sandbox_id)):
            continue
        logger.warning("sandbox %s: storage without a container, freeing it", sandbox_id)
        try:
            ctx.storage.release(sandbox_id)
        except StorageError:
            logger.exception("sandbox %s: orphan storage not freed", sandbox_id)
    try:
        ctx.driver.seeds.prune()
    except Exception:
        logger.exception("host %s: pruning image seeds failed", host)
    for sandbox_id in ctx.store.host_sandbox_ids(host):
        if sandbox_id not in containers:
            record = ctx.store.raw_sandbox(sandbox_id)
            if _being_created(ctx, record):
                continue
            logger.warning("sandbox %s: container gone, forgetting the sandbox", sandbox_id)
            ctx.store.purge_sandbox(sandbox_id)
            continue
        for process_id in ctx.plog.process_ids(sandbox_id):
            info = ctx.plog.info(sandbox_id, process_id)
            if info.get("status") in ("starting", "running"):
                logger.warning(
                    "sandbox %s process %s: lost with the previous worker", sandbox_id, process_id
                )
                ctx.plog.append(
                    sandbox_id,
                    process_id,
                    [
                        Line(
                            STDERR,
                            "[paddock] the process's output was lost: its host worker restarted",
                            time.time_ns(),
                        )
                    ],
                )
                ctx.plog.finish(sandbox_id, process_id, None)


def _being_created(ctx: WorkerContext, record: dict[str, str]) -> bool:
    """Whether another thread may be creating this sandbox right now."""
    return (
        record.get("status") == "creating"
        and time.time() - float(record.get("created_at", 0)) < ctx.settings.create_timeout
    )
