"""The state store: hosts, sandboxes and processes, all in Redis.

Every read of a sandbox is scoped by tenant: a sandbox of another tenant is ``SandboxNotFound``,
exactly like one that does not exist.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from shared import keys, placement
from shared.egress import NO_NETWORK, NetworkPolicy
from shared.errors import EgressUnavailable, NoCapacity, QuotaExceeded, SandboxNotFound
from shared.redisio import read_hash, read_set, text

# Seconds a client is told to wait after a sandbox or session quota refusal: a slot frees when
# the tenant deletes one or when one is reaped, not by itself within a second.
QUOTA_RETRY_AFTER = 10
# Seconds a sandbox's task log outlives its last entry.
TASK_LOG_TTL = 7 * 86400

# Drop a sandbox's processes and give its kept output back to its tenant, in one step: a pump
# still appending (its script checks that the process exists) is either counted before or
# dropped after, so the tenant's counter never keeps bytes that are gone.
# KEYS: process ids, running ids, sandbox counter, tenant counter.
# ARGV: key prefixes of a process's hash, output stream, done stream.
_DROP_PROCESSES = """
for _, pid in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  redis.call('DEL', ARGV[1] .. pid, ARGV[2] .. pid, ARGV[3] .. pid)
end
local n = tonumber(redis.call('GET', KEYS[3]) or '0')
if n ~= 0 then redis.call('DECRBY', KEYS[4], n) end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
return n
"""

# Also due at once in the expiry index: whoever began the delete may never see it done (the
# host or its engine is down), and the reaper sends the destroy again until it is (with
# back-off, workers/control/reaper.py).
# KEYS: the sandbox, expiry index.  ARGV: now, sandbox id.
_BEGIN_DELETE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HGET', KEYS[1], 'status') == 'deleting' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'deleting', 'deleting_at', ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2])
return 1
"""

# The reaper sends a sandbox's destroy again (workers/control/reaper.py): one more try, timed
# from now.
# Nothing when the delete got done meanwhile (its record purged: an HSET would leave a bare
# hash behind that no index reaches).
# KEYS: the sandbox.  ARGV: now.  -> the tries so far, or nil
_RETRY_DELETE = """
if redis.call('HGET', KEYS[1], 'status') ~= 'deleting' then return false end
redis.call('HSET', KEYS[1], 'deleting_at', ARGV[1])
return redis.call('HINCRBY', KEYS[1], 'delete_tries', 1)
"""

# A running sandbox whose container stopped behind Paddock's back becomes `lost`, in one step:
# it leaves its host's and its tenant's sets (the capacity and quota slots, counted there, are
# free at once) and the idle index, and is due in the expiry index after ``keep`` seconds (the
# reaper then purges the record; until then GET /v1/sandboxes/{id} says `lost`). A sandbox
# being deleted, or already lost, is left alone.
# KEYS: the sandbox, host's sandboxes, tenant's sandboxes, idle index, expiry index.
# ARGV: now, keep, reason, sandbox id, host.  -> 1 when marked
_MARK_LOST = placement.lua("""
local s = redis.call('HGET', KEYS[1], 'status')
if s ~= 'running' and s ~= 'creating' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'lost', 'lost_at', ARGV[1], 'lost_reason', ARGV[3])
redis.call('SREM', KEYS[2], ARGV[4])
redis.call('SREM', KEYS[3], ARGV[4])
redis.call('ZREM', KEYS[4], ARGV[4])
redis.call('ZADD', KEYS[5], tonumber(ARGV[1]) + tonumber(ARGV[2]), ARGV[4])
reindex(ARGV[5])
return 1
""")


@dataclass(frozen=True)
class Host:
    host_id: str
    capacity: int
    templates: tuple[str, ...]
    egress: str = "ok"  # or why the host gives sandboxes no internet


@dataclass(frozen=True)
class Sandbox:
    sandbox_id: str
    tenant_id: str
    host_id: str
    template: str
    status: str
    created_at: float
    # Its network as created (records from before the egress policy had none: no network).
    network: NetworkPolicy = NO_NETWORK
    lost_reason: str | None = None  # why it was lost (status "lost")


@dataclass(frozen=True)
class Placement:
    """Where ``Store.place_claim`` put a sandbox: ``warm`` when it claimed a warm pool's
    sandbox (already started), ``evict`` the id of a warm sandbox its host must remove first
    ("" for none)."""

    sandbox: Sandbox
    warm: bool = False
    evict: str = ""


class Store:
    """Typed access to Paddock's Redis state. Takes the client; opens nothing itself."""

    def __init__(self, r: redis.Redis) -> None:
        self.r = r
        self._place = r.register_script(placement.PLACE)
        self._heartbeat = r.register_script(placement.HEARTBEAT)
        self._reindex = r.register_script(placement.REINDEX)
        self._begin_delete = r.register_script(_BEGIN_DELETE)
        self._drop_processes = r.register_script(_DROP_PROCESSES)
        self._mark_lost = r.register_script(_MARK_LOST)
        self._retry_delete = r.register_script(_RETRY_DELETE)

    # -- hosts -------------------------------------------------------------------------------
    def heartbeat(
        self,
        host_id: str,
        capacity: int,
        templates: list[str],
        ttl: float,
        catalog: list[dict[str, Any]] | None = None,
        egress: str = "ok",
        relay: str = "",
    ) -> None:
        """Announce a live host for ``ttl`` seconds: its capacity, its template names (what
        placement matches on), optionally its template catalog (one JSON object per
        template: name, image, hash, size_bytes, built_at, versions), whether it can give
        sandboxes the internet (``ok``, or why not), and where its port relay listens
        (``host:port``, workers/host/relay.py; empty: none). Rewrites the host's placement
        entry from its true free slots (shared/placement.py), which mends any drift."""
        self._heartbeat(
            keys=[keys.hosts(), keys.host(host_id), keys.hosts_seen(), keys.hosts_group()],
            args=[
                host_id,
                int(ttl * 1000),
                time.time(),
                placement.group_id(templates, egress),
                capacity,
                "," + ",".join(templates) + ",",
                json.dumps(catalog or []),
                egress,
                relay,
            ],
        )

    def host_down(self, host_id: str) -> None:
        """The host stops: no longer alive, nor in the placement index."""
        pipe = self.r.pipeline()
        pipe.delete(keys.host(host_id))
        self._reindex(args=[host_id], client=pipe)
        pipe.execute()

    def reindex_host(self, host_id: str) -> None:
        """Rewrite the host's placement entry from its true state (shared/placement.py): its
        free slots when alive, out of the index when not."""
        self._reindex(args=[host_id])

    def host_relay(self, host_id: str) -> str | None:
        """Where a live host's port relay listens (``host:port``); None: the host is not
        alive or runs none."""
        value = self.r.hget(keys.host(host_id), "relay")
        text = value.decode() if isinstance(value, bytes) else value
        return text or None

    def alive_hosts(self) -> list[Host]:
        """Every live host (one round trip for all of them: not for a per-create path)."""
        hids = sorted(self._smembers(keys.hosts()))
        pipe = self.r.pipeline(transaction=False)
        for hid in hids:
            pipe.hmget(keys.host(hid), "capacity", "templates", "egress")
        out = []
        for hid, (capacity, templates, egress) in zip(hids, pipe.execute(), strict=True):
            if capacity is None:
                continue
            out.append(
                Host(
                    host_id=hid,
                    capacity=int(capacity),
                    templates=tuple(t for t in text(templates or "").split(",") if t),
                    egress=text(egress) if egress is not None else "ok",
                )
            )
        return out

    def offered(self, template: str) -> bool:
        """Whether some host's placement group offers ``template`` (one Redis call; a group
        whose hosts all died meanwhile may still count until a placement prunes it)."""
        return bool(self.r.exists(keys.place_template(template)))

    def silent_hosts(self, since: float) -> list[str]:
        """Hosts with sandboxes placed on them whose heartbeat has expired and that have not
        been heard from since ``since`` (a time.time()). A host with no known last heartbeat
        (recorded before that was kept) or an unreadable one counts as heard from now."""
        hids = sorted(self._smembers(keys.hosts()))
        if not hids:
            return []
        pipe = self.r.pipeline(transaction=False)  # one round trip per tick, however many hosts
        for hid in hids:
            pipe.exists(keys.host(hid))
            pipe.scard(keys.host_sandboxes(hid))
        pipe.hmget(keys.hosts_seen(), hids)
        *counts, seen_at = pipe.execute()
        out = []
        for hid, alive, placed, seen in zip(hids, counts[::2], counts[1::2], seen_at, strict=True):
            if alive or not placed:
                continue
            try:
                if float(seen) < since:
                    out.append(hid)
            except (TypeError, ValueError):  # none yet (or unreadable): heard from now
                self.r.hset(keys.hosts_seen(), hid, time.time())
        return out

    def template_catalog(self) -> list[dict[str, Any]]:
        """Every template some live host offers, by name, each with the ``hosts`` that have it.

        Hosts may hold different builds of one template (one was updated first); the entry
        shown is the most recently built one. An unreadable catalog is skipped, not an error.
        """
        merged: dict[str, dict[str, Any]] = {}
        hosts: dict[str, list[str]] = {}
        hids = sorted(self._smembers(keys.hosts()))
        pipe = self.r.pipeline(transaction=False)
        for hid in hids:
            pipe.hget(keys.host(hid), "catalog")
        for hid, raw in zip(hids, pipe.execute(), strict=True):
            try:
                entries = json.loads(raw) if raw else []
            except ValueError:
                continue
            for entry in entries if isinstance(entries, list) else []:
                name = entry.get("name") if isinstance(entry, dict) else None
                if not isinstance(name, str):
                    continue
                hosts.setdefault(name, []).append(hid)
                seen = merged.get(name)
                if seen is None or float(entry.get("built_at") or 0) > float(
                    seen.get("built_at") or 0
                ):
                    merged[name] = entry
        return [{**merged[name], "hosts": hosts[name]} for name in sorted(merged)]

    def place(
        self,
        sandbox_id: str,
        tenant_id: str,
        template: str,
        max_sandboxes: int,
        max_lifetime: float,
        network: NetworkPolicy | None = None,
    ) -> Sandbox:
        """``place_claim``'s sandbox, never from a warm pool (warm sandboxes are still given
        back when a host is full: the evicted one is due for the reaper's destroy)."""
        return self.place_claim(
            sandbox_id, tenant_id, template, max_sandboxes, max_lifetime, network, warm=False
        ).sandbox

    def place_claim(
        self,
        sandbox_id: str,
        tenant_id: str,
        template: str,
        max_sandboxes: int,
        max_lifetime: float,
        network: NetworkPolicy | None = None,
        warm: bool = True,
    ) -> Placement:
        """Record a new sandbox (status ``creating``) with its ``network`` on a live host that
        has ``template`` (and, for internet, its egress rules in place), holding a slot of
        that host and one of the tenant's ``max_sandboxes``: with ``warm``, a host's warm
        sandbox of that template and network mode is claimed when one is ready (the
        placement's ``warm``; the sandbox then has the warm one's id, not ``sandbox_id``),
        else the freest host is chosen (its ``evict``: a warm sandbox given back for the
        slot, which the host removes first). See shared/placement.py: the work is the same
        whatever the number of hosts.

        Raises QuotaExceeded when the tenant already has ``max_sandboxes`` sandboxes (ending
        ones included: they still occupy their host), EgressUnavailable when the only hosts
        that could take it cannot give it the internet, NoCapacity when no live host can take
        it. Nothing is written when it raises.
        """
        network = network or NO_NETWORK
        now = time.time()
        kind = f"{template}:{network.mode}" if warm else ""
        got = self._place(
            keys=[
                keys.tenant_sandboxes(tenant_id),
                keys.sandbox(sandbox_id),
                keys.idle_index(),
                keys.expiry_index(),
                keys.place_template(template),
                keys.place_warm(kind),
            ],
            args=[
                template,
                sandbox_id,
                tenant_id,
                max_sandboxes,
                now,
                max_lifetime,
                keys.sandbox(""),
                json.dumps(network.to_json(), separators=(",", ":")),
                "1" if network.internet else "0",
                kind,
                placement.WARM_CANDIDATES,
            ],
        )
        outcome = text(got[0])
        if outcome == "quota":
            raise QuotaExceeded(
                f"sandbox quota reached: {max_sandboxes} sandboxes per tenant "
                "(PADDOCK_TENANT_MAX_SANDBOXES); delete one first",
                retry_after=QUOTA_RETRY_AFTER,
            )
        if outcome == "egress":
            raise EgressUnavailable(
                f"no live host can give a sandbox the internet now ({text(got[1])}); create it "
                "with network mode none, or see the host worker's log"
            )
        if outcome != "ok":
            raise NoCapacity("No sandbox host is available with free capacity")
        placed = text(got[2])
        sandbox = Sandbox(placed, tenant_id, text(got[1]), template, "creating", now, network)
        return Placement(sandbox, warm=placed != sandbox_id, evict=text(got[3]))

    # -- sandboxes ---------------------------------------------------------------------------
    def set_sandbox_status(self, sandbox_id: str, status: str) -> None:
        self.r.hset(keys.sandbox(sandbox_id), "status", status)

    def get_sandbox(
        self,
        tenant_id: str,
        sandbox_id: str,
        include_ending: bool = False,
        include_lost: bool = False,
    ) -> Sandbox:
        """The tenant's sandbox. Raises SandboxNotFound when absent, another's, (unless
        ``include_ending``) being deleted, or (unless ``include_lost``) lost."""
        data = self._hgetall(keys.sandbox(sandbox_id))
        if not data or data.get("tenant") != tenant_id:
            raise SandboxNotFound()
        if data.get("status") == "deleting" and not include_ending:
            raise SandboxNotFound()
        if data.get("status") == "lost" and not include_lost:
            raise SandboxNotFound()
        return Sandbox(
            sandbox_id=sandbox_id,
            tenant_id=data["tenant"],
            host_id=data["host"],
            template=data["template"],
            status=data["status"],
            created_at=float(data["created_at"]),
            network=_network(data.get("network")),
            lost_reason=data.get("lost_reason") or None,
        )

    def raw_sandbox(self, sandbox_id: str) -> dict[str, str]:
        return self._hgetall(keys.sandbox(sandbox_id))

    def bind_lifetime(self, sandbox_id: str, expires_at: float, session_id: str) -> None:
        """A session's sandbox lives exactly as long as the session: no idle reaping."""
        pipe = self.r.pipeline()
        pipe.hset(keys.sandbox(sandbox_id), "session", session_id)
        pipe.zrem(keys.idle_index(), sandbox_id)
        pipe.zadd(keys.expiry_index(), {sandbox_id: expires_at})
        pipe.execute()

    def touch(self, sandbox_id: str) -> None:
        """Reset the idle timer (any request naming the sandbox does this)."""
        self.r.zadd(keys.idle_index(), {sandbox_id: time.time()}, xx=True)

    def begin_delete(self, sandbox_id: str) -> bool:
        """Mark a sandbox as ending so no new request reaches it (and due for the reaper, which
        sends the destroy again if it is not done). False if absent or ending."""
        return bool(
            self._begin_delete(
                keys=[keys.sandbox(sandbox_id), keys.expiry_index()],
                args=[time.time(), sandbox_id],
            )
        )

    def retry_delete(self, sandbox_id: str) -> bool:
        """Count one more destroy of a sandbox being deleted, timed from now (``delete_tries``,
        ``deleting_at``). False when it is not being deleted (any more)."""
        return self._retry_delete(keys=[keys.sandbox(sandbox_id)], args=[time.time()]) is not None

    def retry_delete_if_due(
        self, sandbox_id: str, delay: Callable[[int], float], now: float | None = None
    ) -> tuple[int, float] | None:
        """For a sandbox being deleted whose last destroy was sent at least ``delay(tries)``
        seconds ago (``tries``: the destroys re-sent so far), count one more (retry_delete)
        and return ``(tries, seconds since the last one)``: the caller sends the destroy
        again. None when not due yet, or no longer being deleted."""
        now = time.time() if now is None else now
        data = self._hgetall(keys.sandbox(sandbox_id))
        tries = int(data.get("delete_tries") or 0)
        since = now - float(data.get("deleting_at") or 0)
        if since < delay(tries) or not self.retry_delete(sandbox_id):
            return None
        return tries, since

    def mark_lost(self, sandbox_id: str, reason: str, keep: float) -> bool:
        """Mark a running (or creating) sandbox ``lost``: its container stopped behind
        Paddock's back. Frees its host's capacity slot and its tenant's quota slot at once;
        the record stays ``keep`` seconds (then the reaper purges it). False when it is
        absent, being deleted or already lost."""
        data = self._hgetall(keys.sandbox(sandbox_id))
        if not data:
            return False
        return bool(
            self._mark_lost(
                keys=[
                    keys.sandbox(sandbox_id),
                    keys.host_sandboxes(data.get("host", "")),
                    keys.tenant_sandboxes(data.get("tenant", "")),
                    keys.idle_index(),
                    keys.expiry_index(),
                ],
                args=[time.time(), keep, reason, sandbox_id, data.get("host", "")],
            )
        )

    def purge_sandbox(self, sandbox_id: str) -> None:
        """Forget a sandbox and everything under it (processes, output, indexes)."""
        data = self._hgetall(keys.sandbox(sandbox_id))
        tenant = data.get("tenant")
        pipe = self.r.pipeline()
        self._drop_processes(
            keys=[
                keys.sandbox_processes(sandbox_id),
                keys.sandbox_running(sandbox_id),
                keys.sandbox_output_bytes(sandbox_id),
                # (no record, no tenant to give back to: the sandbox's own counter, deleted)
                keys.tenant_output_bytes(tenant)
                if tenant
                else keys.sandbox_output_bytes(sandbox_id),
            ],
            args=[
                keys.process(sandbox_id, ""),
                keys.output(sandbox_id, ""),
                keys.process_done(sandbox_id, ""),
            ],
            client=pipe,
        )
        pipe.delete(
            keys.sandbox(sandbox_id), keys.task_log(sandbox_id), keys.envd_processes(sandbox_id)
        )
        pipe.zrem(keys.idle_index(), sandbox_id)
        pipe.zrem(keys.expiry_index(), sandbox_id)
        if data.get("tenant"):
            pipe.srem(keys.tenant_sandboxes(data["tenant"]), sandbox_id)
        if data.get("host"):
            pipe.srem(keys.host_sandboxes(data["host"]), sandbox_id)
            self._reindex(args=[data["host"]], client=pipe)  # its slot is free in the index too
        pipe.execute()

    def due_sandboxes(self, idle_before: float, now: float) -> list[str]:
        """Sandboxes idle since before ``idle_before`` or past their maximum lifetime."""
        idle = self._zrange(keys.idle_index(), idle_before)
        expired = self._zrange(keys.expiry_index(), now)
        return sorted(set(idle) | set(expired))

    def sandbox_times(self, sandbox_id: str) -> tuple[float | None, float | None]:
        """(last request that named it, end of its maximum lifetime)."""
        last = self.r.zscore(keys.idle_index(), sandbox_id)
        expires = self.r.zscore(keys.expiry_index(), sandbox_id)
        return last, expires

    def tenant_sandboxes(self, tenant_id: str) -> list[Sandbox]:
        out = []
        for sandbox_id in self.tenant_sandbox_ids(tenant_id):
            try:
                out.append(self.get_sandbox(tenant_id, sandbox_id, include_ending=True))
            except SandboxNotFound:
                continue
        return sorted(out, key=lambda s: s.created_at)

    def tenant_sandbox_ids(self, tenant_id: str) -> list[str]:
        return sorted(self._smembers(keys.tenant_sandboxes(tenant_id)))

    def host_sandbox_ids(self, host_id: str) -> list[str]:
        return sorted(self._smembers(keys.host_sandboxes(host_id)))

    def log_task(
        self, pipe: redis.client.Pipeline, sandbox_id: str, task: str, host_id: str
    ) -> None:
        """Add to ``pipe`` the entry of a task the host ran for the sandbox (the last 1,000 are
        kept, for TASK_LOG_TTL after the last: a task that ended after its sandbox was removed
        leaves no log for longer): which host ran what."""
        entry = json.dumps({"task": task, "host": host_id, "at": time.time()})
        pipe.rpush(keys.task_log(sandbox_id), entry)
        pipe.ltrim(keys.task_log(sandbox_id), -1000, -1)
        pipe.expire(keys.task_log(sandbox_id), TASK_LOG_TTL)

    def task_log(self, sandbox_id: str) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.r.lrange(keys.task_log(sandbox_id), 0, -1)]

    # -- helpers -------------------------------------------------------------------------------
    def _hgetall(self, key: str) -> dict[str, str]:
        return read_hash(self.r, key)

    def _smembers(self, key: str) -> set[str]:
        return read_set(self.r, key)

    def _zrange(self, key: str, max_score: float) -> list[str]:
        return [text(x) for x in self.r.zrangebyscore(key, "-inf", max_score)]


def _network(raw: str | None) -> NetworkPolicy:
    try:
        return NetworkPolicy.from_json(json.loads(raw) if raw else None)
    except ValueError:
        return NO_NETWORK
