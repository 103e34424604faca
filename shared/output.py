"""Processes and their output: one hash per process, one Redis Stream of output per process.

The worker that runs a process appends entries; readers take them with XRANGE in bounded
batches, so what a reader holds at once never depends on how much a process printed. The stream
ends with one ``end`` entry carrying the exit code; the same moment is also marked on a tiny
``done`` stream, which is what waiters block on (they read no output while they wait).

Kept output is budgeted three ways: per process (the pump counts), per sandbox and per tenant
(counters in Redis, reserved atomically with each write by one Lua script). A budget that runs
out truncates the output with an explicit marker; it never fails the request or the process.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import groupby
from typing import Any

import redis

from shared import keys
from shared.errors import QuotaExceeded, WorkerTimeout
from shared.redisconn import REDIS_DOWN
from shared.redisio import read_hash, read_set, text
from shared.store import QUOTA_RETRY_AFTER

STDOUT = "o"
STDERR = "e"
END = "x"

# What a process's record costs in Redis besides its output (hash, end and done streams, set
# members), counted against the output budgets with its command so that a tenant cannot pile
# up finished processes without limit.
RECORD_BYTES = 2048
_BATCH = 256  # entries per read where the reader keeps everything (the agent's capped reads)
_STREAM_BATCH = 8  # entries per read when streaming: at most 8 chunks of 256 KiB held at once

# Register a process unless its sandbox already runs ``limit`` of them, or its record would not
# fit the sandbox's or the tenant's output budget: a record (its command included) is kept
# until the process is deleted, like its output, so it is paid for like output.
# KEYS: running set, process hash, sandbox's process set, sandbox counter, tenant counter,
# given-up key. ARGV: process id, limit, cmd, tenant, now, record bytes, sandbox cap, tenant cap
# -> 1 registered, 0 too many running, -1 sandbox budget full, -2 tenant budget full,
#    -3 the web already gave up on this start (KEYS[6], see _GIVE_UP)
_REGISTER = """
if redis.call('EXISTS', KEYS[6]) == 1 then return -3 end
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
local n = tonumber(ARGV[6])
if tonumber(redis.call('GET', KEYS[4]) or '0') + n > tonumber(ARGV[7]) then return -1 end
if tonumber(redis.call('GET', KEYS[5]) or '0') + n > tonumber(ARGV[8]) then return -2 end
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], 'cmd', ARGV[3], 'tenant', ARGV[4], 'status', 'starting',
           'started_at', ARGV[5], 'bytes', n)
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('INCRBY', KEYS[4], n)
redis.call('INCRBY', KEYS[5], n)
return 1
"""

# The web's start waited past its timeout: the process's status if a worker registered it
# (the start happened, or is happening), else mark it given up so that a start delivered late
# (a worker back from a restart, a task retried for its fair share) refuses to run it: the
# client was told it failed. KEYS: process hash, given-up key. ARGV: ttl seconds.
_GIVE_UP = """
local status = redis.call('HGET', KEYS[1], 'status')
if status then return status end
redis.call('SET', KEYS[2], '1', 'EX', ARGV[1])
return ''
"""

# Append one chunk if the sandbox's and the tenant's budgets have room for all of it; a chunk
# of 0 bytes (Paddock's own notice) is outside the budgets and always stored.
# KEYS: output stream, process hash, sandbox counter, tenant counter
# ARGV: bytes, sandbox cap, tenant cap, seq, resume ("" none: where a restarted worker takes the
# output up again, kept with what it follows), then (kind, text, ts) per entry
# Returns {1, room left} when stored (or dropped because the process was forgotten meanwhile,
# or already stored: a write carries the writer's next seq (0: none), and one whose seq is not
# past the last stored one was stored before its reply was lost, so a retry never doubles it),
# {0, room, which budget} when it does not fit (nothing stored).
_APPEND = """
if redis.call('EXISTS', KEYS[2]) == 0 then return {1, 0} end
local seq = tonumber(ARGV[4])
if seq > 0 then
  if tonumber(redis.call('HGET', KEYS[2], 'wseq') or '0') >= seq then return {1, 0} end
end
local n = tonumber(ARGV[1])
local room = 0
if n > 0 then
  local sroom = tonumber(ARGV[2]) - tonumber(redis.call('GET', KEYS[3]) or '0')
  local troom = tonumber(ARGV[3]) - tonumber(redis.call('GET', KEYS[4]) or '0')
  local which = 'sandbox'
  room = sroom
  if troom < sroom then room, which = troom, 'tenant' end
  if n > room then
    if room < 0 then room = 0 end
    return {0, room, which}
  end
  redis.call('INCRBY', KEYS[3], n)
  redis.call('INCRBY', KEYS[4], n)
  redis.call('HINCRBY', KEYS[2], 'bytes', n)
  room = room - n
end
if seq > 0 then redis.call('HSET', KEYS[2], 'wseq', seq) end
if ARGV[5] ~= '' then redis.call('HSET', KEYS[2], 'resume', ARGV[5]) end
for i = 6, #ARGV, 3 do
  redis.call('XADD', KEYS[1], '*', 'k', ARGV[i], 'l', ARGV[i + 1], 't', ARGV[i + 2])
end
return {1, room}
"""

# Mark a process ended, once: the end entry, its record, the running set and the done stream
# that waiters block on. A retry after a lost reply, or a process already forgotten, changes
# nothing. KEYS: output stream, process hash, running set, done stream
# ARGV: process id, exit code ("" unknown), oom ("1" or ""), now
_FINISH = """
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
if redis.call('HGET', KEYS[2], 'status') == 'exited' then return 0 end
redis.call('XADD', KEYS[1], '*', 'k', 'x', 'c', ARGV[2], 'm', ARGV[3])
redis.call('HSET', KEYS[2], 'status', 'exited', 'exit_code', ARGV[2], 'ended_at', ARGV[4],
           'oom', ARGV[3])
redis.call('SREM', KEYS[3], ARGV[1])
redis.call('XADD', KEYS[4], '*', 'c', ARGV[2])
return 1
"""

# Forget one process and give its bytes back to the sandbox's and the tenant's budgets.
# KEYS: process hash, output stream, done stream, process set, running set, sandbox counter,
#       tenant counter; ARGV: process id
_FORGET = """
local n = tonumber(redis.call('HGET', KEYS[1], 'bytes') or '0')
if n > 0 then
  redis.call('DECRBY', KEYS[6], n)
  redis.call('DECRBY', KEYS[7], n)
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('SREM', KEYS[4], ARGV[1])
redis.call('SREM', KEYS[5], ARGV[1])
return n
"""


@dataclass(frozen=True)
class Line:
    """Output read back: one line. When written, ``text`` may hold several lines joined by
    newlines (a chunk read at once); readers split them again."""

    kind: str  # STDOUT or STDERR
    text: str
    ts_ns: int


@dataclass(frozen=True)
class Budgets:
    """Caps on kept output, in bytes."""

    process: int
    sandbox: int
    tenant: int


_NO_BUDGETS = Budgets(0, 0, 0)  # a notice's: 0 bytes are not checked against any


@dataclass(frozen=True)
class Refused:
    """A write the sandbox's or tenant's budget had no room for: ``room`` bytes would fit."""

    room: int
    budget: str  # "sandbox" or "tenant"


@dataclass
class Output:
    stdout: list[Line] = field(default_factory=list)
    stderr: list[Line] = field(default_factory=list)
    finished: bool = False
    exit_code: int | None = None
    oom_killed: bool = False
    last_id: str = "0-0"


@dataclass(frozen=True)
class Entry:
    """One stream entry as read: ``kind`` STDOUT/STDERR with its lines, or END."""

    kind: str
    lines: list[str]
    ts_ns: int = 0
    exit_code: int | None = None
    oom_killed: bool = False


class ProcessLog:
    """Process records and output streams. Takes the Redis client; opens nothing itself."""

    def __init__(self, r: redis.Redis) -> None:
        self.r = r
        self._register = r.register_script(_REGISTER)
        self._append = r.register_script(_APPEND)
        self._forget = r.register_script(_FORGET)
        self._finish = r.register_script(_FINISH)
        self._give_up = r.register_script(_GIVE_UP)

    # -- records -----------------------------------------------------------------------------
    def register(
        self,
        sandbox_id: str,
        process_id: str,
        cmd: str,
        tenant_id: str = "",
        limit: int = 0,
        budgets: Budgets | None = None,
    ) -> None:
        """Record a new process of the sandbox. ``limit`` (0: none) caps the sandbox's running
        processes; the record (RECORD_BYTES plus the command) counts against ``budgets``.

        Raises QuotaExceeded when the sandbox already runs ``limit`` processes, or when the
        sandbox's or the tenant's kept output leaves no room for the record; WorkerTimeout when
        the web already gave up on this start (`give_up`)."""
        unlimited = 1 << 62
        got = int(
            self._register(
                keys=[
                    keys.sandbox_running(sandbox_id),
                    keys.process(sandbox_id, process_id),
                    keys.sandbox_processes(sandbox_id),
                    keys.sandbox_output_bytes(sandbox_id),
                    keys.tenant_output_bytes(tenant_id),
                    keys.process_given_up(sandbox_id, process_id),
                ],
                args=[
                    process_id,
                    limit or unlimited,
                    cmd,
                    tenant_id,
                    time.time(),
                    RECORD_BYTES + len(cmd.encode()),
                    budgets.sandbox if budgets else unlimited,
                    budgets.tenant if budgets else unlimited,
                ],
            )
        )
        if got == -3:
            raise WorkerTimeout("the start came too late: its caller had stopped waiting")
        if got == 0:
            raise QuotaExceeded(
                f"process quota reached: {limit} running processes per sandbox "
                "(PADDOCK_SANDBOX_MAX_PROCESSES); wait for one to end or stop one",
                retry_after=1,
            )
        if got < 0:
            which, setting = (
                ("sandbox", "PADDOCK_SANDBOX_OUTPUT_BYTES")
                if got == -1
                else ("tenant", "PADDOCK_TENANT_OUTPUT_BYTES")
            )
            raise QuotaExceeded(
                f"output quota reached: the {which}'s kept processes and output fill its budget "
                f"({setting}); delete finished processes (DELETE .../processes/ID) first",
                retry_after=QUOTA_RETRY_AFTER,
            )

    def give_up(self, sandbox_id: str, process_id: str, ttl: float) -> str | None:
        """After a start's reply did not come: the process's status (``starting``, ``running``
        or ``exited``) if a worker registered it, else None, and no worker will start it from
        now on (for ``ttl`` seconds, longer than any delivery of the start can be late)."""
        got = self._give_up(
            keys=[
                keys.process(sandbox_id, process_id),
                keys.process_given_up(sandbox_id, process_id),
            ],
            args=[max(1, round(ttl))],
        )
        return text(got) or None

    def set_fields(self, sandbox_id: str, process_id: str, **values: str | int | float) -> None:
        mapping: dict[str | bytes, str | int | float] = {k: v for k, v in values.items()}
        self.r.hset(keys.process(sandbox_id, process_id), mapping=mapping)

    def exists(self, sandbox_id: str, process_id: str) -> bool:
        return bool(self.r.exists(keys.process(sandbox_id, process_id)))

    def info(self, sandbox_id: str, process_id: str) -> dict[str, str]:
        return read_hash(self.r, keys.process(sandbox_id, process_id))

    def process_ids(self, sandbox_id: str) -> list[str]:
        return sorted(read_set(self.r, keys.sandbox_processes(sandbox_id)))

    def running_count(self, sandbox_id: str) -> int:
        return int(self.r.scard(keys.sandbox_running(sandbox_id)))

    def forget(self, sandbox_id: str, process_id: str) -> None:
        """Delete the process and its output, giving its bytes back to the budgets."""
        tenant = self.r.hget(keys.process(sandbox_id, process_id), "tenant")
        self._forget(
            keys=[
                keys.process(sandbox_id, process_id),
                keys.output(sandbox_id, process_id),
                keys.process_done(sandbox_id, process_id),
                keys.sandbox_processes(sandbox_id),
                keys.sandbox_running(sandbox_id),
                keys.sandbox_output_bytes(sandbox_id),
                keys.tenant_output_bytes(text(tenant) if tenant else ""),
            ],
            args=[process_id],
        )

    # -- writing output ----------------------------------------------------------------------
    def append(self, sandbox_id: str, process_id: str, lines: Iterable[Line]) -> None:
        """Store lines outside any budget (Paddock's own short notices). Consecutive lines of
        one stream read at one instant share an entry (joined by newlines, which a line never
        contains): one XADD per chunk read, not per line."""
        key = keys.output(sandbox_id, process_id)
        pipe = self.r.pipeline(transaction=False)
        for kind, ts, joined in _entries(lines):
            pipe.xadd(key, {"k": kind, "l": joined, "t": ts})
        if len(pipe):
            pipe.execute()

    def notice(
        self, sandbox_id: str, process_id: str, tenant_id: str, lines: Iterable[Line], seq: int
    ) -> None:
        """Store Paddock's own notice outside the budgets, once for ``seq`` (> 0): safe to
        send again after a lost reply (see append_budgeted)."""
        self.append_budgeted(sandbox_id, process_id, tenant_id, lines, 0, _NO_BUDGETS, seq)

    def append_budgeted(
        self,
        sandbox_id: str,
        process_id: str,
        tenant_id: str,
        lines: Iterable[Line],
        size: int,
        budgets: Budgets,
        seq: int = 0,
        resume: str = "",
    ) -> Refused | None:
        """Store lines worth ``size`` bytes if the sandbox's and the tenant's budgets both have
        room for all of them; otherwise store nothing and say how much would fit.

        ``seq`` (> 0, growing with each write of the process) makes the write safe to send
        again when its reply was lost (Redis restarted): a seq already stored is not stored
        twice. ``resume`` is kept in the record with the lines (workers/host/runner.py
        Resume)."""
        args: list[Any] = [size, budgets.sandbox, budgets.tenant, seq, resume]
        for kind, ts, joined in _entries(lines):
            args += [kind, joined, ts]
        if len(args) == 5:
            return None
        got = self._append(
            keys=[
                keys.output(sandbox_id, process_id),
                keys.process(sandbox_id, process_id),
                keys.sandbox_output_bytes(sandbox_id),
                keys.tenant_output_bytes(tenant_id),
            ],
            args=args,
        )
        if int(got[0]) == 1:
            return None
        return Refused(room=int(got[1]), budget=text(got[2]))

    def finish(
        self, sandbox_id: str, process_id: str, exit_code: int | None, oom_killed: bool = False
    ) -> None:
        """Mark the process ended with its end entry; a no-op when it already ended or was
        forgotten, so it is safe to send again after a lost reply."""
        code = "" if exit_code is None else str(exit_code)
        oom = "1" if oom_killed else ""
        self._finish(
            keys=[
                keys.output(sandbox_id, process_id),
                keys.process(sandbox_id, process_id),
                keys.sandbox_running(sandbox_id),
                keys.process_done(sandbox_id, process_id),
            ],
            args=[process_id, code, oom, time.time()],
        )

    # -- reading output, streamed ------------------------------------------------------------
    def last_id(self, sandbox_id: str, process_id: str) -> str:
        """The id of the newest entry so far ("0-0" when none): the end of a snapshot."""
        newest = self.r.xrevrange(keys.output(sandbox_id, process_id), count=1)
        return text(newest[0][0]) if newest else "0-0"

    def entries(self, sandbox_id: str, process_id: str, upto: str) -> Iterator[Entry]:
        """Every entry up to and including id ``upto``, read a few at a time."""
        if upto == "0-0":
            return
        key = keys.output(sandbox_id, process_id)
        start = "-"
        while True:
            batch = self.r.xrange(key, min=start, max=upto, count=_STREAM_BATCH)
            for entry_id, fields in batch:
                start = "(" + text(entry_id)
                yield _entry(fields)
            if len(batch) < _STREAM_BATCH:
                return

    def wait_done(
        self,
        sandbox_id: str,
        process_id: str,
        timeout: float,
        tick: Callable[[], bool] | None = None,
    ) -> bool:
        """Block until the process has ended (True) or ``timeout`` seconds pass or it is
        forgotten (False), reading none of its output. ``tick`` runs every few seconds; when it
        returns False the wait ends (False): nobody is waiting any more.

        Redis going away does not end the wait early nor make it outlast ``timeout``: it waits
        for Redis within the same deadline (the process's end is written once Redis is back).
        """
        done = keys.process_done(sandbox_id, process_id)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            block_ms = max(1, int(min(max(remaining, 0.001), 10.0) * 1000))
            try:
                if self.r.xread({done: "0-0"}, count=1, block=block_ms):
                    return True
                if tick is not None and not tick():
                    return False
                if remaining <= 0 or not self.exists(sandbox_id, process_id):
                    return False
            except REDIS_DOWN:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                time.sleep(min(1.0, left))

    # -- reading output, whole (bounded by the per-process cap) ------------------------------
    def read(self, sandbox_id: str, process_id: str) -> Output:
        """Everything written so far."""
        out = Output()
        key = keys.output(sandbox_id, process_id)
        start = "-"
        while True:
            entries = self.r.xrange(key, min=start, count=_BATCH)
            _apply(out, entries)
            if len(entries) < _BATCH:
                return out
            start = "(" + out.last_id

    def read_new(self, sandbox_id: str, process_id: str, after: str, block_ms: int) -> Output:
        """Only what was written after stream id ``after`` (waiting up to ``block_ms`` for it);
        ``last_id`` of the result is where to continue."""
        out = Output(last_id=after)
        resp = self.r.xread(
            {keys.output(sandbox_id, process_id): after}, count=_BATCH, block=block_ms
        )
        for _key, entries in resp or []:
            _apply(out, entries)
        return out

    def wait(
        self,
        sandbox_id: str,
        process_id: str,
        timeout: float,
        tick: Callable[[], bool] | None = None,
    ) -> Output:
        """Everything written until the process ends, or until ``timeout`` seconds pass."""
        self.wait_done(sandbox_id, process_id, timeout, tick)
        return self.read(sandbox_id, process_id)


def _entries(lines: Iterable[Line]) -> Iterator[tuple[str, int, str]]:
    for (kind, ts), group in groupby(lines, key=lambda x: (x.kind, x.ts_ns)):
        yield kind, ts, "\n".join(x.text for x in group)


def _entry(fields: dict[Any, Any]) -> Entry:
    f = {text(k): text(v) for k, v in fields.items()}
    kind = f.get("k", "")
    if kind == END:
        code = int(f["c"]) if f.get("c") else None
        return Entry(END, [], exit_code=code, oom_killed=f.get("m") == "1")
    return Entry(kind, f.get("l", "").split("\n"), int(f.get("t", 0)))


def _apply(out: Output, entries: list[Any]) -> None:
    for entry_id, fields in entries:
        out.last_id = text(entry_id)
        e = _entry(fields)
        if e.kind == END:
            out.finished = True
            out.exit_code = e.exit_code
            out.oom_killed = e.oom_killed
        elif e.kind in (STDOUT, STDERR):
            target = out.stdout if e.kind == STDOUT else out.stderr
            target.extend(Line(e.kind, t, e.ts_ns) for t in e.lines)
