"""``python -m bench``: start a real stack, measure Paddock and raw Docker side by side, then
(on a second stack) what thousands of open long-polls and WebSockets cost everyone else; print
the tables (and write them as JSON). Exit 0 on success, 1 with a message when anything fails."""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import docker.errors

from bench.concurrency import bench_concurrency
from bench.report import HIGHER_IS_BETTER, Figure, Report, latency_figures, machine_info
from bench.targets import (
    RUN_ERRORS,
    BenchError,
    Flood,
    PaddockTarget,
    RawDocker,
    logs_on_failure,
    template_image,
)
from devstack.stack import Stack


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def bench_create(pd: PaddockTarget, raw: RawDocker, n: int, report: Report) -> None:
    """Create, first command, delete: ``n`` of each, interleaved so drift hits both alike."""
    samples: dict[str, list[float]] = {
        k: []
        for k in ("pd_create", "pd_ready", "pd_delete", "raw_create", "raw_ready", "raw_delete")
    }

    def paddock(keep: bool) -> None:
        t_create, sid = timed(pd.create)
        t_true, _ = timed(lambda: pd.true(sid))
        t_delete, _ = timed(lambda: pd.delete(sid))
        if keep:
            samples["pd_create"].append(t_create)
            samples["pd_ready"].append(t_create + t_true)
            samples["pd_delete"].append(t_delete)

    def direct(keep: bool) -> None:
        t_create, c = timed(raw.create)
        t_true, _ = timed(lambda: raw.true(c))
        t_delete, _ = timed(lambda: raw.delete(c))
        if keep:
            samples["raw_create"].append(t_create)
            samples["raw_ready"].append(t_create + t_true)
            samples["raw_delete"].append(t_delete)

    paddock(False)  # warm-up: first use of the image, connections, worker threads
    direct(False)
    for i in range(n):
        for step in (paddock, direct) if i % 2 == 0 else (direct, paddock):
            step(True)
        log(f"create {i + 1}/{n}")
    report.figures += latency_figures(
        "create (answer)", samples["pd_create"], samples["raw_create"]
    )
    report.figures += latency_figures(
        "create + first exec", samples["pd_ready"], samples["raw_ready"]
    )
    report.figures += latency_figures("delete", samples["pd_delete"], samples["raw_delete"])
    report.raw_samples.update(samples)


def bench_exec(
    pd: PaddockTarget,
    raw: RawDocker,
    sid: str,
    container: Any,
    n: int,
    warmups: int,
    report: Report,
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
    log(f"exec {n}/{n}")
    report.figures += latency_figures("exec echo 22 round trip", pd_s, raw_s)
    report.raw_samples.update({"pd_exec": pd_s, "raw_exec": raw_s})


def bench_flood(
    pd: PaddockTarget,
    raw: RawDocker,
    sid: str,
    container: Any,
    flood: Flood,
    runs: int,
    report: Report,
) -> None:
    """Stdout throughput: the whole output read back through each path."""
    pd_s: list[float] = []
    raw_s: list[float] = []
    for i in range(runs):
        t_raw, count = timed(lambda: raw.stream_flood(container, flood))
        if count != flood.stdout_bytes:
            raise BenchError(f"raw flood: {count} bytes, expected {flood.stdout_bytes}")
        raw_s.append(t_raw)
        log(f"flood {i + 1}/{runs}: raw docker {flood.stdout_bytes / t_raw / 1e6:.0f} MB/s")
        t_pd, body = timed(lambda: pd.fetch_flood(sid, flood))
        json_mb = len(body) / 1e6
        count = PaddockTarget.check_flood(body, flood)  # parsing is outside the timed part
        del body
        pd_s.append(t_pd)
        log(
            f"flood {i + 1}/{runs}: paddock {count / t_pd / 1e6:.1f} MB/s "
            f"({json_mb:.0f} MB of JSON in {t_pd:.1f} s)"
        )
    mb = flood.stdout_bytes / 1e6
    pd_rate = mb / statistics.median(pd_s)
    raw_rate = mb / statistics.median(raw_s)
    report.figures.append(
        Figure(f"stdout {mb:.0f} MB, median", "MB/s", pd_rate, raw_rate, HIGHER_IS_BETTER, runs)
    )
    report.raw_samples.update({"pd_flood": pd_s, "raw_flood": raw_s})


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
    with tempfile.TemporaryDirectory(prefix="paddock-bench-") as tmp:
        log("starting the stack (redis-server, host worker, control worker, gunicorn)")
        # The flood measures throughput, not the output caps: room for every run's output.
        budget = str(flood.stdout_bytes * (args.flood_runs + 1) + (64 << 20))
        env = {
            "PADDOCK_MAX_OUTPUT_BYTES": budget,
            "PADDOCK_SANDBOX_OUTPUT_BYTES": budget,
            "PADDOCK_TENANT_OUTPUT_BYTES": budget,
        }
        stack = Stack(Path(tmp), hosts=("bench",), env=env)
        raw = RawDocker(client, image, stack.instance)
        try:
            with stack, logs_on_failure(stack, ("web", "worker-bench"), log):
                pd = PaddockTarget(stack.url, stack.http, args.env)
                bench_create(pd, raw, args.creates, report)
                sid = pd.create()
                container = raw.create()
                bench_exec(pd, raw, sid, container, args.execs, args.warmups, report)
                bench_flood(pd, raw, sid, container, flood, args.flood_runs, report)
                pd.delete(sid)
        finally:
            raw.remove_all()
    report.notes = [
        f"environment {args.env}; raw containers get the sandboxes' hardening and limits",
        "create (answer): POST /sessions vs containers.run",
        "create + first exec: that plus `true` (wait=true) vs that plus exec_run(['true'])",
        "delete: DELETE /sessions/{id} vs container.remove(force=True)",
        "exec: POST .../processes?wait=true {cmd: 'echo 22'} vs exec_run(bash -c 'echo 22')",
        "stdout: whole JSON answer received (parsed and checked untimed) vs exec stream counted"
        " (the bench stack's output caps are raised to fit the flood)",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--env", default="Bash", help="template to use (default: %(default)s)")
    parser.add_argument("--creates", type=int, default=10, help="sandboxes created per side")
    parser.add_argument("--execs", type=int, default=50, help="timed `echo 22` per side")
    parser.add_argument("--warmups", type=int, default=5, help="untimed `echo 22` per side")
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
    if min(args.creates, args.execs, args.flood_runs, args.flood_mb) < 1 or args.warmups < 0:
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
