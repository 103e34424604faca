"""Request/reply over Celery: the web sends a task onto a host's queue and blocks on a Redis
list for its one reply. Celery's own result backend is not used: a BLPOP with a timeout is
simpler, thread-safe under gunicorn's threads, and bounded.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

import redis
from celery import Celery
from kombu.exceptions import OperationalError

from shared import keys
from shared.errors import BrokerUnavailable, PaddockError, WorkerTimeout, from_wire
from shared.tasks import host_queue

logger = logging.getLogger(__name__)

REPLY_TTL = 300


def send(app: Celery, queue: str, name: str, kwargs: dict[str, Any], expires: float) -> str:
    """Fire a task by name onto ``queue``; it is dropped if not started within ``expires``.

    Raises BrokerUnavailable when the broker refused or did not answer after Celery's publish
    retries (seconds: shared.broker's socket timeouts), instead of kombu's OperationalError.
    """
    task_id = uuid.uuid4().hex
    try:
        app.send_task(
            name,
            kwargs=kwargs,
            queue=queue,
            task_id=task_id,
            expires=expires,
            argsrepr="()",
            kwargsrepr=shown_kwargs(kwargs),
        )
    except OperationalError as exc:
        logger.error("task %s %s onto %s: the broker is unreachable: %s", name, task_id, queue, exc)
        raise BrokerUnavailable() from exc
    return task_id


# The arguments a task's monitoring shows (Flower, `celery events`): ids only. The rest can be
# a tenant's command, its environment (secrets), or a file's bytes; Celery would put up to 1 KiB
# of each task's arguments in its message headers, in clear, and spend more time writing it.
_SHOWN = ("sandbox_id", "tenant_id", "process_id", "session_id")


def shown_kwargs(kwargs: dict[str, Any]) -> str:
    """The ``kwargsrepr`` of a task: its ids, and the names of its other arguments."""
    shown = {k: kwargs[k] for k in _SHOWN if isinstance(kwargs.get(k), str)}
    rest = sorted(k for k in kwargs if k not in shown)
    return json.dumps({**shown, "other": rest}) if rest else json.dumps(shown)


def call(
    app: Celery,
    r: redis.Redis,
    host_id: str,
    name: str,
    kwargs: dict[str, Any],
    timeout: float,
) -> Any:
    """Run task ``name`` on ``host_id`` and return its result.

    Raises WorkerTimeout when no reply comes within ``timeout`` seconds, BrokerUnavailable
    (see send), and the worker's own PaddockError subclass when the task failed.
    """
    task_id = send(app, host_queue(host_id), name, kwargs, expires=timeout)
    got = r.blpop([keys.reply(task_id)], timeout=max(1, round(timeout)))
    if got is None:
        logger.warning("task %s %s on host %s: no reply in %.0fs", name, task_id, host_id, timeout)
        raise WorkerTimeout()
    body = json.loads(got[1])
    if "error" in body:
        raise from_wire(body)
    return body.get("result")


def reply(
    r: redis.Redis,
    task_id: str,
    result: Any = None,
    error: PaddockError | None = None,
    pipe: redis.client.Pipeline | None = None,
) -> None:
    """Publish the reply of ``task_id`` (used by workers), in one round trip with what
    ``pipe`` already holds when given."""
    body = error.wire() if error is not None else {"result": result}
    if pipe is None:
        pipe = r.pipeline(transaction=False)
    pipe.rpush(keys.reply(task_id), json.dumps(body))
    pipe.expire(keys.reply(task_id), REPLY_TTL)
    pipe.execute()
