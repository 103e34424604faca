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


BACKENDS = ("docker", "supervisor")  # the sandbox backends measured, in the table's order


@dataclass(frozen=True)
class Target:
    """What issue 12 asks of a figure: the supervisor backend at most ``ratio`` x raw Docker,
    or at most ``absolute`` (in the figure's unit); ``text`` is what the table shows. With
    neither, the figure is only printed."""

    text: str
    ratio: float | None = None
    absolute: float | None = None


@dataclass(frozen=True)
class Figure:
    """One row of the table: the same quantity through each sandbox backend and raw Docker.
    None: not measured (e.g. no supervisor on the Docker backend, no warm pool yet)."""

    name: str
    unit: str
    values: dict[str, float | None]  # backend -> value
    raw: float | None
    better: str  # LOWER_IS_BETTER or HIGHER_IS_BETTER
    samples: int
    target: Target | None = None
    why_missing: str = ""  # shown in "met?" when the supervisor's value is missing

    def value(self, backend: str) -> float | None:
        return self.values.get(backend)

    def ratio(self, backend: str = "supervisor") -> float | None:
        value = self.value(backend)
        if value is None or not self.raw:
            return None
        return value / self.raw

    def met(self) -> str:
        """ "yes"/"no" against the target, or why it cannot be said."""
        t = self.target
        if t is None or (t.ratio is None and t.absolute is None):
            return ""
        value, ratio = self.value("supervisor"), self.ratio()
        if value is None:
            return self.why_missing or "not measured"
        if t.ratio is not None:
            if ratio is None:
                return "no raw"
            return "yes" if ratio <= t.ratio else "no"
        assert t.absolute is not None
        return "yes" if value <= t.absolute else "no"


def latency_figures(
    name: str,
    samples: dict[str, list[float]],
    raw_s: list[float],
    percentiles: tuple[int, ...] = (50, 90),
    targets: dict[int, Target] | None = None,
) -> list[Figure]:
    """One row per percentile, in milliseconds, of lists of durations in seconds: ``samples``
    per backend (a backend missing or empty: not measured), ``raw_s`` raw Docker's."""
    counts = [len(v) for v in samples.values() if v] + ([len(raw_s)] if raw_s else [])
    return [
        Figure(
            f"{name} p{p}",
            "ms",
            {b: percentile(v, p) * 1000 if v else None for b, v in samples.items()},
            percentile(raw_s, p) * 1000 if raw_s else None,
            LOWER_IS_BETTER,
            min(counts, default=0),
            (targets or {}).get(p),
        )
        for p in percentiles
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
    # Where an exec's time goes (supervisor backend): printed lines, and their numbers.
    breakdown: list[str] = field(default_factory=list)
    breakdown_ms: dict[str, float] = field(default_factory=dict)
    load: list[LoadFigure] = field(default_factory=list)
    load_notes: list[str] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=dict)
    raw_samples: dict[str, list[float]] = field(default_factory=dict)

    def table(self) -> str:
        head = (
            f"{'figure':<46} {'docker':>9} {'supervisor':>10} {'raw':>9} {'sup/raw':>8}"
            f"  {'target':<12} met?"
        )
        rule = "-" * (len(head) + 12)
        lines = [head, rule]
        for f in self.figures:
            ratio = f.ratio()
            lines.append(
                f"{f.name + ' (' + f.unit + ')':<46} {_opt(f.value('docker')):>9} "
                f"{_opt(f.value('supervisor')):>10} {_opt(f.raw):>9} "
                f"{'-' if ratio is None else f'{ratio:.2f}x':>8}  "
                f"{f.target.text if f.target else '':<12} {f.met()}".rstrip()
            )
        lines.append(rule)
        lines.append(
            "docker / supervisor: the sandbox backend of the stack measured "
            "(PADDOCK_SANDBOX_BACKEND); raw: the Docker SDK directly,"
        )
        lines.append(
            "measured in the same run, interleaved with each stack's samples (both "
            "stacks' raw samples together). sup/raw = supervisor / raw."
        )
        lines.append(
            "Latencies (ms) and memory (MB): lower is better. Throughput (MB/s): higher "
            "is better. '-': not measured."
        )
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
            "figures": [
                {
                    **asdict(f),
                    "ratio": f.ratio(),
                    "ratio_docker": f.ratio("docker"),
                    "met": f.met(),
                }
                for f in self.figures
            ],
            "notes": self.notes,
            "breakdown_ms": self.breakdown_ms,
            "breakdown": self.breakdown,
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


def _opt(value: float | None) -> str:
    return "-" if value is None else _num(value)


def _table(columns: tuple[str, str], rows: list[tuple[str, str, float, float, float]]) -> list[str]:
    """A figure table: name (unit), two values and their ratio, between rules."""
    head = f"{'figure':<34} {columns[0]:>12} {columns[1]:>12} {'ratio':>8}"
    rule = "-" * len(head)
    lines = [head, rule]
    for name, unit, a, b, ratio in rows:
        lines.append(f"{name + ' (' + unit + ')':<34} {_num(a):>12} {_num(b):>12} {ratio:>7.2f}x")
    lines.append(rule)
    return lines
