"""The envd protocol's processes of one sandbox, by pid: the SDK names a process by the integer
pid its start answered, Paddock by its process id. One Redis hash per sandbox
(``keys.envd_processes``) maps each pid to its process (and the tag it was started with).

- The pid is the process's own (its group's) inside the sandbox when the backend knows it at
  start (the supervisor does); otherwise one counted from COUNTED_BASE, above any Linux pid,
  so the two kinds never meet. A pid the sandbox reuses replaces the old entry; the process
  it named has exited, and is forgotten with it.
- An envd process is a Paddock process like any other (quotas, output budgets, removed with
  its sandbox); what the SDK has no way to delete is forgotten here (``sweep``, run by each
  Start and List): an exited process KEEP_DELIVERED seconds after a stream delivered its end,
  or KEEP_EXITED seconds after it ended when none did (a client that lost its stream may
  still connect to read it). An entry whose process is gone (deleted through another API,
  its sandbox removed) is dropped.
- The hash expires a while after the sandbox's maximum lifetime, whatever happens to it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import redis

from shared import keys
from shared.output import ProcessLog
from shared.redisio import read_hash, text

COUNTED_BASE = 1 << 24  # Linux pids are at most 2^22 (pid_max)
MAX_PID = (1 << 32) - 1  # the wire's uint32
KEEP_DELIVERED = 30.0
KEEP_EXITED = 600.0
_TTL_GRACE = 3600


@dataclass(frozen=True)
class Entry:
    pid: int
    process_id: str
    tag: str | None
    started_at: float


class ProcessTable:
    """See the module docstring. ``lifetime``: the sandboxes' maximum lifetime (seconds)."""

    def __init__(self, r: redis.Redis, plog: ProcessLog, lifetime: float) -> None:
        self.r = r
        self.plog = plog
        self.ttl = int(lifetime) + _TTL_GRACE

    def add(self, sandbox_id: str, pid: int, process_id: str, tag: str | None) -> int:
        """Enter a started process under ``pid`` (0 or out of range: a counted one); its
        pid. A process the pid named before (it exited: the pid was reused) is forgotten."""
        key = keys.envd_processes(sandbox_id)
        if not 0 < pid < COUNTED_BASE:
            pid = COUNTED_BASE + int(self.r.hincrby(key, "seq", 1))
            if pid > MAX_PID:
                raise OverflowError("no pid left for this sandbox")
        before = self.get(sandbox_id, pid)
        value = json.dumps({"id": process_id, "tag": tag, "at": time.time()})
        pipe = self.r.pipeline()
        pipe.hset(key, f"p:{pid}", value)
        pipe.hdel(key, f"d:{pid}")
        pipe.expire(key, self.ttl)
        pipe.execute()
        if before is not None and before.process_id != process_id:
            self.plog.forget(sandbox_id, before.process_id)
        return pid

    def get(self, sandbox_id: str, pid: int) -> Entry | None:
        raw = self.r.hget(keys.envd_processes(sandbox_id), f"p:{pid}")
        return _entry(pid, text(raw)) if raw else None

    def by_tag(self, sandbox_id: str, tag: str) -> Entry | None:
        """The newest process started with ``tag``."""
        tagged = [e for e in self.entries(sandbox_id) if e.tag == tag]
        return max(tagged, key=lambda e: e.started_at) if tagged else None

    def entries(self, sandbox_id: str) -> list[Entry]:
        return _entries(read_hash(self.r, keys.envd_processes(sandbox_id)))

    def delivered(self, sandbox_id: str, pid: int) -> None:
        """A stream delivered the process's end: it is kept KEEP_DELIVERED seconds more."""
        key = keys.envd_processes(sandbox_id)
        if self.r.hexists(key, f"p:{pid}"):
            self.r.hset(key, f"d:{pid}", str(time.time()))

    def sweep(self, sandbox_id: str, now: float | None = None) -> None:
        """Forget the exited processes kept long enough, and drop entries whose process is
        gone (module docstring)."""
        now = time.time() if now is None else now
        table = read_hash(self.r, keys.envd_processes(sandbox_id))
        entries = _entries(table)
        if not entries:
            return
        pipe = self.r.pipeline(transaction=False)
        for e in entries:
            pipe.hmget(keys.process(sandbox_id, e.process_id), ["status", "ended_at"])
        states = pipe.execute()
        for e, (status, ended_at) in zip(entries, states, strict=True):
            if status is None:
                self._drop(sandbox_id, e.pid)
                continue
            if text(status) != "exited":
                continue
            ended = _number(ended_at)
            delivered = _number(table.get(f"d:{e.pid}"))
            due = max(ended, delivered) + KEEP_DELIVERED if delivered else ended + KEEP_EXITED
            if now >= due:
                self.plog.forget(sandbox_id, e.process_id)
                self._drop(sandbox_id, e.pid)

    def _drop(self, sandbox_id: str, pid: int) -> None:
        self.r.hdel(keys.envd_processes(sandbox_id), f"p:{pid}", f"d:{pid}")


def _entries(table: dict[str, str]) -> list[Entry]:
    found = []
    for field, value in table.items():
        if field.startswith("p:") and field[2:].isdigit():
            entry = _entry(int(field[2:]), value)
            if entry is not None:
                found.append(entry)
    return sorted(found, key=lambda e: e.pid)


def _entry(pid: int, raw: str) -> Entry | None:
    try:
        value = json.loads(raw)
        tag = value.get("tag")
        return Entry(
            pid,
            str(value["id"]),
            tag if isinstance(tag, str) else None,
            float(value.get("at") or 0),
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _number(raw: object) -> float:
    try:
        return float(text(raw)) if raw else 0.0
    except ValueError:
        return 0.0
