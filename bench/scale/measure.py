"""What the scale harness reads: Redis's own counters (INFO commandstats, memory, CPU), the CPU
time of each tier's processes from /proc, latency samples, and the arithmetic that turns two
readings into rates and per-operation costs."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import redis

from bench.report import percentile

# Commands the harness itself sends to read Redis: never counted as the service's.
OWN_COMMANDS = frozenset({"info", "monitor"})
_TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class RedisReading:
    """One INFO of Redis: the commands clients sent so far (``processed``: a script is one),
    the calls of each command (those inside scripts included, as Redis counts them), memory
    and CPU seconds used."""

    at: float
    processed: int
    calls: dict[str, int]
    used_memory: int
    cpu: float


def read_redis(r: redis.Redis) -> RedisReading:
    info = r.info("all")
    calls = {
        name.removeprefix("cmdstat_"): int(stat["calls"])
        for name, stat in info.items()
        if name.startswith("cmdstat_") and isinstance(stat, dict)
    }
    cpu = float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
    processed = int(info["total_commands_processed"])
    return RedisReading(time.monotonic(), processed, calls, int(info["used_memory"]), cpu)


def calls_between(a: RedisReading, b: RedisReading) -> Counter[str]:
    """Calls of each command from reading ``a`` to ``b``, the harness's own left out (and
    commands that were not called)."""
    return Counter(
        {
            k: v - a.calls.get(k, 0)
            for k, v in b.calls.items()
            if v > a.calls.get(k, 0) and k not in OWN_COMMANDS
        }
    )


def sent_between(a: RedisReading, b: RedisReading) -> int:
    """Commands clients sent from ``a`` to ``b`` (a script counts once), the harness's own
    left out: what the issue's "Redis commands per exec" counts."""
    own = sum(b.calls.get(k, 0) - a.calls.get(k, 0) for k in OWN_COMMANDS)
    return b.processed - a.processed - own


def per_operation(
    busy: Mapping[str, float], busy_s: float, idle: Mapping[str, float], idle_s: float, ops: int
) -> dict[str, float]:
    """Commands of each name per operation: what a window with ``ops`` operations in
    ``busy_s`` seconds called, less what the same stack calls anyway (the ``idle`` window's
    rate over as long: heartbeats, the workers' broker polls, the reaper), over ``ops``.
    Raises ValueError when ``ops`` or ``idle_s`` is not positive."""
    if ops <= 0 or idle_s <= 0:
        raise ValueError("per_operation needs operations and an idle window")
    out = {}
    for name in set(busy) | set(idle):
        cost = (busy.get(name, 0) - idle.get(name, 0) * busy_s / idle_s) / ops
        if cost > 0.05:  # less than one call in twenty operations: background noise
            out[name] = cost
    return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))


def top(costs: dict[str, float], n: int = 6) -> str:
    """The ``n`` biggest entries as ``name N, ...`` (for a table's last column)."""
    ranked = sorted(costs.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
    return ", ".join(f"{name} {value:.1f}" for name, value in ranked)


# -- CPU of processes ---------------------------------------------------------------------------
def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds) of a live process, or None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces.
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK


def descendants(pids: Iterable[int]) -> set[int]:
    """``pids`` and every live process below them."""
    parents: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            got = _stat(int(entry.name))
            if got is not None:
                parents.setdefault(got[0], []).append(int(entry.name))
    found, todo = set(), list(pids)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(parents.get(pid, []))
    return found


def cpu_seconds(pids: Iterable[int]) -> float:
    """CPU seconds (user + system) used so far by the live processes ``pids`` (a process's
    children are not included: pass them, descendants())."""
    return sum(got[1] for pid in pids if (got := _stat(pid)) is not None)


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy so far (every process, ours or not), from
    /proc/stat: on a shared machine, what others took shows as the difference."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    ticks = [int(f) for f in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    busy = sum(ticks[:8]) - idle  # user nice system idle iowait irq softirq steal
    return busy / _TICK


def rss_mb(pids: Iterable[int]) -> float:
    """Resident memory of ``pids`` in MiB."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


# -- latency ------------------------------------------------------------------------------------
@dataclass
class Samples:
    """Durations in seconds of one kind of request or operation, and its failures by kind."""

    seconds: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)

    def add(self, seconds: float, error: str | None = None) -> None:
        if error is None:
            self.seconds.append(seconds)
        else:
            self.errors[error] += 1

    @property
    def ok(self) -> int:
        return len(self.seconds)

    def ms(self, p: float) -> float | None:
        return percentile(self.seconds, p) * 1000 if self.seconds else None

    def merge(self, other: Samples) -> None:
        self.seconds += other.seconds
        self.errors.update(other.errors)
