"""Work that belongs to no host: reaping idle, expired, lost and undeleted sandboxes and expired
agent sessions (the ``paddock.control.reap`` task, sent by the scheduler: scheduler.py)."""

from __future__ import annotations

import logging
import time

import redis
from celery import Celery

from shared import commands, keys, rpc, tasks
from shared.lifecycle import end_lost_session, end_session
from shared.output import ProcessLog
from shared.pools import READY, WARMING, Pools
from shared.sessions import Sessions
from shared.settings import Settings
from shared.store import Store
from workers.host.reconcile import end_processes

logger = logging.getLogger(__name__)

# The longest wait between two destroys of a sandbox whose delete does not get done.
_MAX_RETRY_DELAY = 600.0


def destroy_retry_delay(tries: int, settings: Settings) -> float:
    """Seconds after the destroy number ``tries`` (0: the first one, by whoever began the
    delete) before the reaper sends the next: twice the task timeout (the last one has had
    time to finish or fail), doubling, at most _MAX_RETRY_DELAY."""
    return min(settings.task_timeout * 2 ** (tries + 1), _MAX_RETRY_DELAY)


def reap(app: Celery, r: redis.Redis, settings: Settings) -> list[str]:
    """Send a destroy to the owner of every idle or expired sandbox, and again (with back-off)
    to the owner of every sandbox whose delete is not done yet (its host or engine was down:
    a delete is retried until done); purge lost sandboxes whose record has been shown long
    enough (their host cleaned up when it found them lost). Returns the ids found due.

    A delete that never gets done is retried every _MAX_RETRY_DELAY seconds for as long as
    its record is ``deleting``, and keeps its host and quota slot meanwhile: its container
    and storage may still be there (the engine down, a wedged removal).

    A sandbox whose host is dead is forgotten here; its container, if the host comes back,
    is removed by that host's reconcile.
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
        if record.get("status") == "lost":
            logger.info("sandbox %s: lost on host %s, record purged", sandbox_id, host)
            store.purge_sandbox(sandbox_id)
            continue
        if not store.begin_delete(sandbox_id):
            # Being deleted already: one destroy per attempt, sent again only once the last
            # one has had time to finish, later and later.
            retry = store.retry_delete_if_due(
                sandbox_id, lambda n: destroy_retry_delay(n, settings), now=now
            )
            if retry is None:
                continue  # not due yet, or done meanwhile
            tries, since = retry
            logger.warning(
                "sandbox %s: delete not done after %.0f s, destroy %d sent again to host %s",
                sandbox_id,
                since,
                tries + 1,
                host,
            )
        else:
            logger.info("sandbox %s: idle or expired, destroying on host %s", sandbox_id, host)
        rpc.send(
            app,
            tasks.host_queue(host),
            commands.SandboxDestroy.name,
            commands.SandboxDestroy(sandbox_id=sandbox_id).to_kwargs(),
            expires=settings.task_timeout * 10,
        )
    return due


def lose_dead_hosts(r: redis.Redis, settings: Settings) -> list[str]:
    """Mark ``lost`` every sandbox of a host not heard from for settings.host_dead_after
    seconds (its worker and maybe its machine or engine are gone, and nobody else can reach
    its containers): the slots are freed at once, /v1 shows ``lost``, the E2B API answers 404,
    the processes still shown running end with a line on stderr saying why (a waiter returns),
    and the record is purged after settings.lost_keep. If the host comes back, its reconcile
    removes the containers of these records (workers/host/reconcile.py check_engine). Returns the
    sandbox ids marked."""
    store = Store(r)
    plog = ProcessLog(r)
    sessions = Sessions(r)
    pools = Pools(r)
    marked = []
    for host in store.silent_hosts(since=time.time() - settings.host_dead_after):
        reason = f"its host {host} has sent no heartbeat for {settings.host_dead_after:.0f} s"
        for sandbox_id in store.host_sandbox_ids(host):
            if _unclaimed_warm(pools, host, store.raw_sandbox(sandbox_id), sandbox_id):
                continue
            if not store.mark_lost(sandbox_id, reason, settings.lost_keep):
                # Being deleted (the reaper purges it, its host being dead) or gone: it
                # holds no slot of the host's any more.
                if not store.raw_sandbox(sandbox_id):
                    r.srem(keys.host_sandboxes(host), sandbox_id)
                continue
            logger.warning("sandbox %s: lost (%s)", sandbox_id, reason)
            end_lost_session(sessions, store, sandbox_id, reason)
            end_processes(plog, sandbox_id, f"the sandbox was lost ({reason})")
            marked.append(sandbox_id)
    return marked


def _unclaimed_warm(pools: Pools, host: str, record: dict[str, str], sandbox_id: str) -> bool:
    """A dead host's warm sandbox nobody claimed leaves its pool (its warm sets with it) and
    becomes ``deleting``, due at once: the reaper purges it with its host's slot. True when
    the record was a warm one."""
    if record.get("status") not in (WARMING, READY):
        return False
    pools.take(host, record.get("template", ""), record.get("pool", ""), sandbox_id)
    return True


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


def record_tick(r: redis.Redis, name: str) -> None:
    """Count one run of periodic task ``name`` and its time (keys.ticks(): what an operator, a
    test or a metric reads to see that exactly one scheduler runs)."""
    pipe = r.pipeline()
    pipe.hincrby(keys.ticks(), name, 1)
    pipe.hset(keys.ticks(), f"{name}:at", time.time())
    pipe.execute()
