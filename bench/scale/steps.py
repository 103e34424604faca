"""The steps of ``make scale``: for each number of hosts N, start hosts up to N, measure the
stack idle (heartbeats, reconcile, broker polls: what hosts cost by being there), then grow
the clients to N x clients-per-host and measure a window of load."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

from bench.scale.load import Driver, Mix, Probes, Recorded
from bench.scale.measure import (
    Samples,
    calls_between,
    cpu_seconds,
    descendants,
    machine_busy_seconds,
    read_redis,
    rss_mb,
)
from bench.scale.stack import ScaleStack
from shared.settings import Settings

TIERS = ("web", "redis", "hosts", "control", "driver")
CREATES_ALONE = 5  # creates + deletes timed one at a time at each step, before the load


async def _collect(work: Awaitable[Samples], into: list[Samples]) -> None:
    into.append(await work)


def log(message: str) -> None:
    print(f"scale: {message}", file=sys.stderr, flush=True)


@dataclass
class Window:
    """One measured window: Redis calls of each command, memory, and the CPU each tier used
    (in cores: CPU seconds per second)."""

    seconds: float
    calls: Counter[str]
    redis_mb: float
    cores: dict[str, float]
    rss_mb: dict[str, float] = field(default_factory=dict)
    # The busiest single process of each tier, in cores: near 1.0 is a process (a Python
    # process's GIL, Redis's one thread) at its ceiling, however many cores are left.
    peak: dict[str, float] = field(default_factory=dict)

    @property
    def calls_per_s(self) -> float:
        return sum(self.calls.values()) / self.seconds if self.seconds else 0.0

    def rate(self, command: str) -> float:
        return self.calls.get(command, 0) / self.seconds if self.seconds else 0.0


@dataclass
class Step:
    hosts: int
    clients: int
    hosts_start_s: float
    idle: Window
    load: Window
    rec: Recorded
    rtt: Samples
    ping: Samples
    # Creates + deletes one at a time before the load: their latency and Redis calls each.
    creates: Samples = field(default_factory=Samples)
    create_calls: float = 0.0

    @property
    def ops_per_s(self) -> float:
        return self.rec.ops_ok / self.rec.seconds if self.rec.seconds else 0.0

    @property
    def requests_per_s(self) -> float:
        ok = self.rec.web.ok + self.rec.waits.ok
        return ok / self.rec.seconds if self.rec.seconds else 0.0

    def to_json(self) -> dict[str, Any]:
        def window(w: Window) -> dict[str, Any]:
            return {
                "seconds": w.seconds,
                "calls_per_s": w.calls_per_s,
                "calls": dict(w.calls.most_common()),
                "redis_mb": w.redis_mb,
                "cores": w.cores,
                "rss_mb": w.rss_mb,
                "peak_process_cores": w.peak,
            }

        def samples(s: Samples) -> dict[str, Any]:
            return {
                "ok": s.ok,
                "errors": dict(s.errors),
                **{f"p{p}_ms": s.ms(p) for p in (50, 90, 99)},
            }

        return {
            "hosts": self.hosts,
            "clients": self.clients,
            "hosts_start_s": self.hosts_start_s,
            "ops_per_s": self.ops_per_s,
            "requests_per_s": self.requests_per_s,
            "ops": {name: samples(s) for name, s in self.rec.ops.items()},
            "web": samples(self.rec.web),
            "routes": {route: samples(s) for route, s in sorted(self.rec.routes.items())},
            "long_poll_waits": samples(self.rec.waits),
            "celery_round_trip": samples(self.rtt),
            "redis_ping": samples(self.ping),
            "create_delete_alone": {**samples(self.creates), "redis_calls": self.create_calls},
            "idle": window(self.idle),
            "load": window(self.load),
        }


class Meter:
    """Reads Redis and each tier's CPU at the start and end of a window."""

    def __init__(self, stack: ScaleStack) -> None:
        self.stack = stack

    def _pids(self) -> dict[str, set[int]]:
        st = self.stack
        return {
            "web": descendants(st.pids("web")),
            "redis": set(st.pids("redis")),
            "hosts": descendants(st.pids("host")),
            "control": descendants(st.pids("control")),
            "driver": {os.getpid()},
        }

    async def measure(self, during: Any) -> Window:
        """Run the awaitable ``during`` between two readings."""
        pids = self._pids()
        a = read_redis(self.stack.redis)
        cpu0 = {pid: cpu_seconds([pid]) for p in pids.values() for pid in p}
        busy0 = machine_busy_seconds()
        await during
        busy1 = machine_busy_seconds()
        pids = self._pids()
        cpu1 = {pid: cpu_seconds([pid]) for p in pids.values() for pid in p}
        b = read_redis(self.stack.redis)
        seconds = b.at - a.at
        used = {pid: max(0.0, cpu1[pid] - cpu0.get(pid, 0.0)) / seconds for pid in cpu1}
        cores = {t: sum(used[pid] for pid in pids[t]) for t in TIERS}
        peak = {t: max((used[pid] for pid in pids[t]), default=0.0) for t in TIERS}
        # What else ran on the machine meanwhile (other users of a shared machine).
        cores["other"] = max(0.0, (busy1 - busy0) / seconds - sum(cores.values()))
        return Window(
            seconds,
            calls_between(a, b),
            b.used_memory / (1 << 20),
            cores,
            {t: rss_mb(p) for t, p in pids.items()},
            peak,
        )


async def run_steps(
    stack: ScaleStack,
    counts: list[int],
    clients_per_host: float,
    max_clients: int,
    idle_s: float,
    load_s: float,
    mix: Mix,
) -> list[Step]:
    """Every step in ``counts`` (hosts, ascending), as the module docstring says."""
    settings = Settings.from_env(stack.env)
    driver = Driver(stack.url, stack.redis, mix)
    meter = Meter(stack)
    steps: list[Step] = []
    try:
        for n in counts:
            log(f"{n} hosts: starting them")
            started = await asyncio.to_thread(stack.add_hosts, n)
            await asyncio.sleep(2.0)  # a heartbeat of every new host at least
            log(f"{n} hosts: idle for {idle_s:.0f} s")
            idle = await meter.measure(asyncio.sleep(idle_s))
            clients = min(max_clients, max(1, round(n * clients_per_host)))
            log(f"{n} hosts: {clients} clients (new ones get a tenant, sandbox and session)")
            t0 = time.monotonic()
            await driver.grow(clients)
            log(f"{n} hosts: clients ready in {time.monotonic() - t0:.1f} s")
            alone: list[Samples] = []
            created = await meter.measure(_collect(driver.creates_alone(CREATES_ALONE), alone))
            background = idle.calls_per_s * created.seconds
            create_calls = max(0.0, sum(created.calls.values()) - background) / CREATES_ALONE
            log(f"{n} hosts: {CREATES_ALONE} creates alone; load {load_s:.0f} s")
            probes = Probes(settings, stack.redis, list(stack.hosts))
            probes.start()
            work = asyncio.ensure_future(driver.run(load_s))
            try:
                load = await meter.measure(work)
            finally:
                rtt, ping = await asyncio.to_thread(probes.stop)
            step = Step(
                n, clients, started, idle, load, work.result(), rtt, ping, alone[0], create_calls
            )
            steps.append(step)
            p99 = step.rec.ops["exec"].ms(99) or 0.0
            busy, other = sum(load.cores.values()), load.cores["other"]
            log(
                f"{n} hosts: {step.ops_per_s:.0f} ops/s, {step.rec.ops_failed} failed, Redis "
                f"{load.calls_per_s:.0f} calls/s, exec p99 {p99:.0f} ms, machine {busy:.2f} "
                f"cores ({other:.2f} not ours)"
            )
    finally:
        await driver.close()
    return steps
