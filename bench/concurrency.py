"""The concurrency section of the bench: one tenant holds many long-polls
(``GET /sessions/ID/processes/PID?wait=true`` on a long ``sleep``) and many open session
WebSockets, while another tenant's exec and ``/health`` are timed — and the same figures are
timed with nothing open, in the same run, so the ratio is what the open connections cost.

The holders live in a child process running one asyncio loop (raw HTTP/1.1 for the long-polls,
``websockets`` for the sockets): thousands of idle connections cost it almost nothing, and the
timing client in this process never competes with them for the GIL.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import requests
from websockets.asyncio.client import ClientConnection, connect

from bench.report import LoadFigure, percentile
from bench.targets import BenchError, bearer_session, create_sandbox, logs_on_failure
from devstack.stack import Stack, raise_open_files
from shared.accounts import Accounts
from shared.slots import SOCKETS, WAITS, Slots

SESSIONS = 4  # the sockets are spread over this many agent sessions (shell agent, no LLM)
SLEEPERS = 10  # the long-polls are spread over this many `sleep` processes


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class HoldPlan:
    """What the holder process opens: every path / URL is one connection."""

    host: str
    port: int
    api_key: str
    polls: tuple[str, ...]
    sockets: tuple[tuple[str, str], ...]  # (ws URL, session JWT)
    open_timeout: float
    parallel: int = 64  # connections being opened at once


@dataclass
class HoldStatus:
    polls_sent: int = 0
    sockets_open: int = 0
    polls_answered: int = 0  # answered while they should have been waiting: refusals, errors
    sockets_dropped: int = 0
    errors: list[str] = field(default_factory=list)


# -- the holder process ------------------------------------------------------------------------
def hold_main(plan: HoldPlan, conn: Connection) -> None:
    raise_open_files()
    asyncio.run(_hold(plan, conn))


async def _hold(plan: HoldPlan, conn: Connection) -> None:
    status = HoldStatus()
    gate = asyncio.Semaphore(plan.parallel)
    stopping = asyncio.Event()
    writers: list[asyncio.StreamWriter] = []
    sockets: list[ClientConnection] = []

    def note(err: str) -> None:
        if len(status.errors) < 10:
            status.errors.append(err[:300])

    async def long_poll(path: str) -> None:
        try:
            async with gate:
                reader, writer = await asyncio.open_connection(plan.host, plan.port)
                writers.append(writer)
                writer.write(
                    f"GET {path} HTTP/1.1\r\nHost: {plan.host}:{plan.port}\r\n"
                    f"Authorization: Bearer {plan.api_key}\r\n\r\n".encode()
                )
                await writer.drain()
                status.polls_sent += 1
            head = await reader.read(200)  # only an answer (or a close) wakes this
        except OSError as exc:
            head = repr(exc).encode()
        if not stopping.is_set():
            status.polls_answered += 1
            note(f"long-poll answered early: {head[:120]!r}")

    async def socket(url: str, jwt: str) -> None:
        try:
            async with gate:
                ws = await connect(
                    url,
                    additional_headers={"Authorization": f"Bearer {jwt}"},
                    open_timeout=plan.open_timeout,
                    ping_interval=None,  # the server pings; answering is automatic
                    compression=None,
                )
                sockets.append(ws)
                await asyncio.wait_for(ws.recv(), plan.open_timeout)  # the ready frame
                status.sockets_open += 1
            async for _frame in ws:
                pass
        except Exception as exc:
            if not stopping.is_set():
                note(f"socket: {exc!r}")
        if not stopping.is_set():
            status.sockets_dropped += 1

    tasks = [asyncio.create_task(long_poll(p)) for p in plan.polls]
    tasks += [asyncio.create_task(socket(u, j)) for u, j in plan.sockets]
    deadline = time.monotonic() + plan.open_timeout
    while time.monotonic() < deadline and (
        status.polls_sent + status.polls_answered < len(plan.polls)
        or status.sockets_open + status.sockets_dropped < len(plan.sockets)
    ):
        await asyncio.sleep(0.1)
    conn.send(("open", status))
    # Hold until the parent has measured (it says so), then let go of everything.
    await asyncio.get_running_loop().run_in_executor(None, conn.recv)
    stopping.set()
    for w in writers:
        w.close()
    await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    conn.send(("closed", status))


# -- the timing side ---------------------------------------------------------------------------
@dataclass
class Samples:
    health: list[float] = field(default_factory=list)
    execs: list[float] = field(default_factory=list)


def measure(
    stack: Stack, victim: requests.Session, victim_sid: str, n_health: int, n_exec: int
) -> Samples:
    """``/health`` on a fresh connection each time (accepting is part of what must stay fast),
    and the victim's ``echo`` with ``wait=true`` (one keep-alive session, as an SDK would)."""
    out = Samples()
    for _ in range(n_health):
        started = time.perf_counter()
        r = requests.get(stack.url + "/health", timeout=60)
        out.health.append(time.perf_counter() - started)
        if r.status_code != 200:
            raise BenchError(f"/health answered {r.status_code}")
    for _ in range(n_exec):
        started = time.perf_counter()
        r = victim.post(
            f"{stack.url}/sessions/{victim_sid}/processes?wait=true",
            json={"cmd": "echo 22"},
            timeout=120,
        )
        out.execs.append(time.perf_counter() - started)
        lines = [o["line"] for o in r.json()["stdout"]] if r.status_code == 200 else None
        if lines != ["22"]:
            raise BenchError(f"victim exec answered {r.status_code}: {r.text[:300]}")
    return out


def web_rss_mib(stack: Stack) -> float:
    """Resident memory of the gunicorn master and workers."""
    root = stack.procs["web"].pid
    total = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            fields = (proc / "stat").read_text().rsplit(") ", 1)[1].split()
            if int(proc.name) == root or int(fields[1]) == root:  # fields[1]: ppid
                total += int(fields[21]) * os.sysconf("SC_PAGE_SIZE")  # rss in pages
    return total / (1 << 20)


def bench_concurrency(
    workdir: Path, waits: int, sockets: int, n_health: int, n_exec: int, template: str
) -> tuple[list[LoadFigure], list[str]]:
    """Start a stack with the per-tenant caps raised past the load, measure idle, open the
    load from one tenant, measure again; the figures and notes."""
    env = {
        "PADDOCK_AUTH": "on",
        "PADDOCK_TENANT_MAX_WAITS": str(waits + 50),
        "PADDOCK_TENANT_MAX_SOCKETS": str(sockets + 50),
        "PADDOCK_WS_MAX_CONNECTIONS": str(sockets // SESSIONS + 50),
        "PADDOCK_LOG_LEVEL": "WARNING",  # thousands of requests: keep the log small
    }
    with (
        Stack(workdir, hosts=("bench",), env=env) as stack,
        logs_on_failure(stack, ("web", "redis"), log, chars=3000),
    ):
        return _run(stack, waits, sockets, n_health, n_exec, template)


def _run(
    stack: Stack, waits: int, sockets: int, n_health: int, n_exec: int, template: str
) -> tuple[list[LoadFigure], list[str]]:
    accounts = Accounts(stack.redis, "unused")
    _, key_a = accounts.create_api_key("usr_holder", "holder", 10)
    _, key_b = accounts.create_api_key("usr_victim", "victim", 10)
    a = bearer_session(key_a)
    b = bearer_session(key_b)
    sid_b = create_sandbox(stack.url, b, template)
    log("concurrency: warming up")
    measure(stack, b, sid_b, 20, 5)
    log(f"concurrency: idle ({n_health} /health, {n_exec} exec)")
    idle = measure(stack, b, sid_b, n_health, n_exec)
    idle_rss = web_rss_mib(stack)
    # The load: long-polls on `sleep` processes, WebSockets on shell-agent sessions.
    sid_a = create_sandbox(stack.url, a, template)
    pids = []
    for _ in range(SLEEPERS):
        r = a.post(
            f"{stack.url}/sessions/{sid_a}/processes", json={"cmd": "sleep 3600"}, timeout=60
        )
        if r.status_code != 200:
            raise BenchError(f"start sleep answered {r.status_code}: {r.text[:300]}")
        pids.append(r.json()["processID"])
    polls = tuple(
        f"/sessions/{sid_a}/processes/{pids[i % len(pids)]}?wait=true" for i in range(waits)
    )
    sessions = []
    for _ in range(SESSIONS if sockets else 0):
        r = a.post(
            f"{stack.url}/v1/sessions",
            json={"agent": {"kind": "shell"}, "template": template},
            timeout=180,
        )
        if r.status_code != 201:
            raise BenchError(f"POST /v1/sessions answered {r.status_code}: {r.text[:300]}")
        sessions.append(r.json())
    urls = tuple(
        (sessions[i % len(sessions)]["connect_url"], sessions[i % len(sessions)]["jwt"])
        for i in range(sockets)
    )
    plan = HoldPlan("127.0.0.1", stack.port, key_a, polls, urls, open_timeout=180)
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    holder = ctx.Process(target=hold_main, args=(plan, child), daemon=True)
    started = time.monotonic()
    holder.start()
    try:
        log(f"concurrency: opening {waits} long-polls and {sockets} WebSockets")
        if not parent.poll(plan.open_timeout + 30):
            raise BenchError("the holder did not report within its time")
        _, opened = parent.recv()
        opened_in = time.monotonic() - started
        if opened.polls_sent < waits or opened.sockets_open < sockets or opened.errors:
            raise BenchError(f"could not open the load: {opened}")
        held = _server_holds(stack, "usr_holder", waits, sockets)
        log(f"concurrency: open in {opened_in:.1f} s; server holds {held}; measuring")
        loaded = measure(stack, b, sid_b, n_health, n_exec)
        loaded_rss = web_rss_mib(stack)
        clients = int(stack.redis.info("clients")["connected_clients"])
        parent.send("stop")
        if not parent.poll(60):
            raise BenchError("the holder did not close within 60 s")
        _, final = parent.recv()
        if final.polls_answered or final.sockets_dropped:
            raise BenchError(f"load connections ended while measured: {final}")
    finally:
        if holder.is_alive():
            holder.terminate()
        holder.join(10)
    a.delete(f"{stack.url}/sessions/{sid_a}", timeout=120)  # ends the sleeps and the waits
    b.delete(f"{stack.url}/sessions/{sid_b}", timeout=120)
    figures = [
        *_pair("/health", idle.health, loaded.health),
        *_pair("victim exec echo", idle.execs, loaded.execs),
        LoadFigure("web RSS", "MiB", idle_rss, loaded_rss, 1),
    ]
    notes = [
        f"load: {waits} long-polls (GET .../processes/PID?wait=true on `sleep 3600`, over "
        f"{SLEEPERS} processes) + {sockets} session WebSockets (shell agent, {SESSIONS} "
        f"sessions), all from one tenant; opened in {opened_in:.0f} s; server-side slots "
        f"held: {held['waits']} waits, {held['sockets']} sockets; Redis clients {clients}",
        "/health: a new TCP connection per request; victim exec: another tenant's "
        "POST .../processes?wait=true {cmd: 'echo 22'} on a keep-alive session",
        "idle = same stack, same run, before anything was opened; ratio = loaded / idle",
    ]
    return figures, notes


def _pair(name: str, idle: list[float], loaded: list[float]) -> list[LoadFigure]:
    n = min(len(idle), len(loaded))
    return [
        LoadFigure(
            f"{name} p{p}", "ms", percentile(idle, p) * 1000, percentile(loaded, p) * 1000, n
        )
        for p in (50, 99)
    ]


def _server_holds(stack: Stack, tenant: str, waits: int, sockets: int) -> dict[str, Any]:
    """The tenant's live slots as the server counts them, once they stop growing (a request
    sent is not yet a request the server waits on)."""
    slots = Slots(stack.redis)
    last: dict[str, Any] = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        now = {"waits": slots.count(WAITS, tenant), "sockets": slots.count(SOCKETS, tenant)}
        if (
            now == last
            and (now["waits"] >= waits or now["waits"] == 0)
            and now["sockets"] >= sockets
        ):
            break
        last = now
        time.sleep(1)
    return last
