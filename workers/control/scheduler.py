"""The one scheduler of periodic tasks across every control worker (no Celery beat)."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import redis
from celery import Celery

from shared import keys
from shared.tasks import CONTROL_QUEUE

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Periodic:
    """A task sent to the control queue every ``interval`` seconds."""

    name: str
    interval: float


def claim_tick(r: redis.Redis, name: str, interval: float, now: float, owner: str) -> int | None:
    """Claim tick number ``now // interval`` of ``name`` for ``owner``: SET NX, so across any
    number of control workers exactly one claims each tick (clocks a little apart compute the
    same number, and each number is claimed once). Returns the tick, or None when another
    worker has it."""
    tick = int(now // interval)
    # Kept two intervals: long enough that no late worker can claim the same tick again.
    ttl_ms = max(1000, int(interval * 2000))
    if r.set(keys.tick(name, tick), owner, nx=True, px=ttl_ms):
        return tick
    return None


class Scheduler:
    """The periodic tasks of the control workers, without Celery beat: each control worker
    runs one of these threads, and at every tick boundary they race for the tick in Redis
    (claim_tick); the winner sends the task to the control queue, which one worker runs.
    Nothing here is a separate process, so a killed control worker leaves nothing running,
    and a worker that dies is simply not among the racers of the next tick."""

    def __init__(self, app: Celery, r: redis.Redis, periodic: list[Periodic], owner: str) -> None:
        self.app = app
        self.r = r
        self.periodic = periodic
        self.owner = owner
        self.stop = threading.Event()

    def start(self) -> threading.Thread:
        t = threading.Thread(target=self._loop, name="scheduler", daemon=True)
        t.start()
        return t

    def tick_once(self, now: float) -> list[str]:
        """Claim and send every task whose tick ``now`` falls in; returns the names sent."""
        sent = []
        for p in self.periodic:
            tick = claim_tick(self.r, p.name, p.interval, now, self.owner)
            if tick is None:
                continue
            self.app.send_task(
                p.name,
                queue=CONTROL_QUEUE,
                expires=p.interval,  # a tick not run within its interval is superseded
            )
            sent.append(p.name)
        return sent

    def _loop(self) -> None:
        while not self.stop.is_set():
            try:
                self.tick_once(time.time())
            except Exception:  # Redis or the broker away for a moment: the next tick tries
                logger.exception("scheduler %s: tick failed", self.owner)
            # Just past the next boundary of any task's ticks.
            now = time.time()
            wait = min(p.interval - now % p.interval for p in self.periodic) + 0.01
            self.stop.wait(wait)
