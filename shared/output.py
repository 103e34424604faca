"""Processes and their output: one hash per process, one Redis Stream of output per process.

The worker that runs a process appends its output as it comes, raw bytes, one entry per chunk
read (``k`` kind, ``d`` bytes, ``t`` ns); readers take entries with XRANGE in bounded batches,
so what a reader holds at once never depends on how much a process printed. Lines exist only
for the readers that answer with lines (E2B, the agent): `LineReader` splits the chunks as it
reads them. The stream ends with one ``end`` entry carrying the exit code; the same moment is
also marked on a tiny ``done`` stream, which is what waiters block on (they read no output
while they wait).

Kept output is budgeted three ways: per process (the pump counts), per sandbox and per tenant
(counters in Redis, reserved atomically with each write by one Lua script). A budget that runs
out truncates the output with an explicit marker; it never fails the request or the process.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import redis

from shared import keys
from shared.errors import QuotaExceeded, WorkerTimeout
from shared.redisconn import REDIS_DOWN
from shared.redisio import read_hash, read_set, text
from shared.store import QUOTA_RETRY_AFTER

STDOUT = "o"
STDERR = "e"
PTY = "p"  # a terminal's output (stdout and stderr in one); line readers take it as stdout
END = "x"

# A chunk of Paddock's own (field ``n``) is a whole line, and the unfinished lines before it
# end there: NOTE keeps them (the process said them), CUT drops them (output was truncated: a
# cut line must not pass for a real one).
NOTE = "1"
CUT = "c"

MAX_LINE = 1 << 20  # a "line" longer than this is read as several lines

# What a process's record costs in Redis besides its output (hash, end and done streams, set
# members), counted against the output budgets with its command so that a tenant cannot pile
# up finished processes without limit.
RECORD_BYTES = 2048
# What one stored output entry costs in Redis besides its bytes (its id, fields, timestamp
# and share of the stream's nodes and their allocation: 30 to 70 bytes measured on Redis 7,
# depending on the entries' sizes), charged with them: a process printing a byte at a time
# must not keep 30 times the budget of its bytes. Generous: real output comes in chunks of
# KiBs, for which it is nothing.
ENTRY_BYTES = 128
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
# output up again, kept with what it follows), then (kind, data, ts, notice) per entry
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
for i = 6, #ARGV, 4 do
  if ARGV[i + 3] == '' then
    redis.call('XADD', KEYS[1], '*', 'k', ARGV[i], 'd', ARGV[i + 1], 't', ARGV[i + 2])
  else
    redis.call('XADD', KEYS[1], '*', 'k', ARGV[i], 'd', ARGV[i + 1], 't', ARGV[i + 2],
               'n', ARGV[i + 3])
  end
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

# The last output and the end in one script (one round trip): _APPEND, then _FINISH when the
# append was stored (or was stored before: a repeat). A refused append finishes nothing: the
# caller stores what fits and says why before the end.
# KEYS: output stream, process hash, sandbox counter, tenant counter, running set, done stream
# ARGV: _APPEND's, then _FINISH's four (process id, exit code, oom, now)
_APPEND_FINISH = (
    "local last = #ARGV - 4\n"
    + "local function append()\n"
    + _APPEND.replace("#ARGV", "last")
    + "end\n"
    + "local function finish()\n"
    + _FINISH.replace("KEYS[3]", "KEYS[5]")
    .replace("KEYS[4]", "KEYS[6]")
    .replace("ARGV[1]", "ARGV[last + 1]")
    .replace("ARGV[2]", "ARGV[last + 2]")
    .replace("ARGV[3]", "ARGV[last + 3]")
    .replace("ARGV[4]", "ARGV[last + 4]")
    + "end\n"
    + "local got = append()\n"
    + "if got[1] == 1 then finish() end\n"
    + "return got\n"
)

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


class Piece(NamedTuple):
    """Output as written: bytes of one kind, as the process printed them (any bytes, split
    anywhere), or one line of Paddock's own (``notice`` NOTE or CUT, see `paddock_line`)."""

    kind: str  # STDOUT, STDERR or PTY
    data: bytes
    ts_ns: int
    notice: str = ""


def paddock_line(text: str, cut: bool = False) -> Piece:
    """Paddock's own line on stderr (``[paddock] ...``); ``cut``: it says output was cut."""
    return Piece(STDERR, text.encode() + b"\n", time.time_ns(), CUT if cut else NOTE)


@dataclass(frozen=True)
class Chunk:
    """One stream entry as stored, for byte-level readers (envd): output bytes as they came,
    Paddock's own lines among them, or the END entry."""

    id: str  # the stream entry id
    kind: str  # STDOUT, STDERR, PTY or END
    data: bytes = b""
    exit_code: int | None = None
    oom_killed: bool = False


@dataclass(frozen=True)
class Line:
    """Output read back: one line (without its newline)."""

    kind: str  # STDOUT or STDERR (a PTY's lines are read as STDOUT)
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
class End:
    """How a process ended, for ``ProcessLog.append_budgeted(end=...)``."""

    exit_code: int | None
    oom_killed: bool = False


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
    """Output read back as lines (`LineReader`): ``kind`` STDOUT/STDERR with lines completed
    by one chunk, all stamped with its time, or END."""

    kind: str
    lines: list[str]
    ts_ns: int = 0
    exit_code: int | None = None
    oom_killed: bool = False


class EntryReader(Protocol):
    """A process's output as lines (`ProcessLog.entries` of one snapshot): of ``kind``
    (STDOUT or STDERR) only when given, END always."""

    def __call__(self, kind: str | None = None) -> Iterator[Entry]: ...


class ProcessLog:
    """Process records and output streams. Takes the Redis client; opens nothing itself."""

    def __init__(self, r: redis.Redis) -> None:
        self.r = r
        self._register = r.register_script(_REGISTER)
        self._append = r.register_script(_APPEND)
        self._forget = r.register_script(_FORGET)
        self._finish = r.register_script(_FINISH)
        self._append_finish = r.register_script(_APPEND_FINISH)
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
        extra: int = 0,
    ) -> None:
        """Record a new process of the sandbox. ``limit`` (0: none) caps the sandbox's running
        processes; the record (RECORD_BYTES plus the command, plus ``extra`` bytes of other
        fields its writer keeps in it) counts against ``budgets``.

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
                    RECORD_BYTES + len(cmd.encode()) + max(0, extra),
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

    def set_fields(
        self,
        sandbox_id: str,
        process_id: str,
        pipe: redis.client.Pipeline | None = None,
        **values: str | int | float,
    ) -> None:
        """Set fields of the process's record, now or with ``pipe``."""
        mapping: dict[str | bytes, str | int | float] = {k: v for k, v in values.items()}
        (pipe if pipe is not None else self.r).hset(
            keys.process(sandbox_id, process_id), mapping=mapping
        )

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
    def append(self, sandbox_id: str, process_id: str, pieces: Iterable[Piece]) -> None:
        """Store pieces outside any budget (Paddock's own short notices), one entry each."""
        key = keys.output(sandbox_id, process_id)
        pipe = self.r.pipeline(transaction=False)
        for p in pieces:
            fields: dict[str | bytes, str | bytes | int] = {"k": p.kind, "d": p.data, "t": p.ts_ns}
            if p.notice:
                fields["n"] = p.notice
            pipe.xadd(key, fields)
        if len(pipe):
            pipe.execute()

    def notice(
        self, sandbox_id: str, process_id: str, tenant_id: str, pieces: Iterable[Piece], seq: int
    ) -> None:
        """Store Paddock's own notice outside the budgets, once for ``seq`` (> 0): safe to
        send again after a lost reply (see append_budgeted)."""
        self._add(sandbox_id, process_id, tenant_id, list(pieces), 0, _NO_BUDGETS, seq, "")

    def append_budgeted(
        self,
        sandbox_id: str,
        process_id: str,
        tenant_id: str,
        pieces: Iterable[Piece],
        size: int,
        budgets: Budgets,
        seq: int = 0,
        resume: str = "",
        end: End | None = None,
    ) -> Refused | None:
        """Store pieces worth ``size`` bytes, one entry each, if the sandbox's and the tenant's
        budgets both have room for all of them; otherwise store nothing and say how much
        would fit (``room``: bytes of as many pieces). Each entry is charged ENTRY_BYTES
        besides its bytes. With ``end``, the process is marked ended too (``finish``), in the
        same round trip, once the pieces are stored (not when they were refused).

        ``seq`` (> 0, growing with each write of the process) makes the write safe to send
        again when its reply was lost (Redis restarted): a seq already stored is not stored
        twice. ``resume`` is kept in the record with the pieces (workers/host/runner.py
        Resume)."""
        written = list(pieces)
        overhead = ENTRY_BYTES * len(written)
        refused = self._add(
            sandbox_id, process_id, tenant_id, written, size + overhead, budgets, seq, resume, end
        )
        if refused is None:
            return None
        return Refused(max(0, refused.room - overhead), refused.budget)

    def _add(
        self,
        sandbox_id: str,
        process_id: str,
        tenant_id: str,
        pieces: list[Piece],
        charge: int,
        budgets: Budgets,
        seq: int,
        resume: str,
        end: End | None = None,
    ) -> Refused | None:
        """One _APPEND (``charge`` 0: outside the budgets), or _APPEND_FINISH with ``end``;
        Refused.room as the script says."""
        args: list[Any] = [charge, budgets.sandbox, budgets.tenant, seq, resume]
        for p in pieces:
            args += [p.kind, p.data, p.ts_ns, p.notice]
        if len(args) == 5:
            if end is not None:
                self.finish(sandbox_id, process_id, end.exit_code, end.oom_killed)
            return None
        stored = [
            keys.output(sandbox_id, process_id),
            keys.process(sandbox_id, process_id),
            keys.sandbox_output_bytes(sandbox_id),
            keys.tenant_output_bytes(tenant_id),
        ]
        if end is None:
            got = self._append(keys=stored, args=args)
        else:
            got = self._append_finish(
                keys=[
                    *stored,
                    keys.sandbox_running(sandbox_id),
                    keys.process_done(sandbox_id, process_id),
                ],
                args=[*args, *self._finish_args(process_id, end.exit_code, end.oom_killed)],
            )
        if int(got[0]) == 1:
            return None
        return Refused(room=int(got[1]), budget=text(got[2]))

    def finish(
        self, sandbox_id: str, process_id: str, exit_code: int | None, oom_killed: bool = False
    ) -> None:
        """Mark the process ended with its end entry; a no-op when it already ended or was
        forgotten, so it is safe to send again after a lost reply."""
        self._finish(
            keys=[
                keys.output(sandbox_id, process_id),
                keys.process(sandbox_id, process_id),
                keys.sandbox_running(sandbox_id),
                keys.process_done(sandbox_id, process_id),
            ],
            args=self._finish_args(process_id, exit_code, oom_killed),
        )

    @staticmethod
    def _finish_args(process_id: str, exit_code: int | None, oom_killed: bool) -> list[Any]:
        code = "" if exit_code is None else str(exit_code)
        return [process_id, code, "1" if oom_killed else "", time.time()]

    # -- reading output, streamed ------------------------------------------------------------
    def last_id(self, sandbox_id: str, process_id: str) -> str:
        """The id of the newest entry so far ("0-0" when none): the end of a snapshot."""
        newest = self.r.xrevrange(keys.output(sandbox_id, process_id), count=1)
        return text(newest[0][0]) if newest else "0-0"

    def snapshot(
        self, sandbox_id: str, process_id: str, pipe: redis.client.Pipeline | None = None
    ) -> Snapshot:
        """The output so far, to be read (``entries``) as it is now: its first entries, and
        where it ends. One read when the output is short (the first entries are all of it),
        else one more for the newest id. ``pipe``: commands of the caller's to send in the
        same round trip, before the read (their answers are not kept)."""
        key = keys.output(sandbox_id, process_id)
        if pipe is None:
            got = self.r.xrange(key, count=_STREAM_BATCH)
        else:
            got = pipe.xrange(key, count=_STREAM_BATCH).execute()[-1]
        head = [_stored(entry_id, fields) for entry_id, fields in got]
        if len(head) < _STREAM_BATCH:
            return Snapshot(head[-1].chunk.id if head else "0-0", head, complete=True)
        return Snapshot(self.last_id(sandbox_id, process_id), head, complete=False)

    def entries(
        self,
        sandbox_id: str,
        process_id: str,
        upto: str | Snapshot,
        kind: str | None = None,
    ) -> Iterator[Entry]:
        """The lines of every entry up to and including id ``upto`` (or of the snapshot), of
        ``kind`` only (STDOUT or STDERR) when given (END always), read a few entries at a
        time. A line still unfinished at the end is left out unless the process ended
        there."""
        snap = upto if isinstance(upto, Snapshot) else Snapshot(upto, [], complete=False)
        if snap.upto == "0-0":
            return
        key = keys.output(sandbox_id, process_id)
        yield from LineReader(kind).entries(self._scan_from(key, snap))

    def _scan_from(self, key: str, snap: Snapshot) -> Iterator[_Stored]:
        """The snapshot's entries: its head, then (unless that was all) the rest from Redis."""
        yield from snap.head
        if snap.complete:
            return
        after = "(" + snap.head[-1].chunk.id if snap.head else "-"
        yield from self._scan(key, snap.upto, _STREAM_BATCH, after)

    def chunks(
        self, sandbox_id: str, process_id: str, after: str, block_ms: int, count: int = 64
    ) -> list[Chunk]:
        """Up to ``count`` entries after stream id ``after`` ("0-0": from the start) as they
        were stored, waiting up to ``block_ms`` (0: not at all) while there are none yet."""
        key = keys.output(sandbox_id, process_id)
        count = max(1, count)
        if block_ms > 0:
            resp = self.r.xread({key: after}, count=count, block=block_ms)
        else:  # XREAD's BLOCK 0 would wait forever
            resp = self.r.xread({key: after}, count=count)
        return [
            _stored(entry_id, fields).chunk for _key, got in resp or [] for entry_id, fields in got
        ]

    def _scan(self, key: str, upto: str, batch: int, start: str = "-") -> Iterator[_Stored]:
        """The stream's entries from ``start`` (an XRANGE bound) up to and including id
        ``upto`` ("+": all), ``batch`` at a time."""
        while True:
            got = self.r.xrange(key, min=start, max=upto, count=batch)
            for entry_id, fields in got:
                stored = _stored(entry_id, fields)
                start = "(" + stored.chunk.id
                yield stored
            if len(got) < batch:
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
        """Every line written so far (an unfinished last line once the process ended)."""
        out = Output()
        scan = self._scan(keys.output(sandbox_id, process_id), "+", _BATCH)
        _apply(out, LineReader().entries(_noting(out, scan)))
        return out

    def read_new(
        self, sandbox_id: str, process_id: str, after: str, block_ms: int, lines: LineReader
    ) -> Output:
        """The lines completed by what was written after stream id ``after`` (waiting up to
        ``block_ms`` for it); ``last_id`` of the result is where to continue, with the same
        ``lines``, which holds the unfinished lines between reads."""
        out = Output(last_id=after)
        resp = self.r.xread(
            {keys.output(sandbox_id, process_id): after}, count=_BATCH, block=block_ms
        )
        got = [
            _stored(entry_id, fields) for _key, batch in resp or [] for entry_id, fields in batch
        ]
        _apply(out, lines.entries(_noting(out, got)))
        return out


class _Stored(NamedTuple):
    chunk: Chunk
    ts_ns: int
    notice: str


@dataclass
class Snapshot:
    """A process's output as it was at one moment (ProcessLog.snapshot): it ends at id
    ``upto`` ("0-0": nothing yet); ``head`` holds its first entries, all of them when
    ``complete``."""

    upto: str
    head: list[_Stored]
    complete: bool

    @property
    def size(self) -> int:
        """Bytes of output in the head."""
        return sum(len(stored.chunk.data) for stored in self.head)


def _stored(entry_id: Any, fields: dict[Any, Any]) -> _Stored:
    """One entry as read from Redis. An entry of a worker from before chunks were stored as
    they came holds whole lines (``l``, joined by newlines): read as those lines' bytes."""
    f = {text(k): v for k, v in fields.items()}
    eid = text(entry_id)
    kind = text(f.get("k", b""))
    if kind == END:
        code = text(f.get("c", b""))
        oom = text(f.get("m", b"")) == "1"
        end = Chunk(eid, END, exit_code=int(code) if code else None, oom_killed=oom)
        return _Stored(end, 0, "")
    data = f.get("d")
    if data is None:
        old = f.get("l", b"")
        data = (old if isinstance(old, bytes) else old.encode()) + b"\n"
    elif isinstance(data, str):
        data = data.encode()
    return _Stored(Chunk(eid, kind, data), int(f.get("t") or 0), text(f.get("n", b"")))


def _noting(out: Output, stored: Iterable[_Stored]) -> Iterator[_Stored]:
    """``stored``, noting in ``out`` the id of each entry as it is read."""
    for entry in stored:
        out.last_id = entry.chunk.id
        yield entry


class _Splitter:
    """One stream's lines, from its chunks in order: the bytes after the last newline wait for
    the next chunk (a line may span many), and a line longer than MAX_LINE is cut."""

    __slots__ = ("partial", "ts_ns")

    def __init__(self) -> None:
        self.partial = bytearray()
        self.ts_ns = 0

    def feed(self, data: bytes, ts_ns: int) -> list[str]:
        """The lines ``data`` completes (or cuts past MAX_LINE)."""
        self.ts_ns = ts_ns
        last = data.rfind(b"\n")
        if last < 0:
            self.partial += data
            return self._cut()
        lines: list[str] = []
        start = 0
        if self.partial:
            first = data.find(b"\n")
            self.partial += data[:first]
            lines += self._cut()
            lines.append(_decode(self.partial))
            self.partial.clear()
            start = first + 1
        if start <= last:
            lines += _block_lines(memoryview(data)[start:last])
        self.partial += data[last + 1 :]
        return lines + self._cut()

    def end(self) -> list[str]:
        """The unfinished line as a line of its own (none when there is none)."""
        if not self.partial:
            return []
        line = _decode(self.partial)
        self.partial.clear()
        return [line]

    def _cut(self) -> list[str]:
        lines = []
        while len(self.partial) > MAX_LINE:
            lines.append(_decode(self.partial[:MAX_LINE]))
            del self.partial[:MAX_LINE]
        return lines


def _decode(data: bytes | bytearray | memoryview) -> str:
    return str(data, "utf-8", "replace")


def _block_lines(block: memoryview) -> list[str]:
    """The lines of ``block`` (newline-separated, none past its end), decoded at once: a
    newline never falls inside a UTF-8 character, so this is each line decoded alone."""
    if len(block) <= MAX_LINE:
        return _decode(block).split("\n")
    parts = bytes(block).split(b"\n")
    if max(map(len, parts)) <= MAX_LINE:
        return _decode(block).split("\n")
    lines = []
    for part in parts:
        lines += [_decode(part[i : i + MAX_LINE]) for i in range(0, len(part), MAX_LINE)] or [""]
    return lines


class LineReader:
    """Splits a process's stored chunks into lines as they are read (`entries`), for the
    readers that answer with lines; kept across reads, it holds each stream's unfinished
    line. A PTY's output is read as stdout. Lines are decoded from UTF-8 (an invalid byte
    reads as U+FFFD); each is stamped with the time of the chunk that completed it."""

    def __init__(self, kind: str | None = None) -> None:
        """``kind``: STDOUT or STDERR to split that stream only, None for both."""
        kinds = (STDOUT, STDERR) if kind is None else (kind,)
        self._streams = {k: _Splitter() for k in kinds}

    def entries(self, stored: Iterable[_Stored]) -> Iterator[Entry]:
        """The lines completed by ``stored`` (entries in stream order), and END. At END (the
        process ended) an unfinished line comes out as it is; Paddock's own line ends the
        unfinished lines before it too, or drops them when it says output was cut."""
        streams = self._streams
        for chunk, ts_ns, notice in stored:
            kind = chunk.kind
            if kind == END:
                yield from self._end()
                yield Entry(END, [], exit_code=chunk.exit_code, oom_killed=chunk.oom_killed)
                continue
            if notice == CUT:
                for cut in streams.values():
                    cut.partial.clear()
            elif notice:
                yield from self._end()
            if kind == PTY:
                kind = STDOUT
            splitter = streams.get(kind)
            if splitter is not None:
                lines = splitter.feed(chunk.data, ts_ns)
                if lines:
                    yield Entry(kind, lines, ts_ns)

    def _end(self) -> Iterator[Entry]:
        for kind, splitter in self._streams.items():
            tail = splitter.end()
            if tail:
                yield Entry(kind, tail, splitter.ts_ns)


def _apply(out: Output, entries: Iterable[Entry]) -> None:
    for e in entries:
        if e.kind == END:
            out.finished = True
            out.exit_code = e.exit_code
            out.oom_killed = e.oom_killed
        else:
            target = out.stdout if e.kind == STDOUT else out.stderr
            target.extend(Line(e.kind, t, e.ts_ns) for t in e.lines)
