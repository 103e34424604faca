"""Abuse of the web tier: one tenant holds hundreds of long-polls (``wait=true``) and session
WebSockets open. Before the evented web server each of them held one of 128 threads, and
~130 long-polls made ``/health`` take 16 s; now a waiting client costs no thread, and each
tenant's concurrent waits and sockets are capped (429 + Retry-After), so the other tenant's
exec and ``/health`` stay fast.

The load is held by one asyncio loop in a thread (raw HTTP/1.1 for long-polls, ``websockets``
for sockets), so the test process itself stays light. Bounded: 300 long-polls, 150 sockets.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest
import requests
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as aconnect
from websockets.exceptions import InvalidStatus

from devstack.stack import Stack, raise_open_files
from shared import keys
from shared.slots import SOCKETS, WAITS, Slots
from tests.integration.client import Client
from tests.integration.session_helpers import close_code, new_tenant, recv, ws_connect

MAX_WAITS = 300  # PADDOCK_TENANT_MAX_WAITS: the holder fills it exactly
MAX_SOCKETS = 150  # PADDOCK_TENANT_MAX_SOCKETS: likewise
SLEEPERS = 10  # long-polls are spread over this many `sleep` processes
SESSIONS = 2  # sockets are spread over this many agent sessions (shell agent: no LLM)
SLOW = 2.0  # seconds; the old threaded server took 16 s for /health under half this load

T = TypeVar("T")


class Loop:
    """An asyncio loop in a daemon thread, for holding many idle connections cheaply."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 120) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class LongPoll:
    """A ``GET ...?wait=true`` sent on its own connection; its answer read when it comes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.answer: asyncio.Task[bytes] = asyncio.ensure_future(reader.read(65536))

    @classmethod
    async def open(cls, port: int, path: str, key: str) -> LongPoll:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
        writer.write(head.encode() + b"\r\n")
        await writer.drain()
        return cls(reader, writer)


class Load:
    def __init__(self, loop: Loop) -> None:
        self.loop = loop
        self.polls: list[LongPoll] = []
        self.sockets: list[ClientConnection] = []


async def _open_polls(port: int, paths: list[str], key: str) -> list[LongPoll]:
    gate = asyncio.Semaphore(50)

    async def one(path: str) -> LongPoll:
        async with gate:
            return await LongPoll.open(port, path, key)

    return list(await asyncio.gather(*(one(p) for p in paths)))


async def _open_socket(url: str, jwt: str) -> ClientConnection:
    ws = await aconnect(url, additional_headers={"Authorization": f"Bearer {jwt}"}, open_timeout=30)
    ready = json.loads(await asyncio.wait_for(ws.recv(), 30))
    assert ready["type"] == "ready"
    return ws


async def _open_sockets(targets: list[tuple[str, str]]) -> list[ClientConnection]:
    gate = asyncio.Semaphore(25)

    async def one(url: str, jwt: str) -> ClientConnection:
        async with gate:
            return await _open_socket(url, jwt)

    return list(await asyncio.gather(*(one(u, j) for u, j in targets)))


# -- fixtures --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    raise_open_files()  # this process holds the load's client ends
    env = {
        "PADDOCK_AUTH": "on",
        "PADDOCK_TENANT_MAX_WAITS": str(MAX_WAITS),
        "PADDOCK_TENANT_MAX_SOCKETS": str(MAX_SOCKETS),
        # The per-session cap is not what is tested here.
        "PADDOCK_WS_MAX_CONNECTIONS": str(MAX_SOCKETS),
    }
    with Stack(tmp_path_factory.mktemp("abuse-web"), env=env) as st:
        yield st


@pytest.fixture(scope="module")
def attacker(stack: Stack) -> Client:
    return Client(stack, new_tenant(stack, "attacker"), bearer=True)


@pytest.fixture(scope="module")
def victim(stack: Stack) -> Client:
    return Client(stack, new_tenant(stack, "victim"), bearer=True)


@pytest.fixture(scope="module")
def victim_sandbox(victim: Client) -> str:
    r = victim.req("POST", "/sessions", json={"envID": "Bash"})
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


@pytest.fixture(scope="module")
def sleepers(attacker: Client) -> tuple[str, list[str]]:
    """The attacker's sandbox and its long `sleep` processes, the targets of its waits."""
    r = attacker.req("POST", "/sessions", json={"envID": "Bash"})
    assert r.status_code == 200, r.text
    sid = r.json()["id"]
    pids = []
    for _ in range(SLEEPERS):
        p = attacker.req("POST", f"/sessions/{sid}/processes", json={"cmd": "sleep 600"})
        assert p.status_code == 200, p.text
        pids.append(p.json()["processID"])
    return sid, pids


@pytest.fixture(scope="module")
def attacker_sessions(attacker: Client) -> list[dict[str, Any]]:
    return [attacker.agent_session() for _ in range(SESSIONS)]


@pytest.fixture(scope="module")
def load(
    stack: Stack,
    attacker: Client,
    sleepers: tuple[str, list[str]],
    attacker_sessions: list[dict[str, Any]],
) -> Iterator[Load]:
    """The attacker at both caps: MAX_WAITS long-polls and MAX_SOCKETS sockets, held open."""
    loop = Loop()
    held = Load(loop)
    sid, pids = sleepers
    paths = [f"/sessions/{sid}/processes/{pids[i % len(pids)]}?wait=true" for i in range(MAX_WAITS)]
    held.polls = loop.run(_open_polls(stack.port, paths, attacker.key))
    targets = [
        (attacker_sessions[i % SESSIONS]["connect_url"], attacker_sessions[i % SESSIONS]["jwt"])
        for i in range(MAX_SOCKETS)
    ]
    held.sockets = loop.run(_open_sockets(targets))
    # A request sent is not yet a request the server waits on: wait until it counts them all.
    slots = Slots(stack.redis)
    deadline = time.monotonic() + 60
    while slots.count(WAITS, "usr_attacker") < MAX_WAITS and time.monotonic() < deadline:
        time.sleep(0.2)
    assert slots.count(WAITS, "usr_attacker") == MAX_WAITS
    assert slots.count(SOCKETS, "usr_attacker") == MAX_SOCKETS
    yield held

    async def close() -> None:
        for p in held.polls:
            p.writer.close()
        await asyncio.gather(*(ws.close() for ws in held.sockets), return_exceptions=True)

    loop.run(close())
    loop.stop()


def _p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


# -- tests (in this order: the last one lets the attacker's waits go) -----------------------
def test_health_and_another_tenants_exec_stay_fast_under_the_load(
    stack: Stack, load: Load, victim: Client, victim_sandbox: str
) -> None:
    health = []
    for _ in range(100):
        started = time.perf_counter()
        r = requests.get(stack.url + "/health", timeout=60)  # a new connection each time
        health.append(time.perf_counter() - started)
        assert r.status_code == 200
    execs = []
    for _ in range(20):
        started = time.perf_counter()
        r = victim.req(
            "POST", f"/sessions/{victim_sandbox}/processes?wait=true", json={"cmd": "echo 22"}
        )
        execs.append(time.perf_counter() - started)
        assert r.status_code == 200, r.text
        assert [o["line"] for o in r.json()["stdout"]] == ["22"]
    assert _p99(health) < SLOW, f"/health p99 {_p99(health):.2f} s"
    assert _p99(execs) < SLOW, f"victim exec p99 {_p99(execs):.2f} s"
    # The load is still held: nothing was answered or dropped while we measured.
    assert not any(p.answer.done() for p in load.polls)
    assert all(ws.close_code is None for ws in load.sockets)


def test_a_wait_past_the_tenant_cap_is_429_in_the_e2b_shape(
    stack: Stack, load: Load, attacker: Client, sleepers: tuple[str, list[str]]
) -> None:
    sid, pids = sleepers
    r = attacker.req("GET", f"/sessions/{sid}/processes/{pids[0]}?wait=true", timeout=30)
    assert r.status_code == 429, r.text
    assert set(r.json()) == {"message"}
    assert "PADDOCK_TENANT_MAX_WAITS" in r.json()["message"]
    assert int(r.headers["Retry-After"]) >= 1
    # Starting a process with wait=true is refused the same way, and starts nothing.
    started = keys.sandbox_processes(sid)
    assert stack.redis.scard(started) == SLEEPERS
    r = attacker.req(
        "POST", f"/sessions/{sid}/processes?wait=true", json={"cmd": "echo hi"}, timeout=30
    )
    assert r.status_code == 429 and "Retry-After" in r.headers
    assert stack.redis.scard(started) == SLEEPERS
    # Without wait the tenant still polls its processes.
    r = attacker.req("GET", f"/sessions/{sid}/processes/{pids[0]}")
    assert r.status_code == 200 and r.json()["finished"] is False


def test_a_socket_past_the_tenant_cap_is_429_before_the_handshake(
    load: Load, attacker_sessions: list[dict[str, Any]]
) -> None:
    s = attacker_sessions[0]
    with pytest.raises(InvalidStatus) as refused:
        ws_connect(s["connect_url"], s["jwt"])
    resp = refused.value.response
    assert resp.status_code == 429
    assert int(resp.headers["Retry-After"]) >= 1
    err = json.loads(resp.body or b"{}")["error"]
    assert err["code"] == "quota_exceeded" and err["type"] == "rate_limit_error"
    assert "PADDOCK_TENANT_MAX_SOCKETS" in err["message"]
    # The token travels in the query string too: refused the same way.
    with pytest.raises(InvalidStatus) as refused:
        ws_connect(s["connect_url"], s["jwt"], query_token=True)
    assert refused.value.response.status_code == 429


def test_a_bad_token_takes_no_slot_and_still_gets_its_close_code(
    load: Load, attacker_sessions: list[dict[str, Any]]
) -> None:
    ws = ws_connect(attacker_sessions[0]["connect_url"], "not-a-token")
    assert close_code(ws) == 4401


def test_the_other_tenant_is_not_capped(
    stack: Stack, load: Load, victim: Client, victim_sandbox: str
) -> None:
    s = victim.agent_session()
    with ws_connect(s["connect_url"], s["jwt"]) as ws:
        assert recv(ws)["type"] == "ready"
        assert Slots(stack.redis).count(SOCKETS, "usr_victim") == 1
    r = victim.req(
        "POST", f"/sessions/{victim_sandbox}/processes?wait=true", json={"cmd": "echo ok"}
    )
    assert r.status_code == 200, r.text
    victim.req("DELETE", f"/v1/sessions/{s['chat_session_id']}")


def test_a_closed_socket_frees_its_slot(
    stack: Stack, load: Load, attacker_sessions: list[dict[str, Any]]
) -> None:
    s = attacker_sessions[0]
    load.loop.run(load.sockets.pop().close())
    slots = Slots(stack.redis)
    deadline = time.monotonic() + 15
    while slots.count(SOCKETS, "usr_attacker") >= MAX_SOCKETS and time.monotonic() < deadline:
        time.sleep(0.1)
    assert slots.count(SOCKETS, "usr_attacker") == MAX_SOCKETS - 1
    # The freed slot is usable at once, and then the cap holds again.
    load.sockets.append(load.loop.run(_open_socket(s["connect_url"], s["jwt"])))
    with pytest.raises(InvalidStatus) as refused:
        ws_connect(s["connect_url"], s["jwt"])
    assert refused.value.response.status_code == 429


def test_stopping_the_process_ends_its_waits_and_frees_their_slots(
    stack: Stack, load: Load, attacker: Client, sleepers: tuple[str, list[str]]
) -> None:
    sid, pids = sleepers
    waiting_on_first = [p for i, p in enumerate(load.polls) if i % len(pids) == 0]
    r = attacker.req("DELETE", f"/sessions/{sid}/processes/{pids[0]}")
    assert r.status_code == 204
    answers = load.loop.run(_answers(waiting_on_first), timeout=60)
    # Answered (whatever the stop left of the process), never an error.
    assert all(a.startswith(b"HTTP/1.1 2") for a in answers), answers[:1]
    slots = Slots(stack.redis)
    assert slots.count(WAITS, "usr_attacker") == MAX_WAITS - len(waiting_on_first)
    r = attacker.req("POST", f"/sessions/{sid}/processes?wait=true", json={"cmd": "echo back"})
    assert r.status_code == 200, r.text
    assert [o["line"] for o in r.json()["stdout"]] == ["back"]


async def _answers(polls: list[LongPoll]) -> list[bytes]:
    return list(await asyncio.gather(*(p.answer for p in polls)))
