"""Figures, percentiles, the machine description and the printed table."""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

LOWER_IS_BETTER = "lower is better"
HIGHER_IS_BETTER = "higher is better"


def percentile(values: list[float], p: float) -> float:
    """The ``p``-th percentile (0-100) with linear interpolation between closest ranks.

    Raises ValueError on an empty list.
    """
    if not values:
        raise ValueError("no samples")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Figure:
    """One row of the table: the same quantity measured through Paddock and raw Docker."""

    name: str
    unit: str
    paddock: float
    raw: float
    better: str  # LOWER_IS_BETTER or HIGHER_IS_BETTER
    samples: int

    @property
    def ratio(self) -> float:
        return self.paddock / self.raw if self.raw else math.inf


def latency_figures(name: str, paddock_s: list[float], raw_s: list[float]) -> list[Figure]:
    """p50 and p95 rows, in milliseconds, of two lists of durations in seconds."""
    n = min(len(paddock_s), len(raw_s))
    return [
        Figure(
            f"{name} p{p}",
            "ms",
            percentile(paddock_s, p) * 1000,
            percentile(raw_s, p) * 1000,
            LOWER_IS_BETTER,
            n,
        )
        for p in (50, 95)
    ]


@dataclass(frozen=True)
class LoadFigure:
    """One row of the concurrency table: a quantity with nothing open, then with the load."""

    name: str
    unit: str
    idle: float
    loaded: float
    samples: int

    @property
    def ratio(self) -> float:
        return self.loaded / self.idle if self.idle else math.inf


@dataclass
class Report:
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    load: list[LoadFigure] = field(default_factory=list)
    load_notes: list[str] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=dict)
    raw_samples: dict[str, list[float]] = field(default_factory=dict)

    def table(self) -> str:
        rows = [(f.name, f.unit, f.paddock, f.raw, f.ratio) for f in self.figures]
        lines = _table(("paddock", "raw docker"), rows)
        lines.append(
            "ratio = paddock / raw docker. Latencies (ms): lower is better, so a ratio above 1"
        )
        lines.append(
            "is Paddock's overhead. Throughput (MB/s): higher is better, a ratio below 1 is"
        )
        lines.append("the share of raw Docker's speed that Paddock delivers.")
        return "\n".join(lines)

    def load_table(self) -> str:
        rows = [(f.name, f.unit, f.idle, f.loaded, f.ratio) for f in self.load]
        return "\n".join(_table(("idle", "loaded"), rows))

    def header(self) -> str:
        m = self.machine
        return (
            f"Paddock bench — {m['date']}\n"
            f"machine: {m['nproc']} CPUs, {m['memory_gib']:.1f} GiB memory, {m['kernel']}, "
            f"Docker {m['docker']}, Python {m['python']}"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "figures": [{**asdict(f), "ratio": f.ratio} for f in self.figures],
            "notes": self.notes,
            "concurrency": [{**asdict(f), "ratio": f.ratio} for f in self.load],
            "concurrency_notes": self.load_notes,
            "samples_seconds": self.raw_samples,
        }

    def write_json(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")


def machine_info(docker_version: str) -> dict[str, Any]:
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "nproc": len(os.sched_getaffinity(0)),
        "memory_gib": _mem_total() / (1 << 30),
        "kernel": f"{platform.system()} {platform.release()}",
        "docker": docker_version,
        "python": platform.python_version(),
    }


def _mem_total() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def _num(value: float) -> str:
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _table(columns: tuple[str, str], rows: list[tuple[str, str, float, float, float]]) -> list[str]:
    """A figure table: name (unit), two values and their ratio, between rules."""
    head = f"{'figure':<34} {columns[0]:>12} {columns[1]:>12} {'ratio':>8}"
    rule = "-" * len(head)
    lines = [head, rule]
    for name, unit, a, b, ratio in rows:
        lines.append(f"{name + ' (' + unit + ')':<34} {_num(a):>12} {_num(b):>12} {ratio:>7.2f}x")
    lines.append(rule)
    return lines
