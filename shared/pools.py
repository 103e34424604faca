"""Warm pools in Redis: the started, idle sandboxes each host keeps per template and network
mode, so that a create claims one instead of starting a container (workers/host/pool.py keeps
them filled; shared/placement.py ``PLACE`` claims one atomically).

A warm sandbox has a sandbox record like any other (``pdk:sbx:<id>``) with no tenant, its
``host``, ``template``, the ``pool`` mode it was made in and a status of its own:

- ``warming``: its host reserved a slot for it (``host_sandboxes``) and is starting it;
- ``pool``: started and idle, in ``warm(host)`` and ``warm_kind(host, template, mode)``:
  claimable. Placement pops it from both sets and turns the record into the tenant's
  (status ``creating``) in the same Lua step, so no two creates get the same one, and the id
  of a claimed sandbox was never handed out before.

It holds one of its host's capacity slots all along, and none of any tenant's (it is in no
tenant's set and its record names no tenant, so no tenant's lookup finds it).
"""

from __future__ import annotations

import json
import re
import time

import redis

from shared import keys, placement
from shared.egress import NETWORK_MODES, NetworkPolicy
from shared.errors import ConfigError
from shared.redisio import read_set

WARMING = "warming"
READY = "pool"
# At most this many warm sandboxes of one template per host, whatever the setting says.
MAX_POOL = 32
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

# Each of these scripts ends by rewriting the host's placement entry (its free slots count
# warm sandboxes: shared/placement.py), and keeps the kind's set of warm hosts with the kind's
# own set, so placement finds a warm sandbox without reading every host.

# Reserve a host slot for a new warm sandbox and write its record, unless the host is full.
# KEYS: host's sandboxes, the sandbox.  ARGV: capacity, id, host, template, mode, now, network.
_RESERVE = placement.lua("""
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('SADD', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[2], 'host', ARGV[3], 'template', ARGV[4], 'status', 'warming',
           'created_at', ARGV[6], 'network', ARGV[7], 'pool', ARGV[5])
reindex(ARGV[3])
return 1
""")

# A warming sandbox is started: claimable from now on (or a ready one, again: a no-op unless
# a worker died between two writes).
# KEYS: the sandbox, host's warm set, its kind's set, the kind's warm hosts.  ARGV: id, host.
_READY = placement.lua("""
local s = redis.call('HGET', KEYS[1], 'status')
if s ~= 'warming' and s ~= 'pool' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'pool')
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('SADD', KEYS[4], ARGV[2])
reindex(ARGV[2])
return 1
""")

# Take a warm sandbox out of its pool to remove it (dead, surplus), unless a create claimed it
# meanwhile: it is then ``deleting`` and due for the reaper, which sends the destroy again if
# this host does not finish it.
# KEYS: the sandbox, host's warm set, its kind's set, expiry index, the kind's warm hosts.
# ARGV: id, now, host.
_TAKE = placement.lua("""
local s = redis.call('HGET', KEYS[1], 'status')
if s ~= 'pool' and s ~= 'warming' then return 0 end
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('SREM', KEYS[3], ARGV[1])
if redis.call('SCARD', KEYS[3]) == 0 then redis.call('SREM', KEYS[5], ARGV[3]) end
redis.call('HSET', KEYS[1], 'status', 'deleting', 'deleting_at', ARGV[2])
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[1])
reindex(ARGV[3])
return 1
""")


def parse_pool_sizes(raw: str) -> dict[str, int]:
    """``"Bash=2,Python3=1"`` as ``{"Bash": 2, "Python3": 1}`` (a size of 0 is dropped;
    ``0``, ``off`` or nothing: no pools, and an empty PADDOCK_POOL_SIZES is the default's).
    Raises ConfigError naming PADDOCK_POOL_SIZES."""
    out: dict[str, int] = {}
    if raw.strip().lower() in ("0", "off", "none"):
        return out
    for entry in (e.strip() for e in raw.split(",")):
        if not entry:
            continue
        name, sep, count = (p.strip() for p in entry.partition("="))
        if not sep or not _NAME.match(name) or not count.isdigit():
            raise ConfigError(f"PADDOCK_POOL_SIZES: {entry!r} is not TEMPLATE=COUNT")
        if int(count) > MAX_POOL:
            raise ConfigError(f"PADDOCK_POOL_SIZES: {entry!r}: at most {MAX_POOL} per template")
        if name in out:
            raise ConfigError(f"PADDOCK_POOL_SIZES: {name!r} is given twice")
        if int(count):
            out[name] = int(count)
    return out


class Pools:
    """A host's warm pools in Redis. Takes the client; opens nothing itself."""

    def __init__(self, r: redis.Redis) -> None:
        self.r = r
        self._reserve = r.register_script(_RESERVE)
        self._ready = r.register_script(_READY)
        self._take = r.register_script(_TAKE)

    def reserve(
        self, host_id: str, capacity: int, template: str, mode: str, sandbox_id: str
    ) -> bool:
        """Hold one of the host's ``capacity`` slots for a new warm sandbox (status
        ``warming``). False when the host is full (or the id is taken)."""
        if mode not in NETWORK_MODES:
            raise ValueError(f"not a network mode: {mode!r}")
        network = json.dumps(NetworkPolicy(mode=mode).to_json(), separators=(",", ":"))
        got = self._reserve(
            keys=[keys.host_sandboxes(host_id), keys.sandbox(sandbox_id)],
            args=[capacity, sandbox_id, host_id, template, mode, time.time(), network],
        )
        return bool(got)

    def ready(self, host_id: str, template: str, mode: str, sandbox_id: str) -> bool:
        """The warming (or ready) sandbox is claimable. False when its record is neither
        (taken or claimed meanwhile: not the pool's any more)."""
        got = self._ready(
            keys=[
                keys.sandbox(sandbox_id),
                keys.warm(host_id),
                keys.warm_kind(host_id, template, mode),
                keys.place_warm(f"{template}:{mode}"),
            ],
            args=[sandbox_id, host_id],
        )
        return bool(got)

    def take(self, host_id: str, template: str, mode: str, sandbox_id: str) -> bool:
        """Take a warm (or warming) sandbox out of the pool to remove it: its record becomes
        ``deleting`` (the caller destroys it, then purges the record). False when it is not
        a pool's any more (claimed meanwhile: leave it alone)."""
        got = self._take(
            keys=[
                keys.sandbox(sandbox_id),
                keys.warm(host_id),
                keys.warm_kind(host_id, template, mode),
                keys.expiry_index(),
                keys.place_warm(f"{template}:{mode}"),
            ],
            args=[sandbox_id, time.time(), host_id],
        )
        return bool(got)

    def ready_ids(self, host_id: str, template: str, mode: str) -> set[str]:
        """The claimable warm sandboxes of one kind on the host."""
        return read_set(self.r, keys.warm_kind(host_id, template, mode))

    def all_ready(self, host_id: str) -> set[str]:
        return read_set(self.r, keys.warm(host_id))
