"""``python -m bench.scale`` (``make scale``): where each tier of Paddock saturates as hosts and
load grow, on this one machine, with no container (bench/scale/README.md).

1. Redis commands per operation on an otherwise idle stack of one real host worker (``python
   -m workers host`` over the fake backend): an exec round trip, a create + delete, an idle
   stack per second, with a MONITOR trace of one of each;
2. a stack with N simulated hosts (real Celery host workers, many per process) for N in
   ``--hosts``, each step measured idle then under a mix of operations from N x
   ``--clients-per-host`` clients.

Prints the tables, writes ``scale.json``, ``scale.png`` and ``trace.txt`` (and the stacks'
logs) into ``--out`` (default .paddock/scale/<time>; .paddock is not committed). Exit 0 when
every operation succeeded, 1 when some failed (the tables are printed either way), 2 when
the run itself could not be done.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import sys
import time
from pathlib import Path

from bench.report import machine_info
from bench.scale import report
from bench.scale.costs import CostError, Costs, measure_costs
from bench.scale.load import Mix
from bench.scale.stack import ScaleStack
from bench.scale.steps import Step, log, run_steps
from devstack.stack import ROOT

FULL_HOSTS = "1,10,50,100,200"
QUICK_HOSTS = "1,10,50"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer steps, shorter windows (~1 min)")
    p.add_argument(
        "--hosts", help=f"host counts of the steps (default {FULL_HOSTS}; --quick {QUICK_HOSTS})"
    )
    p.add_argument(
        "--host-procs",
        type=int,
        default=2,
        help="OS processes the simulated hosts share (default 2: one per core)",
    )
    p.add_argument("--clients-per-host", type=float, default=1.0)
    p.add_argument("--max-clients", type=int, default=400)
    p.add_argument(
        "--think",
        type=float,
        default=1.0,
        help="seconds between a client's operations (x0.5-1.5 at random)",
    )
    p.add_argument("--idle", type=float, help="seconds of each idle window (10; quick 4)")
    p.add_argument("--load", type=float, help="seconds of each load window (20; quick 8)")
    p.add_argument("--reps", type=int, help="execs counted for the per-operation costs (60; 24)")
    p.add_argument(
        "--broker-redis",
        action="store_true",
        help="per-operation costs with Celery's broker on a second redis-server "
        "(PADDOCK_BROKER_URL): the state Redis and the broker's counted apart",
    )
    p.add_argument("--skip-costs", action="store_true", help="only the steps")
    p.add_argument("--skip-steps", action="store_true", help="only the per-operation costs")
    p.add_argument("--out", type=Path, help="output folder (default .paddock/scale/<time>)")
    args = p.parse_args(argv)
    args.hosts = [
        int(h) for h in (args.hosts or (QUICK_HOSTS if args.quick else FULL_HOSTS)).split(",")
    ]
    if sorted(args.hosts) != args.hosts or args.hosts[0] < 1:
        p.error("--hosts: ascending positive counts")
    args.idle = args.idle or (4.0 if args.quick else 10.0)
    args.load = args.load or (8.0 if args.quick else 20.0)
    args.reps = args.reps or (24 if args.quick else 60)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    args.out = args.out or ROOT / ".paddock" / "scale" / stamp
    return args


def costs_phase(args: argparse.Namespace) -> Costs:
    log("per-operation costs: one real host worker, idle Redis")
    with ScaleStack(args.out / "costs-stack", separate_broker=args.broker_redis) as stack:
        stack.start(solo=True)
        return measure_costs(stack, args.reps, args.idle, args.out / "trace.txt")


def steps_phase(args: argparse.Namespace) -> list[Step]:
    mix = Mix(think=args.think)
    with ScaleStack(args.out / "scale-stack", host_procs=args.host_procs) as stack:
        stack.start()
        return asyncio.run(
            run_steps(
                stack,
                args.hosts,
                args.clients_per_host,
                args.max_clients,
                args.idle,
                args.load,
                mix,
            )
        )


def _costs_json(costs: Costs) -> dict[str, object]:
    return {
        "idle_sent_per_s": costs.idle_sent,
        "idle_calls_per_s": costs.idle_calls,
        "ops": [{"name": o.name, "n": o.ops, "sent": o.sent, "calls": o.calls} for o in costs.ops],
        # With --broker-redis: the above is the state Redis's, this the broker's.
        **({"broker": _costs_json(costs.broker)} if costs.broker else {}),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    costs: Costs | None = None
    steps: list[Step] = []
    try:
        if not args.skip_costs:
            costs = costs_phase(args)
        if not args.skip_steps:
            steps = steps_phase(args)
    except (CostError, RuntimeError, OSError) as exc:
        log(f"the run failed: {exc} (logs in {args.out})")
        return 2
    machine = machine_info("-")
    print(
        f"\nPaddock scale — {machine['date']}, {machine['nproc']} CPUs, "
        f"{machine['memory_gib']:.1f} GiB, Python {machine['python']}; fake sandbox backend\n"
    )
    exec_sent = exec_calls = None
    if costs is not None:
        print(costs.table() + "\n")
        exec_sent, exec_calls = costs.ops[0].total_sent, costs.ops[0].total_calls
    if steps:
        print(report.load_table(steps) + "\n")
        print(report.tier_table(steps) + "\n")
        print(report.idle_table(steps) + "\n")
        at, _ = report.knee(steps)
        print(report.routes_table(at or steps[-1]) + "\n")
        print(report.bottleneck(steps, exec_sent, exec_calls) + "\n")
        why = report.plot(steps, args.out / "scale.png")
        print(f"plot: {why or args.out / 'scale.png'}")
    out = {
        "machine": machine,
        "args": {k: str(v) for k, v in vars(args).items()},
        "costs": None if costs is None else _costs_json(costs),
        "steps": [s.to_json() for s in steps],
    }
    (args.out / "scale.json").write_text(json.dumps(out, indent=2) + "\n")
    print(
        f"figures: {args.out / 'scale.json'}; trace of one exec: {args.out / 'trace.txt'}; "
        f"{time.monotonic() - started:.0f} s"
    )
    return 1 if any(s.rec.ops_failed for s in steps) else 0


if __name__ == "__main__":
    sys.exit(main())
