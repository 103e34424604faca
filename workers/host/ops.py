"""What a host does for each command: plain functions over the worker context, each taking the
command's dataclass (shared/commands.py) and returning its result.

Tasks (workers/host/tasks.py) only parse the command and call these, so they can be tested
without Celery (tests/unit/test_host_ops.py runs them against a fake backend).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis

from shared import commands as c
from shared.egress import NetworkPolicy
from shared.errors import BadRequest, SandboxError
from workers.backends.base import SpawnOptions
from workers.host import pool
from workers.host.context import WorkerContext
from workers.host.runner import Spawned

logger = logging.getLogger(__name__)


@dataclass
class Staged:
    """An operation's result whose last steps go with its reply: ``record`` adds writes to
    the reply's round trip; ``then`` runs once the reply is sent (or failed to be)."""

    result: c.Reply
    record: Callable[[redis.client.Pipeline | None], None]
    then: Callable[[], None]


def create_sandbox(ctx: WorkerContext, cmd: c.SandboxCreate) -> c.Created:
    """Make the sandbox's storage and start its container, with its network policy (the web
    validated it; a message without one, from an older web, means no network).

    ``warm``: placement claimed this host's warm sandbox of that id: it is handed over
    (workers/host/pool.py claim), or, if it cannot be, removed and started cold under the
    same id. ``evict``: a warm sandbox whose slot placement gave to this one, removed first.

    Raises BadRequest for a template this host lacks, NoCapacity when the host's disk cannot
    hold another sandbox's cap, EgressUnavailable when internet is asked and this host's rules
    are not in place, SandboxError (StorageError included) when it cannot start; the backend
    has then removed whatever it made.
    """
    sandbox_id, template = cmd.sandbox_id, cmd.template
    network = NetworkPolicy.from_json(cmd.network)
    if cmd.evict or cmd.warm:
        ctx.pool_wake.set()  # the pool refills in the background (workers/host/pool.py)
    if cmd.evict:
        pool.evict(ctx, cmd.evict)  # its slot is this sandbox's: it goes first
    if not (cmd.warm and pool.claim(ctx, sandbox_id, cmd.tenant_id, network)):
        image = {t.name: t.image for t in ctx.backend.templates()}.get(template)
        if image is None:
            raise BadRequest(f"template {template!r} is not available on this host")
        ctx.backend.create(sandbox_id, cmd.tenant_id, image, network)
    record = ctx.store.raw_sandbox(sandbox_id)
    if not record or record.get("status") == "deleting":
        # The requester gave up (timeout) or deleted it meanwhile: leave nothing behind.
        logger.warning("sandbox %s: deleted while it was being created; removing", sandbox_id)
        destroy_sandbox(ctx, c.SandboxDestroy(sandbox_id=sandbox_id))
        raise SandboxError("the sandbox was deleted while it was being created")
    ctx.store.set_sandbox_status(sandbox_id, "running")
    return c.Created(ctx.settings.host_id)


def destroy_sandbox(ctx: WorkerContext, cmd: c.SandboxDestroy) -> c.Destroyed:
    """Remove container, storage, processes and state of a sandbox. Idempotent, and bounded in
    time whatever the sandbox's processes do (the backend bounds it: a wedged container's
    processes are killed from the host, DockerDriver.destroy).

    Raises SandboxError when the container could not be removed, StorageError when the
    storage cannot be freed: the record stays (``deleting``) and the reaper sends the destroy
    again."""
    sandbox_id = cmd.sandbox_id
    started = time.monotonic()
    ctx.processes.forget_sandbox(sandbox_id)
    ctx.watches.forget_sandbox(sandbox_id)
    ctx.backend.destroy(sandbox_id)
    ctx.store.purge_sandbox(sandbox_id)
    logger.info("sandbox %s: destroyed in %.1f s", sandbox_id, time.monotonic() - started)
    return c.Destroyed()


def ports(ctx: WorkerContext, cmd: c.SandboxPorts) -> c.Ports:
    found = ctx.backend.ports(cmd.sandbox_id)
    return c.Ports([c.Port(str(p["Ip"]), int(p["Port"]), str(p["State"])) for p in found])


def pause_sandbox(ctx: WorkerContext, cmd: c.SandboxPause) -> c.Paused:
    """Raises SandboxGone, EngineUnavailable."""
    return c.Paused(ctx.backend.pause(cmd.sandbox_id))


def resume_sandbox(ctx: WorkerContext, cmd: c.SandboxResume) -> c.Paused:
    """Raises SandboxGone, EngineUnavailable."""
    return c.Paused(ctx.backend.resume(cmd.sandbox_id))


def sandbox_usage(ctx: WorkerContext, cmd: c.SandboxUsage) -> c.Usage:
    """Raises SandboxError when the sandbox's cgroup cannot be read on this host."""
    found = ctx.backend.usage(cmd.sandbox_id)
    if found is None:
        raise SandboxError("the sandbox's usage cannot be read on its host")
    return c.Usage(
        float(found.cpu_used_pct),
        found.mem_used,
        found.mem_total,
        found.mem_cache,
        found.disk_used,
        found.disk_total,
    )


def list_dir(ctx: WorkerContext, cmd: c.FsList) -> c.Listing:
    entries = ctx.backend.list_dir(cmd.sandbox_id, cmd.path)
    return c.Listing([c.DirEntry(name, is_dir) for name, is_dir in entries])


def make_dir(ctx: WorkerContext, cmd: c.FsMkdir) -> None:
    ctx.backend.make_dir(cmd.sandbox_id, cmd.path)


def remove(ctx: WorkerContext, cmd: c.FsRemove) -> None:
    ctx.backend.remove(cmd.sandbox_id, cmd.path)


def read_file(ctx: WorkerContext, cmd: c.FsRead) -> c.FileData:
    return c.FileData(ctx.backend.read_file(cmd.sandbox_id, cmd.path))


def write_file(ctx: WorkerContext, cmd: c.FsWrite) -> None:
    ctx.backend.write_file(cmd.sandbox_id, cmd.path, cmd.content())


def stat(ctx: WorkerContext, cmd: c.FsStat) -> c.EntryReply:
    """Raises PathNotFound, PermissionDenied, BackendUnsupported, SandboxError."""
    return c.EntryReply(c.FsEntry.from_json(ctx.backend.stat(cmd.sandbox_id, cmd.path)))


def move(ctx: WorkerContext, cmd: c.FsMove) -> c.EntryReply:
    """Raises PathNotFound, PermissionDenied, BackendUnsupported, SandboxError."""
    ctx.backend.move(cmd.sandbox_id, cmd.path, cmd.dst)
    return c.EntryReply(c.FsEntry.from_json(ctx.backend.stat(cmd.sandbox_id, cmd.dst)))


def entries(ctx: WorkerContext, cmd: c.FsEntries) -> c.Entries:
    """Raises PathNotFound, NotADirectory, FileTooLarge (a listing past the file limit),
    BackendUnsupported, SandboxError."""
    found = ctx.backend.entries(cmd.sandbox_id, cmd.path, cmd.depth)
    return c.Entries([c.FsEntry.from_json(e) for e in found])


def watch_dir(ctx: WorkerContext, cmd: c.FsWatch) -> None:
    """Start draining the directory's events into the watcher's stream (workers/host/
    watches.py); once the watch is in place. Raises PathNotFound, NotADirectory,
    QuotaExceeded, BackendUnsupported, SandboxError (the watcher's record is gone)."""
    ctx.watches.start(cmd.sandbox_id, cmd.watcher_id, cmd.path, cmd.recursive)


def start_process(ctx: WorkerContext, cmd: c.ProcessStart) -> c.Started:
    """Its pid, once it runs, is recorded and its output followed: the op for a caller that
    sends no reply (the host task uses start_process_staged). Raises as
    start_process_staged."""
    return c.Started(_spawn(ctx, cmd).start() or 0)


def start_process_staged(ctx: WorkerContext, cmd: c.ProcessStart) -> Staged:
    """Its pid; recording it as running goes with the reply (one round trip), and its output
    is followed after that. Raises QuotaExceeded (the sandbox runs its most processes),
    SandboxGone, BackendUnsupported (an option the backend cannot honour, e.g. a
    terminal)."""
    spawned = _spawn(ctx, cmd)
    return Staged(c.Started(spawned.pid or 0), spawned.record, spawned.follow)


def _spawn(ctx: WorkerContext, cmd: c.ProcessStart) -> Spawned:
    pty = (cmd.pty_cols, cmd.pty_rows) if cmd.pty_cols and cmd.pty_rows else None
    options = SpawnOptions(
        argv=tuple(cmd.argv), pty=pty, stdin=cmd.stdin, timeout=max(cmd.timeout_ms, 0) / 1000
    )
    return ctx.processes.spawn(
        cmd.sandbox_id,
        cmd.process_id,
        cmd.cmd,
        cmd.env,
        cmd.cwd,
        cmd.tenant_id,
        options=options,
        envd=cmd.envd,
    )


def write_stdin(ctx: WorkerContext, cmd: c.ProcessStdin) -> c.Written:
    return c.Written(ctx.processes.write_stdin(cmd.sandbox_id, cmd.process_id, cmd.content()))


def kill_process(ctx: WorkerContext, cmd: c.ProcessKill) -> c.Killed:
    return c.Killed(ctx.processes.kill(cmd.sandbox_id, cmd.process_id))


def signal_process(ctx: WorkerContext, cmd: c.ProcessSignal) -> c.Killed:
    """Raises BadRequest (a signal not in SIGNALS), SandboxError, BackendUnsupported."""
    if cmd.signal not in c.SIGNALS:
        raise BadRequest(f"signal must be one of {', '.join(c.SIGNALS)}")
    return c.Killed(ctx.processes.signal(cmd.sandbox_id, cmd.process_id, cmd.signal))


def resize_process(ctx: WorkerContext, cmd: c.ProcessResize) -> c.Resized:
    """Raises BadRequest (a size out of 1-65535, a process without a terminal),
    SandboxError, BackendUnsupported."""
    if not (0 < cmd.cols <= 0xFFFF and 0 < cmd.rows <= 0xFFFF):
        raise BadRequest("a terminal's columns and rows are 1-65535")
    return c.Resized(ctx.processes.resize(cmd.sandbox_id, cmd.process_id, cmd.cols, cmd.rows))


def close_stdin(ctx: WorkerContext, cmd: c.ProcessCloseStdin) -> c.Written:
    return c.Written(ctx.processes.close_stdin(cmd.sandbox_id, cmd.process_id))
