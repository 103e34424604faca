"""PADDOCK_BROKER_URL: Celery's queues on a Redis of their own, state and output on
PADDOCK_REDIS_URL's. A real stack with two redis-servers: sandboxes and processes work, each
Redis holds only its own keys, /metrics reads the queue lengths from the broker, and either
Redis being down gives a 503 in the API's envelope rather than a hang or a 500."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from devstack.stack import RedisOptions, Stack
from shared import keys
from tests.integration.client import Client, stdout_lines, wait_until
from tests.integration.test_metrics import Samples, value, web

HOST = "host-a"
KOMBU = ("_kombu.", "unacked")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # AOF on the state Redis: the last test stops and restarts it, as an operator's would be.
    with Stack(
        tmp_path_factory.mktemp("broker-split"),
        redis_options=RedisOptions(aof=True),
        separate_broker=True,
    ) as st:
        yield st


@pytest.fixture(scope="module")
def api(stack: Stack) -> Client:
    return Client(stack, timeout=90)


def _page_where(stack: Stack, name: str, expected: float | None = None, **labels: str) -> Samples:
    """The web's /metrics when ``name`` has ``expected`` (or any non-zero value), else {}."""
    page = web(stack)
    got = value(page, name, **labels)
    return page if (got == expected if expected is not None else got) else {}


def _keys(r: object) -> list[str]:
    return sorted(k.decode() for k in r.scan_iter("*", count=1000))  # type: ignore[attr-defined]


def test_each_redis_holds_its_own_keys(stack: Stack, api: Client) -> None:
    assert stack.broker_url and stack.broker_redis is not stack.redis
    sid = api.sandbox()
    assert stdout_lines(api.run(sid, "echo 22")) == ["22"]
    started = api.start(sid, "echo later; sleep 0.2; echo done")
    assert started.status_code == 200, started.text
    pid = started.json()["processID"]
    done = api.req("GET", f"/sessions/{sid}/processes/{pid}?wait=true")
    assert done.status_code == 200, done.text
    assert stdout_lines(done.json()) == ["later", "done"]

    state, broker = _keys(stack.redis), _keys(stack.broker_redis)
    # The state Redis: Paddock's keys only (the records, output, replies), no queue of Celery.
    assert state and all(k.startswith(f"{keys.PREFIX}:") for k in state), state
    # The broker: Celery's keys only, among them the host's queue binding.
    assert f"_kombu.binding.host.{HOST}" in broker, broker
    assert not [k for k in broker if k.startswith(f"{keys.PREFIX}:")], broker
    assert not [k for k in state if k.startswith(KOMBU)], state
    api.req("DELETE", f"/sessions/{sid}")


def test_metrics_read_queue_lengths_from_the_broker(stack: Stack) -> None:
    # A host the state knows, whose queue holds 3 messages in the broker and 5 (which nobody
    # would read) in the state Redis: the web must count the broker's.
    ghost = "ghost-broker-split"
    queue = f"host.{ghost}"
    stack.redis.sadd(keys.hosts(), ghost)
    stack.broker_redis.rpush(queue, b"m1", b"m2", b"m3")
    stack.redis.rpush(queue, b"x1", b"x2", b"x3", b"x4", b"x5")
    try:
        page = wait_until(
            lambda: _page_where(stack, "paddock_queue_length", queue=queue),
            "the ghost host's queue in /metrics",
        )
        assert value(page, "paddock_queue_length", queue=queue) == 3
        assert ("paddock_queue_length", frozenset({("queue", "control")})) in page
        assert value(page, "paddock_broker_up") == 1
        assert value(page, "paddock_redis_up") == 1
    finally:
        stack.redis.srem(keys.hosts(), ghost)
        stack.redis.delete(queue)
        stack.broker_redis.delete(queue)


def test_the_broker_down_gives_503_and_the_rest_carries_on(stack: Stack, api: Client) -> None:
    sid = api.sandbox()
    pid = api.run(sid, "echo before")["processID"]
    sandboxes_before = len(stack.redis.keys(keys.sandbox("*")))
    stack.stop_process("broker-redis")
    try:
        # A command for the host: 503 in the E2B envelope, not a hang or a 500.
        r = api.req("POST", f"/sessions/{sid}/processes?wait=true", json={"cmd": "echo x"})
        assert r.status_code == 503, r.text
        assert "broker" in r.json()["message"]
        # A create: 503, and nothing left behind (no record, no quota slot).
        r = api.req("POST", "/sessions", json={"envID": "Bash"})
        assert r.status_code == 503, r.text
        assert len(stack.redis.keys(keys.sandbox("*"))) == sandboxes_before
        # /v1 (a login sends its mail through the broker): the v1 envelope.
        r = api.req("POST", "/v1/auth/login", json={"email": "broker-down@example.com"})
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "broker_unavailable"
        # What needs only the state Redis still works; /health and /metrics say what is wrong.
        # (a process's output is read from the state Redis)
        r = api.req("GET", f"/sessions/{sid}/processes/{pid}")
        assert r.status_code == 200, r.text
        assert stdout_lines(r.json()) == ["before"]
        health = wait_until(
            lambda: "broker" in (h := requests.get(stack.url + "/health", timeout=30).text) and h,
            "/health naming the broker",
        )
        assert health.startswith("OK\n")
        page = wait_until(
            lambda: _page_where(stack, "paddock_broker_up", expected=0), "paddock_broker_up 0"
        )
        assert value(page, "paddock_redis_up") == 1
    finally:
        stack.start_broker()
    # Back: once the host worker has reconnected (and declared its queue again), commands run.
    wait_until(
        lambda: stack.broker_redis.exists(f"_kombu.binding.host.{HOST}"),
        "the host worker back on the broker",
        timeout=120,
    )
    assert stdout_lines(api.run(sid, "echo back")) == ["back"]
    api.req("DELETE", f"/sessions/{sid}")


def test_the_state_store_down_gives_503(stack: Stack, api: Client) -> None:
    sid = api.sandbox()
    stack.stop_process("redis")
    try:
        r = api.req("GET", f"/sessions/{sid}")
        assert r.status_code == 503, r.text
        assert "state store" in r.json()["message"]
        # /v1 (a login's rate limit is counted in the state Redis): the v1 envelope.
        r = api.req("POST", "/v1/auth/login", json={"email": "state-down@example.com"})
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "state_unavailable"
    finally:
        stack.start_redis()
    assert stdout_lines(api.run(sid, "echo back")) == ["back"]
    api.req("DELETE", f"/sessions/{sid}")
