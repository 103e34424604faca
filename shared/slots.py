"""Per-tenant concurrency slots: how many long-polls (``wait=true``) and session WebSockets a
tenant holds open at once.

One Redis sorted set per tenant and kind (``keys.slots``): member = a random token, score = the
moment the slot expires (Redis server time, in ms, so web servers with skewed clocks agree). A
holder refreshes its slot while it lives and releases it when done; a holder that dies without
releasing (a killed web worker) simply stops counting once its score is in the past. The key
itself expires with its last slot, so an idle tenant leaves nothing behind.

Acquiring is one Lua script (drop expired, count, add), so two requests racing for the last
slot cannot both get it.
"""

from __future__ import annotations

import secrets

import redis

from shared import keys

WAITS = "waits"
SOCKETS = "sockets"
STREAMS = "streams"  # process answers being written
PROXIES = "proxies"  # connections proxied into sandbox ports (web/ports/)

# Every script reads the clock from Redis (TIME) instead of taking it from the caller: allowed
# in scripts since Redis 5 (effects replication), and the one clock all web servers share.
NOW_MS_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# The key lives as long as its longest-lived slot (+1 s), whatever ttl each holder used.
_EXPIRE_WITH_LAST = """
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if last[2] then redis.call('PEXPIREAT', KEYS[1], math.floor(tonumber(last[2])) + 1000) end
"""

# KEYS[1] slots key; ARGV: limit, ttl_ms, token.  -> 1 acquired, 0 full
_ACQUIRE = (
    NOW_MS_LUA
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
"""
    + _EXPIRE_WITH_LAST
    + "return 1"
)

# KEYS[1] slots key; ARGV: ttl_ms, token.  Only a slot still held is extended (XX): one that
# already expired, or was released, is not brought back past the limit.
_REFRESH = (
    NOW_MS_LUA
    + """
redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), ARGV[2])
"""
    + _EXPIRE_WITH_LAST
    + "return 1"
)

# KEYS[1] slots key.  -> live slots
_COUNT = NOW_MS_LUA + "return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')"


class Slots:
    """Per-tenant concurrency slots (waits, sockets) in a Redis sorted set scored by expiry:
    a holder that dies stops counting after its ttl."""

    def __init__(self, r: redis.Redis) -> None:
        self.r = r
        self._acquire = r.register_script(_ACQUIRE)
        self._refresh = r.register_script(_REFRESH)
        self._count = r.register_script(_COUNT)

    def acquire(self, kind: str, tenant_id: str, limit: int, ttl: float) -> str | None:
        """A slot token valid for ``ttl`` seconds, or None when the tenant already holds
        ``limit`` live slots of this kind."""
        token = secrets.token_hex(8)
        got = self._acquire(keys=[keys.slots(kind, tenant_id)], args=[limit, _ms(ttl), token])
        return token if int(got) == 1 else None

    def refresh(self, kind: str, tenant_id: str, token: str, ttl: float) -> None:
        """Keep a held slot alive for another ``ttl`` seconds (a no-op once it expired or was
        released)."""
        self._refresh(keys=[keys.slots(kind, tenant_id)], args=[_ms(ttl), token])

    def release(
        self, kind: str, tenant_id: str, token: str, pipe: redis.client.Pipeline | None = None
    ) -> None:
        """Give the slot back, now or with ``pipe`` (in its round trip, when it runs)."""
        (pipe if pipe is not None else self.r).zrem(keys.slots(kind, tenant_id), token)

    def count(self, kind: str, tenant_id: str) -> int:
        """Live (unexpired) slots the tenant holds of this kind."""
        return int(self._count(keys=[keys.slots(kind, tenant_id)]))


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))
