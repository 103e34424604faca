"""Directory watches in Redis: each watcher's record and its events, written by the sandbox's
host (workers/host/watches.py drains the supervisor's ``fs.watch`` into them) and read by the
web (web/api/envd/watching.py: the envd protocol's ``WatchDir`` stream and its polled
``CreateWatcher``/``GetWatcherEvents``/``RemoveWatcher``).

Keys (shared/keys.py): ``watch`` (a hash), ``watch_events`` (a stream), and two sorted sets
that count a sandbox's and a tenant's watchers, each scored by when it expires unread, so one
whose record expired stops counting by itself (as shared/slots.py does).

Bounds, against a sandbox that touches millions of files (its events are untrusted data),
in WatchLimits (from the settings: PADDOCK_SANDBOX_MAX_WATCHERS and the others there):

- at most ``sandbox_max`` watchers per sandbox and ``tenant_max`` per tenant (QuotaExceeded),
  checked and counted in one script, so concurrent creates never pass the limit together;
- the stream keeps at most ``max_events`` entries (an exact MAXLEN): the oldest unread go first;
- the host writes at most ``rate`` events a second per watch (``max_events`` at once), drops
  the rest and then writes one ``overflow`` entry saying how many it dropped;
- an event's name is at most MAX_NAME bytes of UTF-8 (a longer one is dropped and counted).

Every entry carries a sequence number (1, 2, ... per watch, counting the entries written), so
a reader that finds a gap knows the stream dropped entries before it read them. Lost events,
whichever way, reach the reader as one ``overflow`` event where they were lost (the envd wire
carries it as an event of type UNSPECIFIED with an empty name, which the SDKs skip): never
silently.

Lifetime: a watcher nobody reads for IDLE seconds expires (record, stream, counts), and its
host's thread, whose next write then finds no record, stops the watch. The host beats into the
record every second or so; one whose beat is older than STALE seconds while it is not ended
has lost its host (the worker died and did not come back in time): readers answer it gone.
The host ends a watch with an ``end`` entry (the directory went away) or ``fail`` (the watch
broke: the sandbox failed, too many directories...), with the reason.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from shared import keys
from shared.errors import QuotaExceeded
from shared.settings import Settings
from shared.slots import NOW_MS_LUA

EVENT_KINDS = ("create", "write", "remove", "rename", "chmod")
OVERFLOW = "overflow"  # events were lost here (name: how many, "" when not known)
END = "end"  # the watched directory went away (name: why)
FAIL = "fail"  # the watch broke (name: why)

MAX_NAME = 1024
IDLE = 600.0
STALE = 30.0

_ID = re.compile(r"[0-9a-f]{24}")

# KEYS: watch, sandbox_watches, tenant_watches. ARGV: watcher id, sandbox max, tenant max,
# idle ms, then field, value pairs of the record.  -> 1, or -1 / -2 (sandbox / tenant full)
_REGISTER = (
    NOW_MS_LUA
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[2]) then return -1 end
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[3]) then return -2 end
local idle = tonumber(ARGV[4])
for i = 5, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('HSET', KEYS[1], 'beat', now, 'state', 'starting', 'wseq', 0)
redis.call('PEXPIRE', KEYS[1], idle)
for i = 2, 3 do
  redis.call('ZADD', KEYS[i], now + idle, ARGV[1])
  redis.call('PEXPIRE', KEYS[i], idle + 1000)
end
return 1
"""
)

# The host's writes (and beats: no entries). KEYS: watch, watch_events. ARGV: maxlen, state,
# reason ("": unchanged), then (seq, kind, name, is_dir) per entry.  -> 0 when the watcher is
# gone or ended (the host stops), else 1. A stream is never made for a record that is gone.
_WRITE = (
    """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HGET', KEYS[1], 'state') == 'ended' then return 0 end
"""
    + NOW_MS_LUA
    + """
redis.call('HSET', KEYS[1], 'beat', now, 'state', ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'reason', ARGV[3]) end
local n = #ARGV
if n > 3 then
  for i = 4, n, 4 do
    redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[1], '*',
      's', ARGV[i], 'k', ARGV[i + 1], 'n', ARGV[i + 2], 'd', ARGV[i + 3])
  end
  redis.call('HSET', KEYS[1], 'wseq', ARGV[n - 3])
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
end
return 1
"""
)

# A reader's sign of life. KEYS: watch, watch_events, sandbox_watches, tenant_watches. ARGV:
# watcher id, idle ms, sandbox id, tenant id.  -> nil when gone or another sandbox's or
# tenant's (then nothing is touched), else {now ms, field, value, ...}
_TOUCH = (
    """
local owner = redis.call('HMGET', KEYS[1], 'sandbox', 'tenant')
if owner[1] ~= ARGV[3] or owner[2] ~= ARGV[4] then return false end
"""
    + NOW_MS_LUA
    + """
local idle = tonumber(ARGV[2])
redis.call('PEXPIRE', KEYS[1], idle)
redis.call('PEXPIRE', KEYS[2], idle)
for i = 3, 4 do
  redis.call('ZADD', KEYS[i], 'XX', now + idle, ARGV[1])
  redis.call('PEXPIRE', KEYS[i], idle + 1000)
end
local out = redis.call('HGETALL', KEYS[1])
table.insert(out, 1, tostring(now))
return out
"""
)

# The polled reader: the entries after the last call's, which are then dropped. KEYS: watch,
# watch_events. ARGV: count.  -> nil when gone, else {seq before, entries}
_CONSUME = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local cursor = redis.call('HGET', KEYS[1], 'cursor') or '0-0'
local prev = redis.call('HGET', KEYS[1], 'rseq') or '0'
local got = redis.call('XRANGE', KEYS[2], '(' .. cursor, '+', 'COUNT', ARGV[1])
if #got > 0 then
  local last = got[#got]
  redis.call('HSET', KEYS[1], 'cursor', last[1])
  local f = last[2]
  for i = 1, #f, 2 do
    if f[i] == 's' then redis.call('HSET', KEYS[1], 'rseq', f[i + 1]) end
  end
  redis.call('XTRIM', KEYS[2], 'MINID', last[1])
end
return {prev, got}
"""


@dataclass(frozen=True)
class WatchLimits:
    """The watchers' bounds (the defaults are the settings' own)."""

    sandbox_max: int = 16  # watchers per sandbox
    tenant_max: int = 64  # ... per tenant
    host_max: int = 512  # watches (threads) per host
    rate: float = 200.0  # events a second per watch, sustained; max_events at once
    max_events: int = 1000  # unread entries a watcher's stream keeps

    @classmethod
    def of(cls, settings: Settings) -> WatchLimits:
        return cls(
            settings.sandbox_max_watchers,
            settings.tenant_max_watchers,
            settings.host_max_watchers,
            settings.watch_events_per_second,
            settings.watch_max_events,
        )


def watcher_id() -> str:
    return secrets.token_hex(12)


def valid_id(text: str) -> bool:
    return bool(_ID.fullmatch(text))


@dataclass(frozen=True)
class Entry:
    """One entry of a watch's stream: an event (``kind`` in EVENT_KINDS, ``name`` relative
    to the watched directory), OVERFLOW, END or FAIL (``name``: how many were lost, or why)."""

    seq: int
    kind: str
    name: str = ""
    is_dir: bool = False


@dataclass(frozen=True)
class WatchEvent:
    """What a reader gets: ``kind`` in EVENT_KINDS, or OVERFLOW (events were lost here)."""

    kind: str
    name: str = ""
    is_dir: bool = False


@dataclass(frozen=True)
class Batch:
    """Events read, the last seq read, and how the watch ended (None: it goes on)."""

    events: list[WatchEvent] = field(default_factory=list)
    seq: int = 0
    ended: Entry | None = None


@dataclass(frozen=True)
class WatchRecord:
    watcher_id: str
    sandbox_id: str
    tenant_id: str
    host_id: str
    path: str
    recursive: bool
    state: str  # starting, running, ended
    reason: str
    beat_ms: int
    wseq: int  # the last seq the host wrote
    now_ms: int = 0  # Redis's clock when read (touch), else 0

    @property
    def stale(self) -> bool:
        """Its host stopped beating (read by ``touch`` only)."""
        return self.state != "ended" and self.now_ms - self.beat_ms > STALE * 1000

    @classmethod
    def of(cls, watcher_id: str, raw: dict[str, str], now_ms: int = 0) -> WatchRecord:
        return cls(
            watcher_id,
            raw.get("sandbox", ""),
            raw.get("tenant", ""),
            raw.get("host", ""),
            raw.get("path", ""),
            raw.get("recursive") == "1",
            raw.get("state", ""),
            raw.get("reason", ""),
            _int(raw.get("beat")),
            _int(raw.get("wseq")),
            now_ms,
        )


def decode(entries: Sequence[tuple[str, dict[str, str]]], seq: int) -> Batch:
    """The events of stream entries read after seq ``seq``: gaps (entries the stream dropped
    unread), OVERFLOW entries and malformed entries become one OVERFLOW event each (several in
    a row: one); entries at or before ``seq`` (a retried write) are skipped; reading stops at
    an END or FAIL entry (``ended``)."""
    events: list[WatchEvent] = []

    def lost() -> None:
        if not events or events[-1].kind != OVERFLOW:
            events.append(WatchEvent(OVERFLOW))

    for _, fields in entries:
        s = fields.get("s", "")
        if not s.isdigit():
            lost()
            continue
        n = int(s)
        if n <= seq:
            continue
        if n > seq + 1:
            lost()
        seq = n
        kind, name = fields.get("k", ""), fields.get("n", "")
        if kind in EVENT_KINDS and 0 < len(name.encode("utf-8", "replace")) <= MAX_NAME:
            events.append(WatchEvent(kind, name, fields.get("d") == "1"))
        elif kind in (END, FAIL):
            return Batch(events, seq, Entry(n, kind, name[:MAX_NAME]))
        else:
            lost()
    return Batch(events, seq)


class Watches:
    """The watchers' records and events in Redis (see the module docstring)."""

    def __init__(self, r: redis.Redis, limits: WatchLimits | None = None) -> None:
        self.r = r
        self.limits = limits or WatchLimits()
        self._register = r.register_script(_REGISTER)
        self._write = r.register_script(_WRITE)
        self._touch = r.register_script(_TOUCH)
        self._consume = r.register_script(_CONSUME)

    # -- the web -------------------------------------------------------------------------------
    def register(
        self,
        watcher_id: str,
        sandbox_id: str,
        tenant_id: str,
        host_id: str,
        path: str,
        recursive: bool,
    ) -> None:
        """A new watcher's record (state ``starting``), counted in its sandbox's and tenant's
        watchers. Raises QuotaExceeded when either has its most."""
        record = {
            "sandbox": sandbox_id,
            "tenant": tenant_id,
            "host": host_id,
            "path": path,
            "recursive": "1" if recursive else "0",
        }
        sandbox_max, tenant_max = self.limits.sandbox_max, self.limits.tenant_max
        args: list[Any] = [watcher_id, sandbox_max, tenant_max, _ms(IDLE)]
        for k, v in record.items():
            args += [k, v]
        got = int(
            self._register(
                keys=[
                    keys.watch(watcher_id),
                    keys.sandbox_watches(sandbox_id),
                    keys.tenant_watches(tenant_id),
                ],
                args=args,
            )
        )
        if got == -1:
            raise QuotaExceeded(
                f"watcher quota reached: at most {sandbox_max} directory watchers per sandbox"
                " (PADDOCK_SANDBOX_MAX_WATCHERS); remove one first",
                retry_after=5,
            )
        if got == -2:
            raise QuotaExceeded(
                f"watcher quota reached: at most {tenant_max} directory watchers per tenant"
                " (PADDOCK_TENANT_MAX_WATCHERS); remove one first",
                retry_after=5,
            )

    def touch(self, watcher_id: str, sandbox_id: str, tenant_id: str) -> WatchRecord | None:
        """The record (with Redis's clock, for ``stale``), its expiry pushed back by IDLE; None
        when there is none for this sandbox and tenant (another's is not touched)."""
        raw = self._touch(
            keys=[
                keys.watch(watcher_id),
                keys.watch_events(watcher_id),
                keys.sandbox_watches(sandbox_id),
                keys.tenant_watches(tenant_id),
            ],
            args=[watcher_id, _ms(IDLE), sandbox_id, tenant_id],
        )
        if not raw:
            return None
        now, *flat = [_text(x) for x in raw]
        fields = dict(zip(flat[::2], flat[1::2], strict=True))
        return WatchRecord.of(watcher_id, fields, _int(now))

    def consume(self, watcher_id: str) -> Batch | None:
        """The events since the last call (at most ``max_events`` entries), now dropped from
        the stream; None when the watcher is gone."""
        got = self._consume(
            keys=[keys.watch(watcher_id), keys.watch_events(watcher_id)],
            args=[self.limits.max_events],
        )
        if not got:
            return None
        prev, raw = got
        entries = [(_text(i), _fields(f)) for i, f in raw]
        return decode(entries, _int(prev))

    def read(self, watcher_id: str, after: str, seq: int, block_ms: int) -> tuple[str, Batch]:
        """The events written after stream id ``after`` (waiting up to ``block_ms`` for one)
        and after seq ``seq``: the last id read and the batch. Those read are dropped from the
        stream (one reader per watcher)."""
        stream = keys.watch_events(watcher_id)
        resp = self.r.xread({stream: after}, count=self.limits.max_events, block=block_ms)
        entries = [(_text(i), _fields(f)) for _, got in resp or [] for i, f in got]
        if not entries:
            return after, Batch(seq=seq)
        last = entries[-1][0]
        self.r.xtrim(stream, minid=last, approximate=False)
        return last, decode(entries, seq)

    def remove(self, watcher_id: str) -> None:
        """Forget the watcher (its host's thread stops at its next write)."""
        sandbox_id, tenant_id = (
            _text(v) if v else "" for v in self.r.hmget(keys.watch(watcher_id), "sandbox", "tenant")
        )
        pipe = self.r.pipeline()
        pipe.delete(keys.watch(watcher_id), keys.watch_events(watcher_id))
        if sandbox_id:
            pipe.zrem(keys.sandbox_watches(sandbox_id), watcher_id)
        if tenant_id:
            pipe.zrem(keys.tenant_watches(tenant_id), watcher_id)
        pipe.execute()

    # -- the host ------------------------------------------------------------------------------
    def record(self, watcher_id: str) -> WatchRecord | None:
        raw = self.r.hgetall(keys.watch(watcher_id))
        if not raw:
            return None
        return WatchRecord.of(watcher_id, {_text(k): _text(v) for k, v in raw.items()})

    def write(self, watcher_id: str, entries: Sequence[Entry] = (), reason: str = "") -> bool:
        """Append ``entries`` (none: a beat) and mark the watcher running, or ended when the
        last entry is END or FAIL (``reason`` then says why). False when the watcher is gone
        or ended already: its watch should stop."""
        ended = bool(entries) and entries[-1].kind in (END, FAIL)
        args: list[Any] = [self.limits.max_events, "ended" if ended else "running", reason]
        for e in entries:
            args += [e.seq, e.kind, e.name, "1" if e.is_dir else "0"]
        return bool(
            self._write(keys=[keys.watch(watcher_id), keys.watch_events(watcher_id)], args=args)
        )

    def of_sandbox(self, sandbox_id: str) -> list[str]:
        return [_text(m) for m in self.r.zrange(keys.sandbox_watches(sandbox_id), 0, -1)]

    def forget_sandbox(self, sandbox_id: str) -> None:
        """Forget every watcher of the sandbox (it is deleted or lost)."""
        for watcher in self.of_sandbox(sandbox_id):
            self.remove(watcher)
        self.r.delete(keys.sandbox_watches(sandbox_id))


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _int(value: Any) -> int:
    text = _text(value) if value is not None else ""
    return int(text) if text.isdigit() else 0


def _fields(raw: Any) -> dict[str, str]:
    """A stream entry's fields: a dict (XREAD) or a flat list (a script's XRANGE)."""
    if isinstance(raw, dict):
        return {_text(k): _text(v) for k, v in raw.items()}
    flat = [_text(x) for x in raw]
    return dict(zip(flat[::2], flat[1::2], strict=False))
