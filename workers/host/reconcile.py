"""Make Redis and the sandbox backend agree, at start and then periodically: a sandbox whose
container stopped behind Paddock's back becomes ``lost``; leftovers are removed."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from shared.errors import EngineUnavailable, SandboxError
from shared.lifecycle import end_lost_session
from shared.output import ProcessLog, paddock_line
from workers.backends.base import SandboxState
from workers.host import metrics, pool
from workers.host.context import WorkerContext

logger = logging.getLogger(__name__)


# At most this often, however many operations find containers gone (each wakes the check).
_MIN_CHECK_GAP = 1.0


@dataclass
class Findings:
    """What one pass of check_engine found and did (logged; the metrics read it)."""

    lost: list[str] = field(default_factory=list)
    containers_removed: list[str] = field(default_factory=list)
    storage_freed: list[str] = field(default_factory=list)
    warm_removed: list[str] = field(default_factory=list)  # dead or half-made (pool.py)
    engine_down: bool = False

    def __bool__(self) -> bool:
        return bool(self.lost or self.containers_removed or self.storage_freed or self.warm_removed)


def check_engine(ctx: WorkerContext, at_start: bool = False) -> Findings:
    """Compare this host's records with one container listing of its engine (no inspect per
    sandbox): a running sandbox whose container is gone or stopped (exited, dead, being
    removed) is lost (`lose`); a container with no record here, or whose sandbox is lost, is
    removed; storage whose sandbox has no container and no live record is freed. Sandboxes
    being created or deleted are left to whoever does that. Nothing is judged while the engine
    does not answer (``engine_down``): a delete meanwhile is retried by the reaper.

    ``at_start`` (the worker's first pass, before it serves): nobody is deleting anything
    then, so sandboxes being deleted are finished here too; the output of processes whose
    pump died with the previous worker is closed, and unused image seeds are pruned."""
    host = ctx.settings.host_id
    found = Findings()
    try:
        states = ctx.backend.sandbox_states()
    except EngineUnavailable as exc:
        logger.warning("host %s: reconcile skipped, the engine does not answer: %s", host, exc)
        found.engine_down = True
        metrics.record_reconcile(host, True, 0, 0, 0)
        return found
    # First the containers whose records no longer need them (so that a client who sees a
    # lost process closed finds the leftovers gone too). Which records:
    ended = ("lost", "deleting") if at_start else ("lost",)
    for sandbox_id, listed in states.items():
        record = ctx.store.raw_sandbox(sandbox_id)
        # No record: its sandbox was purged (e.g. its host was taken for dead meanwhile); a
        # lost one: its cleanup failed before. Being created or deleted: not ours to judge.
        if record and record.get("host") == host and record.get("status") not in ended:
            continue
        logger.warning("sandbox %s: leftover container on host %s, removing", sandbox_id, host)
        try:
            ctx.backend.destroy(sandbox_id, listed.ref)
        except SandboxError:  # StorageError included: the next pass tries again
            logger.exception("sandbox %s: leftover container not removed", sandbox_id)
            continue
        found.containers_removed.append(sandbox_id)
        if record.get("status") == "deleting":
            ctx.store.purge_sandbox(sandbox_id)
    for sandbox_id in ctx.store.host_sandbox_ids(host):
        seen = states.get(sandbox_id)
        if seen is not None and seen.alive:
            if at_start:
                adopt_processes(ctx, sandbox_id)
                resume_watches(ctx, sandbox_id)
            continue
        if _being_created(ctx, ctx.store.raw_sandbox(sandbox_id)):
            continue
        # (mark_lost leaves a sandbox being deleted alone)
        if lose(ctx, sandbox_id, _why_lost(seen), seen.ref if seen else None):
            found.lost.append(sandbox_id)
    # Warm pools' sandboxes: the dead ones, and at start the half-made ones, are removed.
    found.warm_removed = pool.reconcile_pool(ctx, states, at_start)
    # Storage without a container: the previous worker died between making the storage and
    # starting the container, or the container was removed behind Paddock's back.
    for sandbox_id in ctx.backend.storage_ids():
        if sandbox_id in states or sandbox_id in found.lost:
            continue  # its destroy frees it (or the next pass)
        record = ctx.store.raw_sandbox(sandbox_id)
        if record and record.get("status") not in ended:
            continue  # being created (the container comes next) or deleted (the destroy frees)
        logger.warning("sandbox %s: storage without a container or record, freeing", sandbox_id)
        try:
            ctx.backend.release_storage(sandbox_id)
            found.storage_freed.append(sandbox_id)
        except SandboxError:  # StorageError
            logger.exception("sandbox %s: leftover storage not freed", sandbox_id)
    if at_start:
        try:
            ctx.backend.prune()
        except Exception:
            logger.exception("host %s: pruning image seeds failed", host)
    if found:
        logger.warning(
            "host %s: reconcile: %d sandbox(es) lost %s, %d leftover container(s) removed, "
            "%d storage freed, %d warm sandbox(es) removed",
            host,
            len(found.lost),
            found.lost,
            len(found.containers_removed),
            len(found.storage_freed),
            len(found.warm_removed),
        )
    metrics.record_reconcile(
        host, False, len(found.lost), len(found.containers_removed), len(found.storage_freed)
    )
    return found


def _being_created(ctx: WorkerContext, record: dict[str, str]) -> bool:
    """Whether another thread may be creating this sandbox right now."""
    return (
        record.get("status") == "creating"
        and time.time() - float(record.get("created_at", 0)) < ctx.settings.create_timeout
    )


def lose(ctx: WorkerContext, sandbox_id: str, reason: str, container_id: str | None) -> bool:
    """The sandbox's container stopped behind Paddock's back: mark it ``lost`` (its host
    capacity slot and its tenant's quota slot are free at once; /v1 shows ``lost`` for
    settings.lost_keep seconds, the E2B API answers 404), end its processes with a line on
    stderr saying why, and remove its container and storage. A cleanup that fails is done by
    a later pass (the container is then a leftover). False when the sandbox was not running
    (deleted, lost already, or gone)."""
    if not ctx.store.mark_lost(sandbox_id, reason, ctx.settings.lost_keep):
        return False
    logger.warning("sandbox %s: lost (%s); slots freed, cleaning up", sandbox_id, reason)
    end_lost_session(ctx.sessions, ctx.store, sandbox_id, reason)
    ctx.processes.forget_sandbox(sandbox_id)
    try:
        ctx.watches.forget_sandbox(sandbox_id)  # readers see the watchers gone
    except Exception:
        logger.exception("sandbox %s: its watchers not forgotten (they expire)", sandbox_id)
    end_processes(
        ctx.plog, sandbox_id, f"the sandbox was lost ({reason}); the process ended with it"
    )
    try:
        ctx.backend.destroy(sandbox_id, container_id)
    except SandboxError:  # StorageError included
        logger.exception("sandbox %s: cleanup of the lost sandbox failed; retried", sandbox_id)
    return True


def resume_watches(ctx: WorkerContext, sandbox_id: str) -> None:
    """At start: watch again the directories the previous worker was watching for readers
    (workers/host/watches.py resume); a failure leaves them to expire."""
    try:
        ctx.watches.resume(sandbox_id)
    except Exception:
        logger.exception("sandbox %s: its watchers not watched again", sandbox_id)


def adopt_processes(ctx: WorkerContext, sandbox_id: str) -> None:
    """At start: follow again the processes the previous worker was pumping, where the backend
    can (workers/host/runner.py ProcessManager.adopt); close the others' output with a line
    saying it was lost."""
    for process_id in ctx.plog.process_ids(sandbox_id):
        if ctx.plog.info(sandbox_id, process_id).get("status") not in ("starting", "running"):
            continue
        try:
            if ctx.processes.adopt(sandbox_id, process_id):
                continue
        except Exception:
            logger.exception("sandbox %s process %s: not followed again", sandbox_id, process_id)
        _end(
            ctx.plog,
            sandbox_id,
            process_id,
            "the process's output was lost: its host worker restarted",
        )


def end_processes(plog: ProcessLog, sandbox_id: str, why: str) -> None:
    """Finish the output of the sandbox's processes still shown running, with ``why`` on
    stderr (no exit code: nobody saw it). Also used by the control worker for the sandboxes
    of a dead host (workers/control/reaper.py)."""
    for process_id in plog.process_ids(sandbox_id):
        if plog.info(sandbox_id, process_id).get("status") in ("starting", "running"):
            _end(plog, sandbox_id, process_id, why)


def _end(plog: ProcessLog, sandbox_id: str, process_id: str, why: str) -> None:
    logger.warning("sandbox %s process %s: %s", sandbox_id, process_id, why)
    plog.append(sandbox_id, process_id, [paddock_line(f"[paddock] {why}")])
    plog.finish(sandbox_id, process_id, None)


def _why_lost(seen: SandboxState | None) -> str:
    if seen is None:
        return "its container is gone"
    if seen.reason:
        return seen.reason
    return f"its container is {seen.state or 'not running'}"


def start_reconcile(ctx: WorkerContext, stop: threading.Event) -> threading.Thread:
    """Run check_engine every settings.reconcile_interval seconds, and soon after any
    operation finds a container gone (the backend's on_gone)."""
    wake = threading.Event()
    ctx.backend.on_gone = lambda _sandbox_id: wake.set()

    def loop() -> None:
        while not stop.is_set():
            wake.wait(ctx.settings.reconcile_interval)
            wake.clear()
            if stop.is_set():
                break
            try:
                check_engine(ctx)
            except Exception:  # Redis away for a moment: the next pass tries again
                logger.exception("host %s: reconcile failed", ctx.settings.host_id)
            stop.wait(_MIN_CHECK_GAP)

    t = threading.Thread(target=loop, name="reconcile", daemon=True)
    t.start()
    return t
