"""The load of the scale harness: simulated clients on one asyncio loop, each a tenant of its
own with one sandbox (and every ``session_every``-th an agent session with its WebSocket open),
doing a mix of operations with a think time between them, every answer checked:

- ``exec``: ``echo 22`` with ``wait=true`` (the E2B API);
- ``exec_output``: ``fake-out BYTES`` with ``wait=true``: output through the runner's streams;
- ``long_poll``: a process that sleeps then prints, started without waiting, then
  ``GET ...?wait=true`` until it ends;
- ``create_delete``: ``POST /sessions`` then ``DELETE``: a cold create and a delete;
- ``agent_task``: a ``task`` frame on the session's WebSocket (the shell agent runs it on the
  sandbox's host and streams task_started, stdout and exit frames back).

Beside them, a thread probes the Celery round trip (a no-op host command to a random host, as
the web sends it) and a Redis PING, a few times a second.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx2
import redis
from websockets.asyncio.client import ClientConnection, connect

from bench.scale.measure import Samples
from shared import commands, rpc
from shared.accounts import Accounts
from shared.broker import make_celery
from shared.settings import Settings

OPS = ("exec", "exec_output", "long_poll", "create_delete", "agent_task")


class Failed(Exception):
    """An answer other than the one expected (its text names what was wrong)."""


@dataclass(frozen=True)
class Mix:
    weights: tuple[float, ...] = (0.45, 0.15, 0.15, 0.10, 0.15)  # in OPS's order
    think: float = 1.0  # seconds between a client's operations (0.5x-1.5x, at random)
    output_bytes: int = 16384
    poll_sleep: float = 0.5
    session_every: int = 2  # every n-th client holds an agent session
    timeout: float = 60.0


@dataclass
class Client:
    index: int
    key: str
    sandbox: str
    session: dict[str, Any] | None = None
    ws: ClientConnection | None = None


@dataclass
class Recorded:
    """One window's samples: each operation, every web request (long-poll waits apart)."""

    ops: dict[str, Samples] = field(default_factory=lambda: {op: Samples() for op in OPS})
    web: Samples = field(default_factory=Samples)
    waits: Samples = field(default_factory=Samples)
    # every request by route ("POST /sessions/*/processes?wait=true", ...)
    routes: dict[str, Samples] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ops_ok(self) -> int:
        return sum(s.ok for s in self.ops.values())

    @property
    def ops_failed(self) -> int:
        return sum(sum(s.errors.values()) for s in self.ops.values())


class Driver:
    def __init__(self, url: str, r: redis.Redis, mix: Mix, seed: int = 15) -> None:
        self.url = url
        self.redis = r
        self.mix = mix
        self.rng = random.Random(seed)
        self.clients: list[Client] = []
        self.http = httpx2.AsyncClient(
            base_url=url,
            timeout=mix.timeout,
            limits=httpx2.Limits(max_connections=None, max_keepalive_connections=4096),
            trust_env=False,
        )
        self.rec = Recorded()

    async def close(self) -> None:
        for c in self.clients:
            if c.ws is not None:
                await c.ws.close()
        await self.http.aclose()

    # -- clients -----------------------------------------------------------------------------
    async def grow(self, total: int, parallel: int = 16) -> None:
        """Add clients until there are ``total``: a tenant each (made in Redis, as the load
        bench does), its sandbox, and every ``session_every``-th an agent session with its
        WebSocket open. Raises Failed when one cannot be set up."""
        gate = asyncio.Semaphore(parallel)
        accounts = Accounts(self.redis, "unused")

        async def one(i: int) -> Client:
            async with gate:
                _, key = accounts.create_api_key(f"usr_scale{i}", f"scale {i}", 10)
                client = Client(i, key, await self._create(key))
                if self.mix.session_every and i % self.mix.session_every == 0:
                    await self._open_session(client)
                return client

        new = range(len(self.clients), total)
        self.clients += await asyncio.gather(*(one(i) for i in new))

    async def _open_session(self, c: Client) -> None:
        r = await self._req("POST", "/v1/sessions", c.key, json={"agent": {"kind": "shell"}})
        if r.status_code != 201:
            raise Failed(f"POST /v1/sessions answered {r.status_code}: {r.text[:200]}")
        c.session = r.json()
        await self._connect(c)

    async def _connect(self, c: Client) -> None:
        assert c.session is not None
        c.ws = await connect(
            c.session["connect_url"],
            additional_headers={"Authorization": f"Bearer {c.session['jwt']}"},
            proxy=None,
            open_timeout=self.mix.timeout,
        )
        ready = json.loads(await asyncio.wait_for(c.ws.recv(), self.mix.timeout))
        if ready.get("type") != "ready":
            raise Failed(f"the session's first frame was {ready.get('type')!r}")

    async def creates_alone(self, n: int) -> Samples:
        """``n`` creates + deletes one after the other as the first client, nothing else
        asked meanwhile: what a create costs, apart from the load."""
        out = Samples()
        for _ in range(n):
            started = time.perf_counter()
            try:
                await self._create_delete(self.clients[0])
                out.add(time.perf_counter() - started)
            except Exception as exc:
                out.add(0.0, type(exc).__name__)
        return out

    # -- a window of load --------------------------------------------------------------------
    async def run(self, seconds: float) -> Recorded:
        """Every client works for ``seconds``; what they recorded."""
        self.rec = Recorded()
        started = time.monotonic()
        deadline = started + seconds
        await asyncio.gather(*(self._loop(c, deadline) for c in self.clients))
        self.rec.seconds = time.monotonic() - started
        return self.rec

    async def _loop(self, c: Client, deadline: float) -> None:
        # Clients start spread over one think time, not all at once.
        await asyncio.sleep(self.rng.uniform(0, self.mix.think))
        ops: dict[str, Callable[[Client], Awaitable[None]]] = {
            "exec": self._exec,
            "exec_output": self._exec_output,
            "long_poll": self._long_poll,
            "create_delete": self._create_delete,
            "agent_task": self._agent_task,
        }
        while time.monotonic() < deadline:
            op = self.rng.choices(OPS, self.mix.weights)[0]
            if op == "agent_task" and c.session is None:
                op = "exec"
            started = time.perf_counter()
            error = None
            try:
                await ops[op](c)
            except Failed as exc:
                error = str(exc).split(":")[0][:60]
            except Exception as exc:
                error = type(exc).__name__
            self.rec.ops[op].add(time.perf_counter() - started, error)
            await asyncio.sleep(self.mix.think * self.rng.uniform(0.5, 1.5))

    # -- operations --------------------------------------------------------------------------
    async def _req(self, method: str, path: str, key: str, wait: bool = False, **kw: Any) -> Any:
        started = time.perf_counter()
        try:
            r = await self.http.request(
                method, path, headers={"Authorization": f"Bearer {key}"}, **kw
            )
        except Exception as exc:
            (self.rec.waits if wait else self.rec.web).add(0.0, type(exc).__name__)
            raise
        error = None if r.status_code < 400 else f"HTTP {r.status_code}"
        took = time.perf_counter() - started
        (self.rec.waits if wait else self.rec.web).add(took, error)
        route = f"{method} {_route(path)}"
        self.rec.routes.setdefault(route, Samples()).add(took, error)
        return r

    async def _create(self, key: str) -> str:
        r = await self._req("POST", "/sessions", key, json={"envID": "Bash"})
        if r.status_code != 200:
            raise Failed(f"POST /sessions {r.status_code}: {r.text[:200]}")
        return str(r.json()["id"])

    async def _run(self, c: Client, cmd: str) -> dict[str, Any]:
        path = f"/sessions/{c.sandbox}/processes?wait=true"
        r = await self._req("POST", path, c.key, json={"cmd": cmd})
        if r.status_code != 200:
            raise Failed(f"exec {r.status_code}: {r.text[:200]}")
        out: dict[str, Any] = r.json()
        if out.get("finished") is not True:
            raise Failed("exec not finished")
        return out

    async def _exec(self, c: Client) -> None:
        out = await self._run(c, "echo 22")
        if [o["line"] for o in out["stdout"]] != ["22"] or out["stderr"]:
            raise Failed(f"echo 22: wrong output: {str(out)[:200]}")

    async def _exec_output(self, c: Client) -> None:
        size = self.mix.output_bytes
        out = await self._run(c, f"fake-out {size}")
        got = sum(len(o["line"]) + 1 for o in out["stdout"])
        if abs(got - size) > 1:  # the last line has no newline unless size is a multiple
            raise Failed(f"fake-out: wrong size: {got} of {size}")

    async def _long_poll(self, c: Client) -> None:
        cmd = f"sleep {self.mix.poll_sleep}; echo done"
        r = await self._req("POST", f"/sessions/{c.sandbox}/processes", c.key, json={"cmd": cmd})
        if r.status_code != 200:
            raise Failed(f"start {r.status_code}: {r.text[:200]}")
        pid = r.json()["processID"]
        path = f"/sessions/{c.sandbox}/processes/{pid}?wait=true"
        r = await self._req("GET", path, c.key, wait=True)
        if r.status_code != 200:
            raise Failed(f"long-poll {r.status_code}: {r.text[:200]}")
        out = r.json()
        if out.get("finished") is not True or [o["line"] for o in out["stdout"]] != ["done"]:
            raise Failed(f"long-poll: wrong answer: {str(out)[:200]}")

    async def _create_delete(self, c: Client) -> None:
        sid = await self._create(c.key)
        r = await self._req("DELETE", f"/sessions/{sid}", c.key)
        if r.status_code != 204:
            raise Failed(f"DELETE {r.status_code}: {r.text[:200]}")

    async def _agent_task(self, c: Client) -> None:
        if c.ws is None:
            await self._connect(c)
        assert c.ws is not None
        task_id = uuid.uuid4().hex[:12]
        try:
            await c.ws.send(json.dumps({"type": "task", "prompt": "echo hi", "id": task_id}))
            stdout = ""
            while True:
                frame = json.loads(await asyncio.wait_for(c.ws.recv(), self.mix.timeout))
                if frame.get("task_id") != task_id:
                    continue
                if frame["type"] == "stdout":
                    stdout += frame["data"]
                elif frame["type"] == "exit":
                    break
                elif frame["type"] == "error":
                    raise Failed(f"agent task: error frame {frame.get('code')}")
        except Exception:
            await c.ws.close()
            c.ws = None  # reconnected (resuming where it was) by the next task
            raise
        if stdout != "hi\n" or frame.get("exit_code") != 0:
            raise Failed(f"agent task: {stdout!r}, exit {frame.get('exit_code')}")


class Probes:
    """A thread timing, a few times a second, the Celery round trip of a no-op host command
    (ProcessKill of a process no host has, to a random host, as shared.rpc sends every host
    command) and a Redis PING."""

    def __init__(self, settings: Settings, r: redis.Redis, hosts: list[str], every: float = 0.1):
        self.celery = make_celery(settings, name="paddock-scale-probe")
        self.redis = r
        self.hosts = hosts
        self.every = every
        self.rtt = Samples()
        self.ping = Samples()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self.rtt, self.ping = Samples(), Samples()
        self._thread = threading.Thread(target=self._loop, name="probes", daemon=True)
        self._thread.start()

    def stop(self) -> tuple[Samples, Samples]:
        """Stop; (Celery round trips, Redis pings) since ``start``."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(90)
        return self.rtt, self.ping

    def _loop(self) -> None:
        rng = random.Random(7)
        kill = commands.ProcessKill(sandbox_id="scale-probe", process_id="no-such-process")
        while not self._stop.wait(self.every):
            started = time.perf_counter()
            try:
                self.redis.ping()
                self.ping.add(time.perf_counter() - started)
            except redis.RedisError as exc:
                self.ping.add(0.0, type(exc).__name__)
            host = rng.choice(self.hosts)
            started = time.perf_counter()
            try:
                rpc.call(self.celery, self.redis, host, kill.name, kill.to_kwargs(), 30)
                self.rtt.add(time.perf_counter() - started)
            except Exception as exc:
                self.rtt.add(0.0, type(exc).__name__)


def _route(path: str) -> str:
    """``path`` with its ids as ``*`` (a route of the table)."""
    base, _, query = path.partition("?")
    parts = base.split("/")
    # /sessions/ID/processes/ID, /v1/sessions
    masked = [p if i % 2 == 1 or p in ("v1", "") else "*" for i, p in enumerate(parts)]
    if parts[1:2] == ["v1"]:
        masked = parts[:3] + ["*" for _ in parts[3:]]
    return "/".join(masked) + (f"?{query}" if query else "")
