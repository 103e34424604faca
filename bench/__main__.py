"""``python -m bench``: start a real stack per sandbox backend (docker, then supervisor), measure
each beside raw Docker and the parts of an exec alone, then (on one more stack) what thousands
of open long-polls and WebSockets cost everyone else; print the tables (and write them as
JSON). Exit 0 on success, 1 with a message when anything fails."""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import docker
import docker.errors

from bench.breakdown import Parts, measure_stack_parts, measure_supervisor
from bench.concurrency import bench_concurrency
from bench.memory import Memory, container_memory
from bench.report import (
    BACKENDS,
    HIGHER_IS_BETTER,
    LOWER_IS_BETTER,
    Figure,
    Report,
    Target,
    latency_figures,
    machine_info,
    percentile,
)
from bench.targets import (
    RUN_ERRORS,
    BenchError,
    Flood,
    Lines,
    PaddockTarget,
    RawDocker,
    logs_on_failure,
    template_image,
)
from devstack.stack import Stack
from shared.pools import Pools
from workers.backends.docker.driver import LABEL_INSTANCE, LABEL_SANDBOX
from workers.backends.supervisor.build import build as build_supervisor


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


@dataclass
class Phase:
    """What one stack (one sandbox backend) measured, and raw Docker beside it."""

    backend: str
    pd: dict[str, list[float]] = field(default_factory=dict)  # figure key -> seconds
    raw: dict[str, list[float]] = field(default_factory=dict)
    memory: Memory | None = None
    raw_memory: Memory | None = None
    parts: Parts | None = None


def bench_create(pd: PaddockTarget, raw: RawDocker, n: int, phase: Phase) -> None:
    """Create, first command, delete: ``n`` of each, interleaved so drift hits both alike.
    Cold: a new container each time (the stack has no warm pool; see bench_create_warm)."""
    for key in ("create", "ready", "delete"):
        phase.pd[key], phase.raw[key] = [], []

    def paddock(keep: bool) -> None:
        t_create, sid = timed(pd.create)
        t_true, _ = timed(lambda: pd.true(sid))
        t_delete, _ = timed(lambda: pd.delete(sid))
        if keep:
            phase.pd["create"].append(t_create)
            phase.pd["ready"].append(t_create + t_true)
            phase.pd["delete"].append(t_delete)

    def direct(keep: bool) -> None:
        t_create, c = timed(raw.create)
        t_true, _ = timed(lambda: raw.true(c))
        t_delete, _ = timed(lambda: raw.delete(c))
        if keep:
            phase.raw["create"].append(t_create)
            phase.raw["ready"].append(t_create + t_true)
            phase.raw["delete"].append(t_delete)

    paddock(False)  # warm-up: first use of the image, connections, worker threads
    direct(False)
    for i in range(n):
        for step in (paddock, direct) if i % 2 == 0 else (direct, paddock):
            step(True)
        if (i + 1) % 10 == 0 or i + 1 == n:
            log(f"{phase.backend}: create {i + 1}/{n}")


def bench_create_warm(
    workdir: Path, env: dict[str, str], env_id: str, n: int
) -> list[float] | None:
    """Create + first command from a warm pool (issue 12): a stack of its own (the cold
    figure's stack has no pool, so each of its creates starts a container), with a pool of
    one ``env_id`` sandbox; ``n`` times: wait until the pool is full, then time pd.create +
    pd.true (the create claims the warm sandbox), then delete it (untimed)."""
    mode = env.get("PADDOCK_SANDBOX_NETWORK") or "internet"
    stack = Stack(workdir, hosts=("bench",), env={**env, "PADDOCK_POOL_SIZES": f"{env_id}=1"})
    with stack, logs_on_failure(stack, ("web", "worker-bench"), log):
        pd = PaddockTarget(stack.url, stack.http, env_id)
        pools = Pools(stack.redis)

        def full() -> None:
            deadline = time.monotonic() + 120
            while not pools.ready_ids("bench", env_id, mode):
                if time.monotonic() > deadline:
                    raise RuntimeError("the warm pool did not fill within 120 s")
                time.sleep(0.05)

        out: list[float] = []
        for i in range(n + 1):  # the first: warm-up
            full()
            t_create, sid = timed(pd.create)
            t_true, _ = timed(lambda sid=sid: pd.true(sid))
            pd.delete(sid)
            if i:
                out.append(t_create + t_true)
            if i and (i % 10 == 0 or i == n):
                log(f"warm pool: create {i}/{n}")
        return out


def bench_exec(
    pd: PaddockTarget, raw: RawDocker, sid: str, container: Any, n: int, warmups: int, phase: Phase
) -> None:
    """``echo 22`` round trips, output checked both ways."""
    for _ in range(warmups):
        pd.echo(sid)
        raw.echo(container)
    pd_s: list[float] = []
    raw_s: list[float] = []
    for i in range(n):
        first, second = ((pd_s, lambda: pd.echo(sid)), (raw_s, lambda: raw.echo(container)))
        for into, fn in (first, second) if i % 2 == 0 else (second, first):
            into.append(timed(fn)[0])
    log(f"{phase.backend}: exec {n}/{n}")
    phase.pd["exec"], phase.raw["exec"] = pd_s, raw_s


def bench_lines(
    pd: PaddockTarget,
    raw: RawDocker,
    sid: str,
    container: Any,
    lines: Lines,
    runs: int,
    phase: Phase,
) -> None:
    """``seq 1 N`` with wait=true: the whole answer received (parsed and checked untimed)."""
    pd_s: list[float] = []
    raw_s: list[float] = []
    for i in range(runs + 1):  # the first of each: warm-up
        t_raw, _ = timed(lambda: raw.lines(container, lines))
        t_pd, body = timed(lambda: pd.fetch_lines(sid, lines))
        PaddockTarget.check_lines(body, lines)
        if i:
            raw_s.append(t_raw)
            pd_s.append(t_pd)
    log(f"{phase.backend}: {lines.count} lines {runs}/{runs}")
    phase.pd["lines"], phase.raw["lines"] = pd_s, raw_s


def bench_flood(
    pd: PaddockTarget,
    raw: RawDocker,
    sid: str,
    container: Any,
    flood: Flood,
    runs: int,
    phase: Phase,
) -> None:
    """Stdout throughput: the whole output read back through each path."""
    pd_s: list[float] = []
    raw_s: list[float] = []
    for i in range(runs):
        t_raw, count = timed(lambda: raw.stream_flood(container, flood))
        if count != flood.stdout_bytes:
            raise BenchError(f"raw flood: {count} bytes, expected {flood.stdout_bytes}")
        raw_s.append(t_raw)
        t_pd, body = timed(lambda: pd.fetch_flood(sid, flood))
        json_mb = len(body) / 1e6
        count = PaddockTarget.check_flood(body, flood)  # parsing is outside the timed part
        del body
        pd_s.append(t_pd)
        log(
            f"{phase.backend}: flood {i + 1}/{runs}: raw docker "
            f"{flood.stdout_bytes / t_raw / 1e6:.0f} MB/s, paddock {count / t_pd / 1e6:.1f} MB/s "
            f"({json_mb:.0f} MB of JSON in {t_pd:.1f} s)"
        )
    phase.pd["flood"], phase.raw["flood"] = pd_s, raw_s


def idle_memory(client: Any, stack: Stack, sid: str, container: Any) -> tuple[Memory, Memory]:
    """The idle sandbox's memory and the idle raw container's, after a settling second (both
    have run one command)."""
    found = client.containers.list(
        filters={"label": [f"{LABEL_SANDBOX}={sid}", f"{LABEL_INSTANCE}={stack.instance}"]}
    )
    if len(found) != 1:
        raise BenchError(f"sandbox {sid}: {len(found)} containers found")
    time.sleep(1.0)
    return container_memory(str(found[0].id)), container_memory(str(container.id))


def run(args: argparse.Namespace) -> Report:
    client = docker.from_env(timeout=600)
    image = template_image(client, args.env)
    report = Report(machine=machine_info(str(client.version().get("Version", "?"))))
    if args.only != "concurrency":
        run_latency(args, client, image, report)
    if args.only != "latency" and (args.waits or args.sockets):
        with tempfile.TemporaryDirectory(prefix="paddock-bench-load-") as tmp:
            log(f"concurrency: starting a stack ({args.waits} long-polls, {args.sockets} sockets)")
            report.load, report.load_notes = bench_concurrency(
                Path(tmp), args.waits, args.sockets, args.load_health, args.load_execs, args.env
            )
    return report


def run_latency(args: argparse.Namespace, client: Any, image: str, report: Report) -> None:
    flood = Flood(args.flood_mb * 1_000_000)
    lines = Lines(args.lines)
    binary = build_supervisor() if "supervisor" in args.backends else None
    phases: list[Phase] = []
    for backend in args.backends:
        phase = Phase(backend)
        with tempfile.TemporaryDirectory(prefix="paddock-bench-") as tmp:
            log(f"{backend}: starting a stack (redis-server, host worker, control worker, web)")
            # The flood measures throughput, not the output caps: room for every run's output.
            budget = str(flood.stdout_bytes * (args.flood_runs + 1) + (64 << 20))
            env = {
                "PADDOCK_MAX_OUTPUT_BYTES": budget,
                "PADDOCK_SANDBOX_OUTPUT_BYTES": budget,
                "PADDOCK_TENANT_OUTPUT_BYTES": budget,
                "PADDOCK_SANDBOX_BACKEND": backend,
                **({"PADDOCK_SUPERVISOR_BINARY": str(binary)} if binary else {}),
            }
            stack = Stack(Path(tmp), hosts=("bench",), env=env)
            raw = RawDocker(client, image, stack.instance)
            try:
                with stack, logs_on_failure(stack, ("web", "worker-bench"), log):
                    pd = PaddockTarget(stack.url, stack.http, args.env)
                    bench_create(pd, raw, args.creates, phase)
                    warm = bench_create_warm(Path(tmp) / "warm", env, args.env, args.creates)
                    if warm is not None:
                        phase.pd["ready_warm"] = warm
                    sid = pd.create()
                    container = raw.create()
                    pd.true(sid)
                    raw.true(container)
                    phase.memory, phase.raw_memory = idle_memory(client, stack, sid, container)
                    bench_exec(pd, raw, sid, container, args.execs, args.warmups, phase)
                    bench_lines(pd, raw, sid, container, lines, args.lines_runs, phase)
                    bench_flood(pd, raw, sid, container, flood, args.flood_runs, phase)
                    log(f"{backend}: the exec's parts (web, Redis, Celery)")
                    phase.parts = measure_stack_parts(stack, pd, sid, args.parts, args.warmups)
                    if binary is not None and backend == "supervisor":
                        log(f"{backend}: the supervisor alone")
                        measure_supervisor(raw, binary, args.parts, args.warmups, phase.parts)
                    pd.delete(sid)
            finally:
                raw.remove_all()
        phases.append(phase)
    report.figures = figures(phases, flood, lines)
    report.breakdown, report.breakdown_ms = breakdown(phases)
    for phase in phases:
        for key, values in phase.pd.items():
            report.raw_samples[f"{phase.backend}:pd_{key}"] = values
        for key, values in phase.raw.items():
            report.raw_samples[f"{phase.backend}:raw_{key}"] = values
        if phase.parts:
            report.raw_samples.update(phase.parts.samples(f"{phase.backend}:part"))
    report.notes = [
        f"environment {args.env}; one stack per backend, one after the other; raw containers "
        "get the sandboxes' hardening and limits",
        "exec: POST /sessions/{id}/processes?wait=true {cmd: 'echo 22'} vs "
        "exec_run(bash -c 'echo 22') on a started container",
        "create + first command, cold: POST /sessions + `true` (wait=true) vs containers.run "
        "+ exec_run(['true']); warm pool: the same, claiming a started sandbox (a stack with a "
        "pool of one, full before each create)",
        f"{lines.count:,} lines: `{lines.cmd}` with wait=true, whole JSON answer received "
        "(parsed and checked untimed) vs exec_run's whole output",
        "idle memory: a sandbox that ran `true`, 1 s later, from its memory cgroup on the host "
        "(working set = usage less inactive page cache; RSS = anonymous memory); supervisor "
        "RSS: VmRSS of the container's paddock-supervisor process; raw: a `sleep` container",
        "create (answer): POST /sessions vs containers.run; delete: DELETE /sessions/{id} vs "
        "container.remove(force=True)",
        "stdout: whole JSON answer received (parsed and checked untimed) vs exec stream counted"
        " (the bench stack's output caps are raised to fit the flood)",
        "parts: /health on a keep-alive connection; PING from the bench; a host command that "
        "does no sandbox work (ProcessKill of an unknown process) through shared.rpc; the "
        "supervisor alone on a container of the bench's own (raw for 'spawn bash -c': raw "
        "exec)",
    ]


def _pooled(phases: list[Phase], key: str) -> list[float]:
    return [v for phase in phases for v in phase.raw.get(key, [])]


def _by_backend(phases: list[Phase], get: Callable[[Phase], list[float]]) -> dict[str, list[float]]:
    return {b: next((get(p) for p in phases if p.backend == b), []) for b in BACKENDS}


def figures(phases: list[Phase], flood: Flood, lines: Lines) -> list[Figure]:
    def lat(key: str) -> dict[str, list[float]]:
        return _by_backend(phases, lambda p: p.pd.get(key, []))

    rows: list[Figure] = []
    rows += latency_figures(
        "exec echo 22 round trip",
        lat("exec"),
        _pooled(phases, "exec"),
        targets={50: Target("<= 0.3x", ratio=0.3)},
    )
    rows += latency_figures("create + first command, cold", lat("ready"), _pooled(phases, "ready"))
    warm = latency_figures(
        "create + first command, warm pool",
        lat("ready_warm"),
        _pooled(phases, "ready"),
        percentiles=(50,),
        targets={50: Target("<= 0.2x", ratio=0.2)},
    )
    rows += [replace(f, why_missing="no pool yet") for f in warm]
    rows += latency_figures(
        f"{lines.count:,} lines, wait=true",
        lat("lines"),
        _pooled(phases, "lines"),
        targets={50: Target("<= 2x", ratio=2.0)},
    )

    def mem(get: Callable[[Memory], float | None]) -> tuple[dict[str, float | None], float | None]:
        values = {
            b: next((get(p.memory) for p in phases if p.backend == b and p.memory), None)
            for b in BACKENDS
        }
        raw = next((get(p.raw_memory) for p in phases if p.raw_memory), None)
        return values, raw

    printed = Target("printed")
    for name, get, target in (
        ("idle sandbox memory, working set", lambda m: m.working_set, printed),
        ("idle sandbox memory, RSS", lambda m: m.rss, printed),
        ("idle supervisor RSS", lambda m: m.supervisor_rss, Target("< 5 MB", absolute=5.0)),
    ):
        values, raw = mem(get)
        rows.append(Figure(name, "MB", values, raw, LOWER_IS_BETTER, 1, target))
    rows += latency_figures("create (answer)", lat("create"), _pooled(phases, "create"))
    rows += latency_figures("delete", lat("delete"), _pooled(phases, "delete"))
    mb = flood.stdout_bytes / 1e6
    rate = {b: mb / statistics.median(v) if v else None for b, v in lat("flood").items()}
    raw_flood = _pooled(phases, "flood")
    rows.append(
        Figure(
            f"stdout {mb:.0f} MB, median",
            "MB/s",
            rate,
            mb / statistics.median(raw_flood) if raw_flood else None,
            HIGHER_IS_BETTER,
            len(raw_flood),
        )
    )

    def part(name: str) -> dict[str, list[float]]:
        return _by_backend(phases, lambda p: getattr(p.parts, name) if p.parts else [])

    rows += latency_figures("part: web tier, GET /health", part("web"), [], (50,))
    rows += latency_figures("part: Redis PING", part("redis"), [], (50,))
    rows += latency_figures("part: Celery host round trip", part("celery"), [], (50,))
    rows += latency_figures("part: supervisor hello", part("hello"), [], (50,))
    rows += latency_figures("part: supervisor spawn echo 22", part("spawn_echo"), [], (50,))
    rows += latency_figures(
        "part: supervisor spawn bash -c", part("spawn_shell"), _pooled(phases, "exec"), (50,)
    )
    return rows


def breakdown(phases: list[Phase]) -> tuple[list[str], dict[str, float]]:
    """The exec p50 of each backend beside its parts' p50s, and what the parts leave."""
    lines: list[str] = []
    numbers: dict[str, float] = {}
    for phase in phases:
        parts, execs = phase.parts, phase.pd.get("exec")
        if parts is None or not execs:
            continue

        def p50(values: list[float]) -> float:
            return percentile(values, 50) * 1000 if values else 0.0

        y = p50(execs)
        named = [("HTTP (web tier)", p50(parts.web)), ("Celery", p50(parts.celery))]
        named.append(("Redis", p50(parts.redis)))
        if parts.spawn_shell:
            named.append(("supervisor", p50(parts.spawn_shell)))
        x = sum(v for _, v in named)
        b = phase.backend
        numbers.update({f"{b}:exec_p50": y, f"{b}:parts_sum": x, f"{b}:remainder": y - x})
        numbers.update({f"{b}:{n.split()[0].lower()}": v for n, v in named})
        per = parts.redis_commands_per_exec
        if per is not None:
            numbers[f"{b}:redis_commands_per_exec"] = per
        lines.append(
            f"{b} backend: "
            + " + ".join(n.split()[0] for n, _ in named)
            + f" = {x:.1f} ms of {y:.1f} ms (exec p50): "
            + ", ".join(f"{n} {v:.2f}" for n, v in named)
            + f"; remainder {y - x:.1f} ms"
        )
        if b == "supervisor" and parts.spawn_echo:
            lines.append(
                f"  supervisor alone: hello (channel round trip, no fork) {p50(parts.hello):.2f}"
                f" ms, spawn echo 22 {p50(parts.spawn_echo):.2f} ms, as an exec runs it "
                f"(bash -c) {p50(parts.spawn_shell):.2f} ms"
            )
        if per is not None:
            lines.append(
                f"  Redis commands per exec (whole stack, idle background subtracted): {per:.0f}"
                f" (x PING {p50(parts.redis):.2f} ms = {per * p50(parts.redis):.1f} ms if each "
                "were its own round trip)"
            )
    if lines:
        lines.append(
            "  The Celery round trip includes its own Redis hops (task push, worker pop, reply);"
            " the remainder is the exec's other work: the web's auth, sandbox, slot and"
            " process-log calls, the worker's output pump, the wait's wake-up and the answer."
        )
    return lines, numbers


def _backends(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names or any(n not in BACKENDS for n in names) or len(set(names)) < len(names):
        raise argparse.ArgumentTypeError(f"a comma-separated list of {', '.join(BACKENDS)}")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--env", default="Bash", help="template to use (default: %(default)s)")
    parser.add_argument(
        "--backends",
        type=_backends,
        default=BACKENDS,
        help="sandbox backends to measure, comma-separated (default: docker,supervisor)",
    )
    parser.add_argument("--creates", type=int, default=30, help="sandboxes created per side")
    parser.add_argument("--execs", type=int, default=60, help="timed `echo 22` per side")
    parser.add_argument("--warmups", type=int, default=5, help="untimed runs before each figure")
    parser.add_argument("--lines", type=int, default=200_000, help="lines printed by `seq`")
    parser.add_argument("--lines-runs", type=int, default=5, help="timed `seq` runs per side")
    parser.add_argument("--parts", type=int, default=30, help="timed runs of each exec part")
    parser.add_argument("--flood-mb", type=int, default=200, help="stdout size in MB")
    parser.add_argument("--flood-runs", type=int, default=2, help="stdout runs per side")
    parser.add_argument(
        "--json",
        type=Path,
        default=Path(".paddock/bench.json"),
        help="where to write the results (default: %(default)s)",
    )
    parser.add_argument("--no-json", action="store_true", help="do not write the JSON file")
    parser.add_argument(
        "--only", choices=("latency", "concurrency"), help="run one section (default: both)"
    )
    parser.add_argument("--waits", type=int, default=1000, help="long-polls held open")
    parser.add_argument("--sockets", type=int, default=1000, help="WebSockets held open")
    parser.add_argument(
        "--load-health", type=int, default=500, help="timed /health, idle and loaded each"
    )
    parser.add_argument(
        "--load-execs", type=int, default=100, help="timed victim execs, idle and loaded each"
    )
    args = parser.parse_args(argv)
    counts = (args.creates, args.execs, args.flood_runs, args.flood_mb, args.lines, args.parts)
    if min(*counts, args.lines_runs) < 1 or args.warmups < 0:
        parser.error("counts and sizes must be positive")
    if min(args.waits, args.sockets) < 0 or min(args.load_health, args.load_execs) < 1:
        parser.error("counts must be positive (--waits/--sockets may be 0)")
    if max(args.waits, args.sockets) > 20_000:
        parser.error("--waits and --sockets are bounded at 20000")
    started = time.monotonic()
    try:
        report = run(args)
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    except RUN_ERRORS as exc:
        log(f"FAILED: {exc}")
        return 1
    print(report.header())
    if report.figures:
        print()
        print(report.table())
        for note in report.notes:
            print(f"  - {note}")
    if report.breakdown:
        print("\nWhere an exec's time goes (p50s, measured alone in the same run)")
        for line in report.breakdown:
            print(line)
    if report.load:
        print("\nConcurrency: what open long-polls and WebSockets cost everyone else")
        print(report.load_table())
        for note in report.load_notes:
            print(f"  - {note}")
    print(f"\n(total bench time {time.monotonic() - started:.0f} s)")
    if not args.no_json:
        report.write_json(args.json)
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
