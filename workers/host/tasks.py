"""Celery tasks: thin wrappers that parse the command (shared/commands.py), call workers.host.ops
and publish the reply.

Delivery: none of the host tasks is ``acks_late``. Each answers one HTTP request that is waiting
for it; if a worker dies mid-task, redelivering later could repeat a side effect (start a process
twice) after the client already got a timeout. At-most-once plus the message's ``expires`` (the
web's wait time) is the honest contract. Time limits: Celery enforces them only in the prefork
pool, and our workers use threads, so every blocking call inside has its own timeout (Docker API
client timeout, exec deadline, Redis socket timeout).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from celery import Celery, Task

from shared import commands, keys, rpc, tasks
from shared.errors import PaddockError
from workers.agent import jobs
from workers.host import ops
from workers.host.context import WorkerContext
from workers.host.shares import ShareUsedUp, WorkerShares

logger = logging.getLogger(__name__)

# Each host command's dataclass and the function that does it (the task name is the class's).
HOST_TASKS: list[tuple[type[commands.HostCommand], Callable[..., Any]]] = [
    (commands.SandboxCreate, ops.create_sandbox),
    (commands.SandboxDestroy, ops.destroy_sandbox),
    (commands.SandboxPorts, ops.ports),
    (commands.SandboxPause, ops.pause_sandbox),
    (commands.SandboxResume, ops.resume_sandbox),
    (commands.SandboxUsage, ops.sandbox_usage),
    (commands.FsList, ops.list_dir),
    (commands.FsMkdir, ops.make_dir),
    (commands.FsRemove, ops.remove),
    (commands.FsRead, ops.read_file),
    (commands.FsWrite, ops.write_file),
    (commands.FsStat, ops.stat),
    (commands.FsMove, ops.move),
    (commands.FsEntries, ops.entries),
    (commands.FsWatch, ops.watch_dir),
    (commands.ProcessStart, ops.start_process_staged),
    (commands.ProcessStdin, ops.write_stdin),
    (commands.ProcessKill, ops.kill_process),
    (commands.ProcessSignal, ops.signal_process),
    (commands.ProcessResize, ops.resize_process),
    (commands.ProcessCloseStdin, ops.close_stdin),
]
# The commands whose function uses the tenant (not only the share): looked up when missing.
_USES_TENANT = frozenset({tasks.SANDBOX_CREATE, tasks.PROCESS_START})


# Never refused for a fair share, nor counted in one: they are how a tenant (or the reaper)
# stops what runs, which must work most of all when the share is used up.
_ALWAYS_RUN = frozenset({tasks.SANDBOX_DESTROY, tasks.PROCESS_KILL, tasks.PROCESS_SIGNAL})
# Logged in the sandbox's task log before they run, not with their reply: the sandbox's keys,
# its log among them, are gone after it (the log written after would outlive the sandbox).
_LOGGED_FIRST = frozenset({tasks.SANDBOX_DESTROY})
# A drain that finds its tenant's share used up comes back after this many seconds.
_DRAIN_RETRY = 2.0
# A task over its share goes back to the queue for a moment, again and again (a Celery
# countdown holds no pool thread), and is refused with a 429 once it has waited this long in
# all. A burst of quick commands (a client starting ten processes at once) so gets through a
# little later, while slow operations holding the share make the next one wait ~4.5 s, never
# a thread. Creates, which clients rarely retry and the web waits long for, queue longer.
SHARE_PATIENCE = 4.5
SHARE_PATIENCE_BY_TASK = {tasks.SANDBOX_CREATE: 30.0}


def register_host_tasks(app: Celery, ctx: WorkerContext) -> None:
    s = ctx.settings
    shares = WorkerShares(s.sandbox_worker_share, s.tenant_worker_share)
    for command, fn in HOST_TASKS:
        _register(app, ctx, shares, command, fn)

    # Not acks_late: a task lost with a dying worker is not replayed behind the client's back;
    # the queued prompts stay in Redis and the next message to the session starts a new drain.
    # Delivered twice, the second finds the session's runner lock held and returns.
    # A drain holds a thread while the session's job runs, so it counts in the shares too;
    # over them it is sent again a little later (the prompts wait in Redis meanwhile).
    # shared=False on both: a task here closes over this worker's context, and Celery's default
    # (shared) would hand it to every app made later in the process (bench/scale/hosts.py runs
    # many hosts in one), whose own task of that name would then never run.
    @app.task(name=tasks.AGENT_DRAIN, acks_late=False, ignore_result=True, shared=False)
    def agent_drain(**kwargs: Any) -> None:
        session_id = commands.AgentDrain.from_kwargs(kwargs).session_id
        session = ctx.sessions.load(session_id)
        if session is None or session.ended:
            return
        try:
            with shares.hold(session.sandbox_id, session.tenant_id):
                jobs.drain(ctx, session_id)
        except ShareUsedUp:
            logger.info("session %s: worker share in use, drain deferred", session_id)
            drain = commands.AgentDrain(session_id=session_id)
            app.send_task(
                drain.name,
                kwargs=drain.to_kwargs(),
                queue=tasks.host_queue(s.host_id),
                countdown=_DRAIN_RETRY,
                expires=max(_DRAIN_RETRY + 1, session.expires_at - time.time()),
            )


def _register(
    app: Celery,
    ctx: WorkerContext,
    shares: WorkerShares,
    command: type[commands.HostCommand],
    fn: Callable[..., Any],
) -> None:
    # The web sends the sandbox's tenant with every command, for the tenant's share (looked up
    # when missing, for the share or for a function that uses it).
    name = command.name
    takes_tenant = name in _USES_TENANT
    always = name in _ALWAYS_RUN
    patience = SHARE_PATIENCE_BY_TASK.get(name, SHARE_PATIENCE)

    @app.task(name=name, bind=True, acks_late=False, ignore_result=True, shared=False)
    def host_task(self: Task, **kwargs: Any) -> None:
        task_id = self.request.id
        sandbox_id = kwargs.get("sandbox_id", "-")
        tenant_id = kwargs.pop("tenant_id", None)
        ran = False
        staged: ops.Staged | None = None

        def answer(result: Any = None, error: PaddockError | None = None) -> None:
            # The operation's last writes, the task's entry in the sandbox's log and the
            # reply: one round trip.
            pipe = ctx.redis.pipeline(transaction=False)
            if staged is not None:
                staged.record(pipe)
            if ran and name not in _LOGGED_FIRST:
                ctx.store.log_task(pipe, sandbox_id, name, ctx.settings.host_id)
            rpc.reply(ctx.redis, task_id, result=result, error=error, pipe=pipe)

        if not tenant_id and (takes_tenant or not always):
            tenant_id = _tenant_of(ctx, sandbox_id)  # a message from an older web
        try:
            cmd = command.from_kwargs({**kwargs, "tenant_id": tenant_id or ""})
            if always:
                share: AbstractContextManager[None] = nullcontext()
            else:
                share = shares.hold(sandbox_id, tenant_id or "")
            with share:
                ran = True
                if name in _LOGGED_FIRST:
                    first = ctx.redis.pipeline(transaction=False)
                    ctx.store.log_task(first, sandbox_id, name, ctx.settings.host_id)
                    first.execute()
                result = fn(ctx, cmd)
        except ShareUsedUp as exc:
            delay = share_delay(self.request.retries, patience)
            if delay is not None:
                # Same task id and expiry: the web still waits for this one reply.
                tries = self.request.retries
                raise self.retry(countdown=delay, max_retries=tries + 1) from None
            logger.warning("sandbox %s task %s %s: worker share used up", sandbox_id, name, task_id)
            answer(error=exc)
        except PaddockError as exc:
            # The code only: a message can quote a path or a command's error text.
            logger.warning("sandbox %s task %s %s: %s", sandbox_id, name, task_id, exc.code)
            answer(error=exc)
        except Exception:
            logger.exception("sandbox %s task %s %s failed", sandbox_id, name, task_id)
            answer(error=PaddockError())
        else:
            if isinstance(result, ops.Staged):
                staged, result = result, result.result
            value = None if result is None else result.to_json()
            try:
                answer(result={"value": value, "host": ctx.settings.host_id})
            except Exception:
                if staged is not None:  # the reply is lost: its writes are made on their own
                    _record_alone(staged, sandbox_id, name)
                raise
            finally:
                if staged is not None:
                    staged.then()


def _record_alone(staged: ops.Staged, sandbox_id: str, name: str) -> None:
    try:
        staged.record(None)
    except Exception:
        logger.exception("sandbox %s task %s: its record was not written", sandbox_id, name)


def share_delay(tries: int, patience: float) -> float | None:
    """Seconds until the next try of a task over its share that was put back ``tries`` times
    already (0.05 s, doubling, at most 1 s), or None once it has waited ``patience`` seconds."""
    waited = sum(min(0.05 * 2**i, 1.0) for i in range(tries))
    if waited >= patience:
        return None
    return min(0.05 * 2**tries, 1.0)


def _tenant_of(ctx: WorkerContext, sandbox_id: str) -> str:
    """The sandbox's tenant from its record, for a message that did not carry it."""
    raw = ctx.redis.hget(keys.sandbox(sandbox_id), "tenant")
    return raw.decode() if isinstance(raw, bytes) else ""
