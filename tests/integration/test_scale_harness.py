"""The scale harness's stack (bench/scale): two simulated hosts as real Celery host workers in
one process over the fake backend, a real web tier and Redis. Each host runs its own tasks,
every operation of the load mix succeeds through it, and a window's readings see them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.scale.load import Driver, Mix
from bench.scale.measure import Samples
from bench.scale.stack import ScaleStack
from bench.scale.steps import Meter
from shared import commands, keys, rpc
from shared.broker import make_celery
from shared.settings import Settings


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScaleStack]:
    workdir: Path = tmp_path_factory.mktemp("scale")
    with ScaleStack(workdir, host_procs=1) as st:
        st.start()
        st.add_hosts(2)
        yield st


def test_hosts_in_one_process_each_run_their_own_tasks(stack: ScaleStack) -> None:
    # Celery shares task registrations and the current app across a process unless told
    # otherwise: a task sent to one host's queue must run with that host's context.
    celery = make_celery(Settings.from_env(stack.env), name="scale-test")
    kill = commands.ProcessKill(sandbox_id="none", process_id="none")
    try:
        for host in stack.hosts:
            for _ in range(3):
                reply = rpc.call(celery, stack.redis, host, kill.name, kill.to_kwargs(), 30)
                assert reply == {"value": {"killed": False}, "host": host}
    finally:
        celery.close()
    assert stack.alive_hosts() == 2


def test_every_operation_of_the_mix_works_and_is_measured(stack: ScaleStack) -> None:
    async def scenario() -> tuple[dict[str, Samples], float]:
        driver = Driver(stack.url, stack.redis, Mix(session_every=1, poll_sleep=0.1))
        try:
            await driver.grow(2)
            # Placement spreads their sandboxes (most free capacity first): both hosts serve.
            for host in stack.hosts:
                assert stack.redis.scard(keys.host_sandboxes(host)) >= 1
            c = driver.clients[0]

            async def every_op() -> None:
                for op in (
                    driver._exec,
                    driver._exec_output,
                    driver._long_poll,
                    driver._create_delete,
                    driver._agent_task,
                ):
                    await op(c)

            window = await Meter(stack).measure(every_op())
            return driver.rec.routes, window.calls_per_s
        finally:
            await driver.close()

    routes, calls_per_s = asyncio.run(scenario())
    assert not [r for r, s in routes.items() if s.errors], routes
    assert routes["POST /sessions/*/processes?wait=true"].ok == 2
    assert routes["GET /sessions/*/processes/*?wait=true"].ok == 1
    assert calls_per_s > 0
