"""The web's own look at Celery's broker, for /health and /metrics.

Sends go through Celery (shared.rpc); this is a plain Redis client of the broker's URL, with no
retries and a 5 s timeout, that reads what Celery cannot tell cheaply: whether the broker
answers, and how long its queues are (web/metrics.py). With no PADDOCK_BROKER_URL it is the
state store's own client, and /health asks nothing more (the state check covers it).
"""

from __future__ import annotations

import logging
import threading
import time

import redis

from shared.redisconn import probe_client, redact_url
from shared.settings import Settings

logger = logging.getLogger(__name__)

# /health asks the broker at most this often per web process: a load balancer's rate of
# asking must not become the broker's load.
PROBE_TTL = 5.0


class BrokerProbe:
    def __init__(self, client: redis.Redis, separate: bool, where: str, ttl: float = PROBE_TTL):
        self.client = client
        self.separate = separate
        self.where = where  # the URL, password masked
        self.ttl = ttl
        self._lock = threading.Lock()
        self._cached: tuple[float, str | None] = (-1e9, None)

    @classmethod
    def from_settings(cls, settings: Settings, state: redis.Redis) -> BrokerProbe:
        """Raises ConfigError when PADDOCK_BROKER_URL does not parse."""
        if not settings.broker_url:
            return cls(state, separate=False, where=redact_url(settings.redis_url))
        client = probe_client(settings.broker_url)
        return cls(client, separate=True, where=redact_url(settings.broker_url))

    def problem(self) -> str | None:
        """Why the broker cannot take tasks now (None: it answers), read at most once per
        ``ttl``; always None without a broker of its own."""
        if not self.separate:
            return None
        with self._lock:
            at, cached = self._cached
            if time.monotonic() - at < self.ttl:
                return cached
            problem = None
            try:
                self.client.ping()
            except redis.RedisError as exc:
                logger.warning("broker at %s: unreachable: %s", self.where, exc)
                problem = f"the task broker is unreachable: {exc}"
            self._cached = (time.monotonic(), problem)
            return problem
