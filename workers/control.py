"""Work that belongs to no host: reaping idle and expired sandboxes."""

from __future__ import annotations

import logging
import time

import redis
from celery import Celery

from shared import keys, rpc, tasks
from shared.lifecycle import end_session
from shared.sessions import Sessions
from shared.settings import Settings
from shared.store import Store

logger = logging.getLogger(__name__)


def reap(app: Celery, r: redis.Redis, settings: Settings) -> list[str]:
    """Send a destroy to the owner of every idle or expired sandbox; returns their ids.

    A sandbox whose host is dead is forgotten here; its container, if the host comes back,
    is removed by that host's reconcile at start.
    """
    store = Store(r)
    now = time.time()
    alive = {h.host_id for h in store.alive_hosts()}
    due = store.due_sandboxes(idle_before=now - settings.idle_timeout, now=now)
    for sandbox_id in due:
        record = store.raw_sandbox(sandbox_id)
        host = record.get("host")
        if not record or host not in alive:
            logger.info("sandbox %s: reaped (host %s not alive)", sandbox_id, host)
            store.purge_sandbox(sandbox_id)
            continue
        # One destroy per attempt: sent again only if the last one has had time to finish.
        retry = now - float(record.get("deleting_at") or 0) > settings.task_timeout * 2
        if not store.begin_delete(sandbox_id):
            if not retry:
                continue
            r.hset(keys.sandbox(sandbox_id), "deleting_at", now)
        logger.info("sandbox %s: idle or expired, destroying on host %s", sandbox_id, host)
        rpc.send(
            app,
            tasks.host_queue(host),
            tasks.SANDBOX_DESTROY,
            {"sandbox_id": sandbox_id},
            expires=settings.task_timeout * 10,
        )
    return due


def expire_sessions(app: Celery, r: redis.Redis, settings: Settings) -> list[str]:
    """End every agent session past its ``expires_at`` (agent stopped, sandbox removed)."""
    sessions = Sessions(r)
    store = Store(r)
    due = sessions.due(time.time())
    for session_id in due:
        s = sessions.load(session_id)
        if s is None:
            r.zrem(keys.session_expiry(), session_id)
            continue
        end_session(app, sessions, store, s, settings.task_timeout * 10)
    return due
