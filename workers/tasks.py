"""Celery tasks: thin wrappers that call workers.ops and publish the reply.

Delivery: none of the host tasks is ``acks_late``. Each answers one HTTP request that is waiting
for it; if a worker dies mid-task, redelivering later could repeat a side effect (start a process
twice) after the client already got a timeout. At-most-once plus the message's ``expires`` (the
web's wait time) is the honest contract. Time limits: Celery enforces them only in the prefork
pool, and our workers use threads, so every blocking call inside has its own timeout (Docker API
client timeout, exec deadline, Redis socket timeout).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import Celery, Task

from shared import rpc, tasks
from shared.errors import PaddockError
from workers import ops
from workers.agent import tasks as agent_tasks
from workers.context import WorkerContext

logger = logging.getLogger(__name__)

HOST_TASKS: dict[str, Callable[..., Any]] = {
    tasks.SANDBOX_CREATE: ops.create_sandbox,
    tasks.SANDBOX_DESTROY: ops.destroy_sandbox,
    tasks.SANDBOX_PORTS: ops.ports,
    tasks.FS_LIST: ops.list_dir,
    tasks.FS_MKDIR: ops.make_dir,
    tasks.FS_REMOVE: ops.remove,
    tasks.FS_READ: ops.read_file,
    tasks.FS_WRITE: ops.write_file,
    tasks.PROCESS_START: ops.start_process,
    tasks.PROCESS_STDIN: ops.write_stdin,
    tasks.PROCESS_KILL: ops.kill_process,
}


def register_host_tasks(app: Celery, ctx: WorkerContext) -> None:
    for name, fn in HOST_TASKS.items():
        _register(app, ctx, name, fn)

    # Not acks_late: a task lost with a dying worker is not replayed behind the client's back;
    # the queued prompts stay in Redis and the next message to the session starts a new drain.
    # Delivered twice, the second finds the session's runner lock held and returns.
    @app.task(name=tasks.AGENT_DRAIN, acks_late=False, ignore_result=True)
    def agent_drain(session_id: str) -> None:
        agent_tasks.drain(ctx, session_id)


def _register(app: Celery, ctx: WorkerContext, name: str, fn: Callable[..., Any]) -> None:
    @app.task(name=name, bind=True, acks_late=False, ignore_result=True)
    def host_task(self: Task, **kwargs: Any) -> None:
        task_id = self.request.id
        sandbox_id = kwargs.get("sandbox_id", "-")
        ctx.store.log_task(sandbox_id, name, ctx.settings.host_id)
        try:
            result = fn(ctx, **kwargs)
        except PaddockError as exc:
            logger.warning("sandbox %s task %s %s: %s", sandbox_id, name, task_id, exc.message)
            rpc.reply(ctx.redis, task_id, error=exc)
        except Exception:
            logger.exception("sandbox %s task %s %s failed", sandbox_id, name, task_id)
            rpc.reply(ctx.redis, task_id, error=PaddockError())
        else:
            rpc.reply(ctx.redis, task_id, result={"value": result, "host": ctx.settings.host_id})
