"""The envd protocol's processes of one sandbox, by pid: the SDK names a process by the integer
pid its start answered, Paddock by its process id. One Redis hash per sandbox
(``keys.envd_processes``): ``p:<pid>`` the process (its id, tag and start), ``d:<pid>`` when a
stream delivered its end, ``i:<process id>`` its pid and ``t:<tag>`` the pid of the newest
process with the tag (so that no lookup reads the whole table), ``seq`` the pid counter, ``c``
where the sweep goes on.

- The pid is the process's own (its group's) inside the sandbox when the backend knows it at
  start (the supervisor does); otherwise one counted from COUNTED_BASE, above any Linux pid,
  so the two kinds never meet. A pid the sandbox reuses replaces the old entry; the process
  it named has exited, and is forgotten with it.
- An envd process is a Paddock process like any other (quotas, output budgets, removed with
  its sandbox); what the SDK has no way to delete is forgotten here (``sweep``, run by each
  Start and List): an exited process KEEP_DELIVERED seconds after a stream delivered its end,
  or KEEP_EXITED seconds after it ended when none did (a client that lost its stream may
  still connect to read it). An entry whose process is gone (deleted through another API,
  its sandbox removed) is dropped. Each sweep looks at SWEEP_BATCH fields from where the
  last one stopped, so its cost never grows with how many processes the sandbox ran; each
  Start adds at most four fields, so the sweeps go round the table far faster than it grows.
- The hash is deleted with its sandbox (Store.purge_sandbox) and expires a while after the
  sandbox's maximum lifetime, whatever happens to it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import redis

from shared import keys
from shared.output import ProcessLog
from shared.redisio import read_set, text

COUNTED_BASE = 1 << 24  # Linux pids are at most 2^22 (pid_max)
MAX_PID = (1 << 32) - 1  # the wire's uint32
KEEP_DELIVERED = 30.0
KEEP_EXITED = 600.0
SWEEP_BATCH = 256  # fields one sweep looks at (HSCAN's COUNT)
_TTL_GRACE = 3600

# Drop an entry and the index fields that name it, unless a newer process took its pid
# meanwhile (then only the old process's own index fields go). KEYS: the table. ARGV: pid,
# the entry's value as read, process id, tag ("": none).
_DROP = """
local pid = ARGV[1]
if redis.call('HGET', KEYS[1], 'p:' .. pid) == ARGV[2] then
  redis.call('HDEL', KEYS[1], 'p:' .. pid, 'd:' .. pid)
end
if redis.call('HGET', KEYS[1], 'i:' .. ARGV[3]) == pid then
  redis.call('HDEL', KEYS[1], 'i:' .. ARGV[3])
end
if ARGV[4] ~= '' and redis.call('HGET', KEYS[1], 't:' .. ARGV[4]) == pid then
  redis.call('HDEL', KEYS[1], 't:' .. ARGV[4])
end
return 1
"""


@dataclass(frozen=True)
class Entry:
    pid: int
    process_id: str
    tag: str | None
    started_at: float
    raw: str = ""  # the stored value (what a drop compares)


class ProcessTable:
    """See the module docstring. ``lifetime``: the sandboxes' maximum lifetime (seconds)."""

    def __init__(self, r: redis.Redis, plog: ProcessLog, lifetime: float) -> None:
        self.r = r
        self.plog = plog
        self.ttl = int(lifetime) + _TTL_GRACE
        self._drop_script = r.register_script(_DROP)

    def add(self, sandbox_id: str, pid: int, process_id: str, tag: str | None) -> int:
        """Enter a started process under ``pid`` (0 or out of range: a counted one); its
        pid. A process the pid named before (it exited: the pid was reused) is forgotten."""
        key = keys.envd_processes(sandbox_id)
        if not 0 < pid < COUNTED_BASE:
            pid = COUNTED_BASE + int(self.r.hincrby(key, "seq", 1))
            if pid > MAX_PID:
                raise OverflowError("no pid left for this sandbox")
        before = self.get(sandbox_id, pid)
        if before is not None and before.process_id != process_id:
            self._drop(sandbox_id, before)
            self.plog.forget(sandbox_id, before.process_id)
        value = json.dumps({"id": process_id, "tag": tag, "at": time.time()})
        pipe = self.r.pipeline()
        pipe.hset(key, f"p:{pid}", value)
        pipe.hset(key, f"i:{process_id}", str(pid))
        if tag is not None:
            pipe.hset(key, f"t:{tag}", str(pid))
        pipe.hdel(key, f"d:{pid}")
        pipe.expire(key, self.ttl)
        pipe.execute()
        return pid

    def get(self, sandbox_id: str, pid: int) -> Entry | None:
        raw = self.r.hget(keys.envd_processes(sandbox_id), f"p:{pid}")
        return _entry(pid, text(raw)) if raw else None

    def by_tag(self, sandbox_id: str, tag: str) -> Entry | None:
        """The newest process started with ``tag`` (while it is kept)."""
        pid = self.r.hget(keys.envd_processes(sandbox_id), f"t:{tag}")
        entry = self.get(sandbox_id, int(pid)) if pid and text(pid).isdigit() else None
        return entry if entry is not None and entry.tag == tag else None

    def running(self, sandbox_id: str) -> list[Entry]:
        """The entries of the sandbox's running processes (read from its running set, at
        most its process quota: never the whole table), by pid."""
        ids = sorted(read_set(self.r, keys.sandbox_running(sandbox_id)))
        if not ids:
            return []
        key = keys.envd_processes(sandbox_id)
        pids = [text(p) for p in self.r.hmget(key, [f"i:{i}" for i in ids]) if p]
        pids = [p for p in pids if p.isdigit()]
        if not pids:
            return []
        raws = self.r.hmget(key, [f"p:{p}" for p in pids])
        found = [_entry(int(p), text(raw)) for p, raw in zip(pids, raws, strict=True) if raw]
        return sorted((e for e in found if e is not None), key=lambda e: e.pid)

    def delivered(self, sandbox_id: str, pid: int) -> None:
        """A stream delivered the process's end: it is kept KEEP_DELIVERED seconds more."""
        key = keys.envd_processes(sandbox_id)
        if self.r.hexists(key, f"p:{pid}"):
            self.r.hset(key, f"d:{pid}", str(time.time()))

    def sweep(self, sandbox_id: str, now: float | None = None) -> None:
        """Forget the exited processes kept long enough, and drop entries whose process is
        gone, among the next SWEEP_BATCH fields of the table (module docstring)."""
        now = time.time() if now is None else now
        key = keys.envd_processes(sandbox_id)
        raw = text(self.r.hget(key, "c") or "0")
        cursor = int(raw) if raw.isdigit() else 0
        after, fields = self.r.hscan(key, cursor, match="p:*", count=SWEEP_BATCH)
        if after != cursor:
            pipe = self.r.pipeline()
            pipe.hset(key, "c", str(after))
            pipe.expire(key, self.ttl)
            pipe.execute()
        found = [(text(f)[2:], text(v)) for f, v in fields.items()]
        entries = [e for p, v in found if p.isdigit() and (e := _entry(int(p), v)) is not None]
        if not entries:
            return
        pipe = self.r.pipeline(transaction=False)
        pipe.hmget(key, [f"d:{e.pid}" for e in entries])
        for e in entries:
            pipe.hmget(keys.process(sandbox_id, e.process_id), ["status", "ended_at"])
        told, *states = pipe.execute()
        for e, delivered_at, (status, ended_at) in zip(entries, told, states, strict=True):
            if status is None:
                self._drop(sandbox_id, e)
                continue
            if text(status) != "exited":
                continue
            ended, delivered = _number(ended_at), _number(delivered_at)
            due = max(ended, delivered) + KEEP_DELIVERED if delivered else ended + KEEP_EXITED
            if now >= due:
                self.plog.forget(sandbox_id, e.process_id)
                self._drop(sandbox_id, e)

    def _drop(self, sandbox_id: str, entry: Entry) -> None:
        self._drop_script(
            keys=[keys.envd_processes(sandbox_id)],
            args=[entry.pid, entry.raw, entry.process_id, entry.tag or ""],
        )


def _entry(pid: int, raw: str) -> Entry | None:
    try:
        value = json.loads(raw)
        tag = value.get("tag")
        return Entry(
            pid,
            str(value["id"]),
            tag if isinstance(tag, str) else None,
            float(value.get("at") or 0),
            raw,
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _number(raw: object) -> float:
    try:
        return float(text(raw)) if raw else 0.0
    except ValueError:
        return 0.0
