"""Processes and their output: one hash per process, one Redis Stream of output per process.

The worker that runs a process appends entries; readers (HTTP long-polls) take everything with
XRANGE and then follow with blocking XREAD from the last id they saw, so nothing is missed and
nobody sleeps in a loop. The stream ends with one ``end`` entry carrying the exit code.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import groupby
from typing import Any

import redis

from shared import keys
from shared.redisio import read_hash, read_set, text

STDOUT = "o"
STDERR = "e"
END = "x"

_BATCH = 256  # stream entries per read; an entry holds up to one 256 KiB chunk of lines


@dataclass(frozen=True)
class Line:
    """Output read back: one line. When written, ``text`` may hold several lines joined by
    newlines (a chunk read at once); `ProcessLog.read` splits them again."""

    kind: str  # STDOUT or STDERR
    text: str
    ts_ns: int


@dataclass
class Output:
    stdout: list[Line] = field(default_factory=list)
    stderr: list[Line] = field(default_factory=list)
    finished: bool = False
    exit_code: int | None = None
    last_id: str = "0-0"


class ProcessLog:
    """Process records and output streams. Takes the Redis client; opens nothing itself."""

    def __init__(self, r: redis.Redis) -> None:
        self.r = r

    # -- records -----------------------------------------------------------------------------
    def register(self, sandbox_id: str, process_id: str, cmd: str) -> None:
        pipe = self.r.pipeline()
        pipe.hset(
            keys.process(sandbox_id, process_id),
            mapping={"cmd": cmd, "status": "starting", "started_at": time.time()},
        )
        pipe.sadd(keys.sandbox_processes(sandbox_id), process_id)
        pipe.execute()

    def set_fields(self, sandbox_id: str, process_id: str, **values: str | int | float) -> None:
        mapping: dict[str | bytes, str | int | float] = {k: v for k, v in values.items()}
        self.r.hset(keys.process(sandbox_id, process_id), mapping=mapping)

    def exists(self, sandbox_id: str, process_id: str) -> bool:
        return bool(self.r.exists(keys.process(sandbox_id, process_id)))

    def info(self, sandbox_id: str, process_id: str) -> dict[str, str]:
        return read_hash(self.r, keys.process(sandbox_id, process_id))

    def process_ids(self, sandbox_id: str) -> list[str]:
        return sorted(read_set(self.r, keys.sandbox_processes(sandbox_id)))

    def forget(self, sandbox_id: str, process_id: str) -> None:
        pipe = self.r.pipeline()
        pipe.delete(keys.process(sandbox_id, process_id), keys.output(sandbox_id, process_id))
        pipe.srem(keys.sandbox_processes(sandbox_id), process_id)
        pipe.execute()

    # -- writing output ----------------------------------------------------------------------
    def append(self, sandbox_id: str, process_id: str, lines: Iterable[Line]) -> None:
        """Store lines. Consecutive lines of one stream read at one instant share an entry
        (joined by newlines, which a line never contains): one XADD per chunk read, not per
        line, is what makes hundreds of MB of output affordable."""
        key = keys.output(sandbox_id, process_id)
        pipe = self.r.pipeline(transaction=False)
        for (kind, ts), group in groupby(lines, key=lambda x: (x.kind, x.ts_ns)):
            pipe.xadd(key, {"k": kind, "l": "\n".join(x.text for x in group), "t": ts})
        if len(pipe):
            pipe.execute()

    def finish(self, sandbox_id: str, process_id: str, exit_code: int | None) -> None:
        code = "" if exit_code is None else str(exit_code)
        pipe = self.r.pipeline()
        pipe.xadd(keys.output(sandbox_id, process_id), {"k": END, "c": code})
        pipe.hset(
            keys.process(sandbox_id, process_id),
            mapping={"status": "exited", "exit_code": code, "ended_at": time.time()},
        )
        pipe.execute()

    # -- reading output ----------------------------------------------------------------------
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
        tick: Callable[[], None] | None = None,
    ) -> Output:
        """Everything written until the process ends, or until ``timeout`` seconds pass.

        ``tick`` is called every few seconds while waiting (the web uses it to keep the
        sandbox from being reaped as idle while a client is waiting on it).
        """
        out = self.read(sandbox_id, process_id)
        key = keys.output(sandbox_id, process_id)
        deadline = time.monotonic() + timeout
        while not out.finished:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            block_ms = max(1, int(min(remaining, 10.0) * 1000))
            resp = self.r.xread({key: out.last_id}, count=_BATCH, block=block_ms)
            if tick is not None:
                tick()
            for _key, entries in resp or []:
                _apply(out, entries)
            if not resp and not self.r.exists(keys.process(sandbox_id, process_id)):
                break  # forgotten (stopped or sandbox ended) while we waited
        return out


def _apply(out: Output, entries: list[Any]) -> None:
    for entry_id, fields in entries:
        out.last_id = text(entry_id)
        f = {text(k): text(v) for k, v in fields.items()}
        kind = f.get("k")
        if kind == END:
            out.finished = True
            out.exit_code = int(f["c"]) if f.get("c") else None
        elif kind in (STDOUT, STDERR):
            target = out.stdout if kind == STDOUT else out.stderr
            ts = int(f.get("t", 0))
            target.extend(Line(kind, text, ts) for text in f.get("l", "").split("\n"))
