"""Where an exec's time goes: the parts of ``POST .../processes?wait=true`` timed alone, in the
same run, against the same stack.

- the web tier: ``GET /health`` on a keep-alive connection (routing, the WSGI stack, one read
  of the hosts' problems from Redis; no host, no sandbox);
- one Redis round trip: ``PING`` from this process to the stack's Redis;
- one Celery round trip to the sandbox's host that does no sandbox work: ``ProcessKill`` of a
  process id the host does not know (the task looks it up in memory, logs the task in Redis
  and replies ``killed: false``), through shared.rpc exactly as the web sends it;
- the supervisor alone: a Channel on the attached stdio of a container made as the backend
  makes a sandbox's (a container of the bench's own: a stack's sandbox's channel belongs to
  its worker), ``spawn(["echo", "22"]).wait()``, and the same through the backend's own
  ``bash -c`` in the sandbox's home, which is what an exec runs (workers/backends/supervisor
  backend.py ``spawn``);
- Redis commands per exec: the stack's Redis counter over a burst of execs, less the same
  window with nothing running (heartbeats, reaper).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import requests

from bench.targets import BenchError, PaddockTarget, RawDocker
from devstack.stack import Stack
from shared import commands, rpc
from shared.broker import make_celery
from shared.settings import Settings
from workers.backends.base import SANDBOX_HOME, SANDBOX_USER
from workers.backends.supervisor.channel import Channel
from workers.backends.supervisor.stdio import AttachedStdio


@dataclass
class Parts:
    """Durations in seconds of each part (see the module docstring); empty: not measured."""

    web: list[float] = field(default_factory=list)
    redis: list[float] = field(default_factory=list)
    celery: list[float] = field(default_factory=list)
    hello: list[float] = field(default_factory=list)  # supervisor channel round trip, no fork
    spawn_echo: list[float] = field(default_factory=list)
    spawn_shell: list[float] = field(default_factory=list)
    redis_commands_per_exec: float | None = None

    def samples(self, prefix: str) -> dict[str, list[float]]:
        return {
            f"{prefix}_{name}": values
            for name, values in (
                ("web", self.web),
                ("redis", self.redis),
                ("celery", self.celery),
                ("sup_hello", self.hello),
                ("sup_spawn_echo", self.spawn_echo),
                ("sup_spawn_shell", self.spawn_shell),
            )
            if values
        }


def _times(fn: Callable[[], None], n: int, warmups: int) -> list[float]:
    for _ in range(warmups):
        fn()
    out = []
    for _ in range(n):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


def measure_stack_parts(stack: Stack, pd: PaddockTarget, sid: str, n: int, warmups: int) -> Parts:
    """The web tier, Redis and Celery parts, and Redis commands per exec, on ``stack``
    (``sid``: a running sandbox of it on host "bench")."""
    parts = Parts()
    http = requests.Session()

    def health() -> None:
        r = http.get(f"{stack.url}/health", timeout=60)
        if r.status_code != 200:
            raise BenchError(f"/health answered {r.status_code}")

    parts.web = _times(health, n, warmups)

    def ping() -> None:
        if not stack.redis.ping():
            raise BenchError("Redis did not answer PING")

    parts.redis = _times(ping, n, warmups)

    celery = make_celery(Settings.from_env(stack.env), name="paddock-bench")
    kill = commands.ProcessKill(sandbox_id=sid, process_id="bench-no-such-process")

    def host_round_trip() -> None:
        reply = rpc.call(celery, stack.redis, "bench", kill.name, kill.to_kwargs(), 60)
        if reply["value"] != {"killed": False}:
            raise BenchError(f"the no-op host command answered {reply}")

    try:
        parts.celery = _times(host_round_trip, n, warmups)
    finally:
        celery.close()
    parts.redis_commands_per_exec = _redis_commands_per_exec(stack, pd, sid, max(5, n // 3))
    return parts


def _redis_commands_per_exec(stack: Stack, pd: PaddockTarget, sid: str, n: int) -> float:
    def processed() -> int:
        return int(stack.redis.info("stats")["total_commands_processed"])

    before = processed()
    started = time.monotonic()
    for _ in range(n):
        pd.echo(sid)
    elapsed = time.monotonic() - started
    busy = processed() - before
    before = processed()
    time.sleep(elapsed)  # the same window idle: what the stack does anyway
    idle = processed() - before
    return max(0.0, busy - idle) / n


def measure_supervisor(raw: RawDocker, binary: Path, n: int, warmups: int, parts: Parts) -> None:
    """The supervisor alone, over the attached stdio of a container of the bench's own."""
    container = raw.create_supervised(binary)
    stdio = AttachedStdio.attach(raw.client, container.id, "bench", write_timeout=30)
    pipe = cast(IO[bytes], stdio)  # (the few methods of a binary file the channel uses)
    channel = Channel(pipe, pipe, timeout=30)
    env = {"HOME": SANDBOX_HOME, "USER": SANDBOX_USER, "LANG": "C.UTF-8"}

    def check(proc: Any, what: str) -> None:
        out, err, exit_ = proc.wait(30)
        if out != b"22\n" or err or exit_.code != 0:
            raise BenchError(f"supervisor {what}: {out!r} {err!r} exit {exit_}")

    def hello(ch: Channel) -> None:
        if "pid" not in ch.hello(30):
            raise BenchError("the supervisor's hello answer has no pid")

    try:
        parts.hello = _times(lambda: hello(channel), n, warmups)
        parts.spawn_echo = _times(
            lambda: check(channel.spawn(argv=["echo", "22"]), "echo 22"), n, warmups
        )
        shell = ["/bin/bash", "-c", "--", "echo 22"]
        parts.spawn_shell = _times(
            lambda: check(
                channel.spawn(argv=shell, env=env, cwd=SANDBOX_HOME, stdin=True), "shell"
            ),
            n,
            warmups,
        )
    finally:
        channel.close()
        stdio.close()
        raw.delete(container)
