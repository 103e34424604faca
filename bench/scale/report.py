"""The tables ``make scale`` prints, the first bottleneck it reads from them, and its plot."""

from __future__ import annotations

import os
from pathlib import Path

from bench.report import _num
from bench.scale.load import OPS
from bench.scale.steps import Step


def _ms(value: float | None) -> str:
    return "-" if value is None else _num(value)


def _rule(head: str) -> str:
    return "-" * len(head)


def load_table(steps: list[Step]) -> str:
    """Each step's operations: how many per second, failures, p50/p99 of each kind."""
    head = f"{'hosts':>5} {'clients':>7} {'ops/s':>7} {'failed':>6} " + " ".join(
        f"{op[:13] + ' p50/p99':>21}" for op in OPS
    )
    lines = [head, _rule(head)]
    for s in steps:
        cells = []
        for op in OPS:
            o = s.rec.ops[op]
            cells.append(f"{_ms(o.ms(50)) + ' / ' + _ms(o.ms(99)):>21}")
        lines.append(
            f"{s.hosts:>5} {s.clients:>7} {_num(s.ops_per_s):>7} {s.rec.ops_failed:>6} "
            + " ".join(cells)
        )
    lines.append(_rule(head))
    lines.append(
        "latencies in ms of each whole operation (long_poll: start, then wait for its end)"
    )
    for s in steps:
        errors = {f"{op}: {k}": v for op in OPS for k, v in s.rec.ops[op].errors.items()}
        if errors:
            shown = ", ".join(f"{k} x{v}" for k, v in sorted(errors.items())[:6])
            lines.append(f"failures at {s.hosts} hosts: {shown}")
    return "\n".join(lines)


def tier_table(steps: list[Step]) -> str:
    """Each tier under load: throughput, latency, CPU (cores) and throughput per core."""
    head = (
        f"{'hosts':>5} | {'web req/s':>9} {'p50':>5} {'p99':>6} {'cores':>5} {'req/core':>8} | "
        f"{'redis call/s':>12} {'cores':>5} {'call/core':>9} {'MB':>5} {'ping99':>6} | "
        f"{'tasks/s':>7} {'rtt50':>6} {'rtt99':>6} {'hosts':>5} | {'ctrl':>4} {'drv':>4} "
        f"{'other':>5}"
    )
    lines = [head, _rule(head)]
    for s in steps:
        w = s.load
        web_cores, redis_cores = w.cores["web"], w.cores["redis"]
        req_core = s.requests_per_s / web_cores if web_cores > 0.01 else 0.0
        call_core = w.calls_per_s / redis_cores if redis_cores > 0.01 else 0.0
        lines.append(
            f"{s.hosts:>5} | {_num(s.requests_per_s):>9} {_ms(s.rec.web.ms(50)):>5} "
            f"{_ms(s.rec.web.ms(99)):>6} {web_cores:>5.2f} {_num(req_core):>8} | "
            f"{_num(w.calls_per_s):>12} {redis_cores:>5.2f} {_num(call_core):>9} "
            f"{w.redis_mb:>5.0f} {_ms(s.ping.ms(99)):>6} | "
            f"{_num(w.rate('lpush')):>7} {_ms(s.rtt.ms(50)):>6} {_ms(s.rtt.ms(99)):>6} "
            f"{w.cores['hosts']:>5.2f} | {w.cores['control']:>4.2f} {w.cores['driver']:>4.2f} "
            f"{w.cores['other']:>5.2f}"
        )
    lines.append(_rule(head))
    lines.append(
        "web: HTTP requests answered (long-poll waits counted, not in p50/p99), ms; cores: CPU "
        "seconds per second of the tier's processes."
    )
    lines.append(
        "redis: calls (INFO commandstats, inside scripts too), MB used, PING p99 ms. Celery: "
        "tasks/s sent (LPUSH), round trip of a no-op"
    )
    lines.append(
        "host command in ms (rtt), CPU of the host processes. ctrl: control worker, drv: this "
        "load driver (same machine, same cores);"
    )
    lines.append("other: what the rest of the machine used meanwhile (another user's processes).")
    return "\n".join(lines)


def idle_table(steps: list[Step]) -> str:
    """What hosts cost by being there: the stack idle at each step."""
    head = (
        f"{'hosts':>5} {'calls/s':>8} {'per host':>8} {'host CPU ms/s':>13} {'redis cores':>11}"
        f" {'hosts RSS MB':>12} | {'create alone ms':>15} {'calls':>6} | per host and second"
    )
    lines = [head, _rule(head) + "-" * 30]
    for s in steps:
        w, n = s.idle, s.hosts
        per = {k: v / w.seconds / n for k, v in w.calls.most_common(4)}
        by = ", ".join(f"{k} {v:.2f}" for k, v in per.items())
        lines.append(
            f"{n:>5} {_num(w.calls_per_s):>8} {w.calls_per_s / n:>8.2f} "
            f"{w.cores['hosts'] * 1000 / n:>13.2f} {w.cores['redis']:>11.3f} "
            f"{w.rss_mb.get('hosts', 0):>12.0f} | {_ms(s.creates.ms(50)):>15} "
            f"{s.create_calls:>6.0f} | {by}"
        )
    lines.append(_rule(head) + "-" * 30)
    lines.append(
        "idle: no client request (earlier steps' sandboxes and open agent WebSockets stay: their "
        "reconcile and stream reads count)."
    )
    lines.append(
        "create alone: a create + delete with nothing else asked (p50 of 5), and the Redis calls "
        "each made (inside scripts too)."
    )
    return "\n".join(lines)


def knee(steps: list[Step]) -> tuple[Step | None, str]:
    """The first step past which the load stops scaling: each client gets under 80% of the
    operations per second it got at the first step, or the exec's median is more than four
    times the first step's. (None, why) when no step is."""
    base = steps[0]
    rate0 = base.ops_per_s / base.clients if base.clients else 0.0
    p50_0 = base.rec.ops["exec"].ms(50)
    for s in steps[1:]:
        rate = s.ops_per_s / s.clients if s.clients else 0.0
        p50 = s.rec.ops["exec"].ms(50)
        if rate0 and rate < 0.8 * rate0:
            return s, f"each client {rate:.2f} ops/s against {rate0:.2f} at {base.hosts}"
        if p50_0 and p50 and p50 > 4 * p50_0:
            return s, f"exec p50 {p50:.0f} ms against {p50_0:.0f} ms at {base.hosts}"
    return None, f"no knee up to {steps[-1].hosts} hosts"


def bottleneck(steps: list[Step], exec_sent: float | None, exec_calls: float | None) -> str:
    """Where the load stops scaling, what each tier used there, and what one core of each
    carries (the per-core figures are what grows past this machine)."""
    if not steps:
        return "no step measured"
    at, why = knee(steps)
    lines = [f"knee: {at.hosts} hosts, {at.clients} clients ({why})" if at else why]
    top = at or max(steps, key=lambda s: s.ops_per_s)
    w = top.load
    shares = ", ".join(f"{t} {c:.2f}" for t, c in sorted(w.cores.items(), key=lambda kv: -kv[1]))
    peaks = ", ".join(f"{t} {c:.2f}" for t, c in sorted(w.peak.items(), key=lambda kv: -kv[1]))
    lines.append(
        f"there ({top.ops_per_s:.0f} ops/s): cores busy {sum(w.cores.values()):.2f} of "
        f"{len(os.sched_getaffinity(0))} ({shares}); busiest single process: {peaks}"
    )
    ops = top.ops_per_s or 1.0
    per_op = {t: w.cores[t] / ops * 1000 for t in ("web", "redis", "hosts")}
    lines.append(
        "CPU ms per operation of this mix: "
        + ", ".join(f"{t} {v:.2f}" for t, v in per_op.items())
        + f"; Redis calls per operation {w.calls_per_s / ops:.0f}"
    )
    cap = {t: 1000 / v if v > 0 else float("inf") for t, v in per_op.items()}
    lines.append(
        f"one core carries: web {cap['web']:.0f} ops/s (add replicas), hosts "
        f"{cap['hosts']:.0f} ops/s (add hosts), Redis {cap['redis']:.0f} ops/s: the one tier "
        "that cannot add a core (one thread)"
    )
    if exec_sent and exec_calls and w.calls_per_s and w.cores["redis"] > 0.01:
        us = w.cores["redis"] / w.calls_per_s * 1e6
        lines.append(
            f"Redis at {us:.1f} us per call here ({w.cores['redis']:.2f} cores busy; less per "
            f"call when busier): one core = {1e6 / us / exec_calls:.0f} execs/s alone "
            f"({exec_calls:.0f} calls, {exec_sent:.0f} commands sent per exec)"
        )
    first, last = steps[0], steps[-1]
    if last.hosts > first.hosts and last.creates.ok and first.creates.ok:
        slope = (last.create_calls - first.create_calls) / (last.hosts - first.hosts)
        lines.append(
            f"a create + delete alone: {first.create_calls:.0f} Redis calls and "
            f"{_ms(first.creates.ms(50))} ms at {first.hosts} hosts, {last.create_calls:.0f} "
            f"and {_ms(last.creates.ms(50))} ms at {last.hosts}: {slope:.1f} calls more per "
            f"host (10,000 hosts: {first.create_calls + slope * (10000 - first.hosts):.0f} a "
            "create)"
        )
    per_host = last.idle.calls_per_s / last.hosts
    lines.append(
        f"idle hosts: {per_host:.1f} Redis calls/s each at {last.hosts} hosts: 10,000 hosts = "
        f"{per_host * 10000:.0f} calls/s before any request"
    )
    return "\n".join(lines)


def routes_table(step: Step) -> str:
    """Every route's requests at one step: count, p50, p99, failures."""
    head = (
        f"{'route at ' + str(step.hosts) + ' hosts':<44} {'n':>6} {'p50':>7} {'p99':>7} {'err':>4}"
    )
    lines = [head, _rule(head)]
    for route, s in sorted(step.rec.routes.items()):
        lines.append(
            f"{route:<44} {s.ok:>6} {_ms(s.ms(50)):>7} {_ms(s.ms(99)):>7} "
            f"{sum(s.errors.values()):>4}"
        )
    lines.append(_rule(head))
    return "\n".join(lines)


def plot(steps: list[Step], path: Path) -> str | None:
    """Throughput and p99 against hosts (the load grows with them) for each tier, as a PNG.
    Returns why not when matplotlib is missing (a dev dependency)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[dev]' or make bootstrap)"
    x = [s.hosts for s in steps]
    panels: list[tuple[str, str, list[float], str, list[float | None]]] = [
        (
            "web tier",
            "requests/s",
            [s.requests_per_s for s in steps],
            "p99 ms",
            [s.rec.web.ms(99) for s in steps],
        ),
        (
            "Redis",
            "calls/s",
            [s.load.calls_per_s for s in steps],
            "PING p99 ms",
            [s.ping.ms(99) for s in steps],
        ),
        (
            "Celery (host queues)",
            "tasks/s",
            [s.load.rate("lpush") for s in steps],
            "no-op round trip p99 ms",
            [s.rtt.ms(99) for s in steps],
        ),
        (
            "operations (whole mix)",
            "ops/s",
            [s.ops_per_s for s in steps],
            "exec p99 ms",
            [s.rec.ops["exec"].ms(99) for s in steps],
        ),
        (
            "idle hosts (heartbeat, reconcile, polls)",
            "Redis calls/s, all hosts",
            [s.idle.calls_per_s for s in steps],
            "host CPU ms/s per host",
            [s.idle.cores["hosts"] * 1000 / s.hosts for s in steps],
        ),
    ]
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 3.2 * len(panels)), sharex=True)
    for ax, (title, left, ys, right, ps) in zip(axes, panels, strict=True):
        ax.plot(x, ys, "o-", color="tab:blue")
        ax.set_ylabel(left, color="tab:blue")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        twin = ax.twinx()
        twin.plot(x, [p if p is not None else float("nan") for p in ps], "s--", color="tab:red")
        twin.set_ylabel(right, color="tab:red")
    axes[-1].set_xlabel("simulated hosts (clients grow with them)")
    axes[-1].set_xscale("log")
    axes[-1].set_xticks(x, [str(n) for n in x])
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return None
