"""``python -m bench.load`` (``make load``): the load scenario of the operations issue as a
repeatable benchmark, against a private stack it starts (and removes) itself.

Three phases, one after the other, each client its own tenant with its own API key (a client
is a user, so the per-tenant fair shares do not throttle the host's throughput):

1. create ramp: ``--create-clients`` clients create ``--creates`` sandboxes between them as fast
   as they are answered (``POST /sessions``), then delete them (``DELETE /sessions/ID``);
2. exec throughput: ``--exec-clients`` clients, each on its own sandbox, run ``echo 22`` with
   ``wait=true`` back to back for ``--duration`` seconds, every answer checked;
3. long-polls: one tenant holds ``--waits`` ``GET /sessions/ID/processes/PID?wait=true`` open
   at once on a few processes that wait for a go file; once the server counts every wait slot
   the file is written, the processes print and end, and every poll must answer 200 with its
   own process's line. The polls are raw HTTP/1.1 on one asyncio loop in this process.

Prints a table and writes the figures as JSON (default ``.paddock/load.json``). Exit 0 when
every request succeeded, 1 when any failed (the table is printed either way), 2 when the run
itself could not be done.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import resource
import shlex
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests

from bench.concurrency import web_rss_mib
from bench.report import _num, machine_info, percentile
from bench.targets import (
    RUN_ERRORS,
    BenchError,
    bearer_session,
    create_sandbox,
    logs_on_failure,
    template_image,
)
from devstack.stack import Stack, raise_open_files
from shared.accounts import Accounts
from shared.slots import WAITS, Slots

GO_FILE = "/tmp/paddock-load-go"
PROCESSES = 10  # the long-polls are spread over this many processes of one sandbox
OPEN_PARALLEL = 64  # long-poll connections being opened at once
MAX_PROCESS_LIFE = 300  # seconds a long-poll process waits for its go file before giving up


def log(message: str) -> None:
    print(f"load: {message}", file=sys.stderr, flush=True)


# -- figures -----------------------------------------------------------------------------------
@dataclass
class Phase:
    """One measured phase: the durations of the requests that succeeded and the failures,
    by HTTP status or error name. ``wall``: seconds from its first request to its last answer.
    """

    name: str
    clients: int
    wall: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def record(self, seconds: float, error: str | None = None) -> None:
        """One request: ``error`` None when it succeeded (thread-safe)."""
        with self._lock:
            if error is None:
                self.latencies.append(seconds)
            else:
                self.errors[error] += 1

    @property
    def ok(self) -> int:
        return len(self.latencies)

    @property
    def rate(self) -> float:
        """Successful requests per second of the phase's wall time."""
        return self.ok / self.wall if self.wall > 0 else 0.0

    def ms(self, p: float) -> float | None:
        return percentile(self.latencies, p) * 1000 if self.latencies else None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "clients": self.clients,
            "ok": self.ok,
            "errors": dict(sorted(self.errors.items())),
            "wall_s": self.wall,
            "rate_per_s": self.rate,
            **{f"p{p}_ms": self.ms(p) for p in (50, 95, 99)},
        }


def phase_table(phases: list[Phase]) -> str:
    """The phases as rows between rules (bench/report.py's style), then each phase's errors
    by status."""
    head = (
        f"{'phase':<34} {'clients':>7} {'ok':>6} {'errors':>6} {'per s':>8} "
        f"{'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'wall s':>7}"
    )
    rule = "-" * len(head)
    lines = [head, rule]
    for ph in phases:
        pcts = [ph.ms(p) for p in (50, 95, 99)]
        cells = " ".join(f"{'-' if v is None else _num(v):>8}" for v in pcts)
        lines.append(
            f"{ph.name:<34} {ph.clients:>7} {ph.ok:>6} {sum(ph.errors.values()):>6} "
            f"{_num(ph.rate):>8} {cells} {ph.wall:>7.1f}"
        )
    lines.append(rule)
    for ph in phases:
        if ph.errors:
            by_status = ", ".join(f"{k}: {v}" for k, v in sorted(ph.errors.items()))
            lines.append(f"errors in {ph.name}: {by_status}")
    return "\n".join(lines)


# -- HTTP/1.1 for the long-polls ---------------------------------------------------------------
def parse_response(raw: bytes) -> tuple[int, bytes]:
    """Status and body of a whole HTTP/1.1 response read until the server closed the
    connection (``Connection: close``), chunked or not.

    Raises ValueError on anything that is not a complete response."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        raise ValueError(f"no end of headers in {raw[:120]!r}")
    status_line, *header_lines = head.split(b"\r\n")
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP status line: {status_line[:120]!r}")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip().lower()
    if headers.get(b"transfer-encoding") == b"chunked":
        body = _dechunk(body)
    elif b"content-length" in headers and len(body) != int(headers[b"content-length"]):
        raise ValueError(
            f"body of {len(body)} bytes, Content-Length {headers[b'content-length']!r}"
        )
    return int(parts[1]), body


def _dechunk(data: bytes) -> bytes:
    """A chunked body, decoded. Raises ValueError when it is cut short or malformed."""
    out = bytearray()
    at = 0
    while True:
        eol = data.find(b"\r\n", at)
        if eol < 0:
            raise ValueError("chunked body cut short (no chunk size)")
        size = int(data[at:eol].split(b";", 1)[0], 16)  # ValueError on a bad size
        if size == 0:
            return bytes(out)
        start = eol + 2
        if len(data) < start + size + 2 or data[start + size : start + size + 2] != b"\r\n":
            raise ValueError("chunked body cut short")
        out += data[start : start + size]
        at = start + size + 2


@dataclass
class Poll:
    path: str
    expect: str  # the one stdout line its process prints
    sent: bool = False
    status: int = 0
    body: bytes = b""
    answered_at: float = 0.0
    error: str = ""


async def _long_poll(host: str, port: int, key: str, poll: Poll, gate: asyncio.Semaphore) -> None:
    try:
        async with gate:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(
                f"GET {poll.path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                f"Authorization: Bearer {key}\r\nConnection: close\r\n\r\n".encode()
            )
            await writer.drain()
            poll.sent = True
        try:
            raw = await reader.read()  # to the end: the server closes after its answer
        finally:
            writer.close()
        poll.answered_at = time.perf_counter()
        poll.status, poll.body = parse_response(raw)
    except (OSError, ValueError) as exc:
        poll.answered_at = poll.answered_at or time.perf_counter()
        poll.error = type(exc).__name__


# -- the phases --------------------------------------------------------------------------------
def _tenants(stack: Stack, prefix: str, n: int) -> list[requests.Session]:
    """``n`` tenants with one API key each, as HTTP sessions."""
    accounts = Accounts(stack.redis, "unused")
    return [
        bearer_session(accounts.create_api_key(f"usr_{prefix}{i}", f"load {prefix}{i}", 10)[1])
        for i in range(n)
    ]


def _failure(exc: Exception) -> str:
    return "timeout" if isinstance(exc, requests.Timeout) else type(exc).__name__


def _in_parallel(n: int, fn: Callable[[int], None]) -> float:
    """Run ``fn(0..n-1)`` on ``n`` threads at once; the wall time, in seconds. Re-raises the
    first exception a client raised."""
    started = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        for future in [pool.submit(fn, i) for i in range(n)]:
            future.result()
    return time.perf_counter() - started


def create_ramp(
    stack: Stack, clients: int, total: int, template: str
) -> tuple[Phase, Phase, dict[int, list[str]]]:
    """``clients`` tenants create ``total`` sandboxes between them, each as soon as its last
    create answered; then each deletes its own, all at once. The create and delete phases,
    and the sandboxes left undeleted by client (none, unless a delete failed)."""
    sessions = _tenants(stack, "ramp", clients)
    create = Phase("create (POST /sessions)", clients)
    delete = Phase("delete (DELETE /sessions/ID)", clients)
    owned: dict[int, list[str]] = {i: [] for i in range(clients)}
    tickets = itertools.count()  # next() is atomic under the GIL: each create taken once

    def creator(i: int) -> None:
        while next(tickets) < total:
            started = time.perf_counter()
            try:
                r = sessions[i].post(f"{stack.url}/sessions", json={"envID": template}, timeout=300)
            except requests.RequestException as exc:
                create.record(0, _failure(exc))
                continue
            took = time.perf_counter() - started
            if r.status_code == 200:
                owned[i].append(str(r.json()["id"]))
                create.record(took)
            else:
                create.record(took, str(r.status_code))
                time.sleep(0.5)  # a refusal (429/503) must not spin

    def deleter(i: int) -> None:
        for sid in list(owned[i]):
            started = time.perf_counter()
            try:
                r = sessions[i].delete(f"{stack.url}/sessions/{sid}", timeout=300)
            except requests.RequestException as exc:
                delete.record(0, _failure(exc))
                continue
            took = time.perf_counter() - started
            if r.status_code == 204:
                owned[i].remove(sid)
                delete.record(took)
            else:
                delete.record(took, str(r.status_code))

    log(f"create ramp: {clients} clients create {total} sandboxes")
    create.wall = _in_parallel(clients, creator)
    log(f"create ramp: {create.ok} created in {create.wall:.1f} s; deleting them")
    delete.wall = _in_parallel(clients, deleter)
    return create, delete, owned


def exec_throughput(stack: Stack, clients: int, duration: float, template: str) -> Phase:
    """``clients`` tenants, one sandbox each (created and warmed up untimed), run ``echo 22``
    with ``wait=true`` back to back for ``duration`` seconds; their sandboxes are deleted.

    Raises BenchError when a sandbox cannot be created."""
    sessions = _tenants(stack, "exec", clients)
    phase = Phase("exec echo 22 (wait=true)", clients)
    log(f"exec: creating {clients} sandboxes")
    sids: list[str] = [""] * clients

    def setup(i: int) -> None:
        sids[i] = create_sandbox(stack.url, sessions[i], template, 300)
        _echo(stack, sessions[i], sids[i])  # warm-up: connection, first exec in the sandbox

    def setup_share(k: int) -> None:  # ten at a time: setup is not what is measured
        for i in range(k, clients, 10):
            setup(i)

    try:
        _in_parallel(min(clients, 10), setup_share)
        log(f"exec: {clients} clients run `echo 22` for {duration:.0f} s")
        deadline = time.perf_counter() + duration

        def client(i: int) -> None:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                try:
                    error = _echo(stack, sessions[i], sids[i])
                except requests.RequestException as exc:
                    error = _failure(exc)
                phase.record(time.perf_counter() - started, error)
                if error:
                    time.sleep(0.2)  # a refusal must not spin

        phase.wall = _in_parallel(clients, client)
    finally:
        for i, sid in enumerate(sids):
            if sid:
                sessions[i].delete(f"{stack.url}/sessions/{sid}", timeout=300)
    return phase


def _echo(stack: Stack, http: requests.Session, sid: str) -> str | None:
    """One ``echo 22`` with ``wait=true``: None when it answered exactly that, else the error."""
    r = http.post(
        f"{stack.url}/sessions/{sid}/processes?wait=true", json={"cmd": "echo 22"}, timeout=300
    )
    if r.status_code != 200:
        return str(r.status_code)
    out = r.json()
    if [o["line"] for o in out["stdout"]] != ["22"] or out["stderr"] or not out["finished"]:
        return "wrong output"
    return None


def long_polls(stack: Stack, waits: int, template: str) -> tuple[Phase, dict[str, float]]:
    """Hold ``waits`` long-polls at once, release their processes, check every answer. The
    phase (latency: from the release to each answer) and the holding figures.

    Raises BenchError when the polls cannot all be opened within a few minutes."""
    (http,) = _tenants(stack, "poll", 1)
    key = str(http.headers["Authorization"]).removeprefix("Bearer ")
    sid = create_sandbox(stack.url, http, template, 300)
    try:
        polls = _start_waiters(stack, http, sid, waits)
        log(f"long-polls: opening {waits}")
        return asyncio.run(_hold_and_release(stack, http, key, sid, polls))
    finally:
        http.delete(f"{stack.url}/sessions/{sid}", timeout=300)


def _start_waiters(stack: Stack, http: requests.Session, sid: str, waits: int) -> list[Poll]:
    """The processes the polls wait on: each prints its own line once the go file exists (or
    gives up, printing nothing, after MAX_PROCESS_LIFE)."""
    pids = []
    for n in range(PROCESSES):
        go = shlex.quote(GO_FILE)
        cmd = (
            f"for _ in $(seq {MAX_PROCESS_LIFE * 5}); do [ -e {go} ] && break; sleep 0.2; done; "
            f"[ -e {go} ] && echo done-{n}"
        )
        r = http.post(f"{stack.url}/sessions/{sid}/processes", json={"cmd": cmd}, timeout=300)
        if r.status_code != 200:
            raise BenchError(f"starting a waiter answered {r.status_code}: {r.text[:300]}")
        pids.append(str(r.json()["processID"]))
    return [
        Poll(f"/sessions/{sid}/processes/{pids[i % PROCESSES]}?wait=true", f"done-{i % PROCESSES}")
        for i in range(waits)
    ]


async def _hold_and_release(
    stack: Stack, http: requests.Session, key: str, sid: str, polls: list[Poll]
) -> tuple[Phase, dict[str, float]]:
    loop = asyncio.get_running_loop()
    slots = Slots(stack.redis)
    gate = asyncio.Semaphore(OPEN_PARALLEL)
    started = time.perf_counter()
    tasks = [asyncio.create_task(_long_poll("127.0.0.1", stack.port, key, p, gate)) for p in polls]
    # Held = every request sent and the server waiting on each (a wait slot per request).
    held = 0
    deadline = started + 300
    while time.perf_counter() < deadline:
        await asyncio.sleep(0.5)
        held = await loop.run_in_executor(None, slots.count, WAITS, "usr_poll0")
        early = sum(1 for p in polls if p.answered_at)
        if early or (held >= len(polls) and all(p.sent for p in polls)):
            break
    opened_in = time.perf_counter() - started
    figures = {"open_s": opened_in, "held": float(held), "web_rss_mib": web_rss_mib(stack)}
    log(f"long-polls: {held} held by the server after {opened_in:.1f} s; releasing")
    released = time.perf_counter()
    r = await loop.run_in_executor(
        None,
        lambda: http.post(
            f"{stack.url}/sessions/{sid}/processes",
            json={"cmd": f"touch {shlex.quote(GO_FILE)}"},
            timeout=300,
        ),
    )
    if r.status_code != 200:
        raise BenchError(f"the release answered {r.status_code}: {r.text[:300]}")
    _, pending = await asyncio.wait(tasks, timeout=MAX_PROCESS_LIFE)
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    phase = Phase("long-poll (GET ...?wait=true)", len(polls))
    phase.wall = max((p.answered_at for p in polls if p.answered_at), default=released) - released
    for p in polls:
        phase.record(p.answered_at - released, _poll_error(p, released))
    return phase, figures


def _poll_error(p: Poll, released: float) -> str | None:
    """None when the poll answered after the release with its process's line, else why not."""
    if not p.answered_at:
        return "no answer"
    if p.error:
        return p.error
    if p.status != 200:
        return str(p.status)
    if p.answered_at < released:
        return "answered before release"
    try:
        out = json.loads(p.body)
    except ValueError:
        return "not JSON"
    if [o.get("line") for o in out.get("stdout", [])] != [p.expect] or not out.get("finished"):
        return "wrong output"
    return None


# -- the run -----------------------------------------------------------------------------------
@dataclass
class Result:
    machine: dict[str, Any]
    settings: dict[str, str]
    phases: list[Phase] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    holding: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "settings": self.settings,
            "phases": [p.to_json() for p in self.phases],
            "long_poll_holding": self.holding,
            "notes": self.notes,
            "samples_seconds": {p.name: p.latencies for p in self.phases},
        }


def stack_settings(args: argparse.Namespace) -> dict[str, str]:
    """The stack's settings, large enough that the scenario measures the host, not a quota:
    room for every sandbox of the run at once, a tenant may create the whole ramp, and the
    long-poll tenant may hold (and then be answered on) every poll at once."""
    return {
        "PADDOCK_AUTH": "on",
        "PADDOCK_HOST_CAPACITY": str(args.creates + args.exec_clients + 8),
        "PADDOCK_TENANT_MAX_SANDBOXES": str(args.creates + 1),
        "PADDOCK_TENANT_MAX_WAITS": str(args.waits + 50),
        "PADDOCK_TENANT_MAX_STREAMS": str(args.waits + 50),
        "PADDOCK_LOG_LEVEL": "WARNING",  # thousands of requests: keep the logs small
    }


def run(args: argparse.Namespace, workdir: Path) -> Result:
    """Start the stack, run the three phases, stop it (removing every container).

    Raises BenchError, RuntimeError (the stack did not start), Docker and requests errors."""
    client = docker.from_env(timeout=600)
    template_image(client, args.env)
    env = stack_settings(args)
    result = Result(machine_info(str(client.version().get("Version", "?"))), env)
    # Other work on the machine moves every figure: the reader needs to see how much there was.
    result.machine["loadavg_start"] = os.getloadavg()[0]
    log("starting a stack (redis-server, host worker, control worker, gunicorn)")
    with (
        Stack(workdir, hosts=("load",), env=env) as stack,
        logs_on_failure(stack, ("web", "worker-load"), log),
    ):
        create, delete, left = create_ramp(stack, args.create_clients, args.creates, args.env)
        result.phases += [create, delete]
        if any(left.values()):
            log(f"create ramp: {sum(map(len, left.values()))} sandboxes not deleted")
        result.phases.append(exec_throughput(stack, args.exec_clients, args.duration, args.env))
        if args.waits:
            polls, result.holding = long_polls(stack, args.waits, args.env)
            result.phases.append(polls)
    result.machine["loadavg_end"] = os.getloadavg()[0]
    h = result.holding
    result.notes = [
        f"environment {args.env}; each client is its own tenant (API key); stack settings: "
        + ", ".join(f"{k.removeprefix('PADDOCK_')}={v}" for k, v in env.items()),
        "create/delete: per s = sandboxes created (deleted) per second of the phase, all "
        "clients together; latency = one request's answer",
        f"exec: POST /sessions/ID/processes?wait=true {{cmd: 'echo 22'}} back to back for "
        f"{args.duration:.0f} s, every answer checked; per s = checked answers per second",
    ]
    if args.waits:
        result.notes.append(
            f"long-poll: {args.waits} GET /sessions/ID/processes/PID?wait=true from one tenant "
            f"over {PROCESSES} processes, held at once ({h['held']:.0f} wait slots counted by "
            f"the server after {h['open_s']:.1f} s; web RSS {h['web_rss_mib']:.0f} MiB); then "
            "the processes print and end; latency = from that release to each answer, which "
            "must be 200 with the process's own line"
        )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__)
    parser.add_argument("--env", default="Bash", help="template to use (default: %(default)s)")
    parser.add_argument("--create-clients", type=int, default=10, help="create ramp clients")
    parser.add_argument("--creates", type=int, default=30, help="sandboxes the ramp creates")
    parser.add_argument("--exec-clients", type=int, default=20, help="exec clients")
    parser.add_argument("--duration", type=float, default=30.0, help="exec phase seconds")
    parser.add_argument("--waits", type=int, default=1000, help="long-polls held at once")
    parser.add_argument(
        "--json",
        type=Path,
        default=Path(".paddock/load.json"),
        help="where to write the figures (default: %(default)s)",
    )
    parser.add_argument("--no-json", action="store_true", help="do not write the JSON file")
    args = parser.parse_args(argv)
    if min(args.create_clients, args.creates, args.exec_clients) < 1 or args.duration <= 0:
        parser.error("clients, creates and duration must be positive")
    if not 0 <= args.waits <= 20_000:
        parser.error("--waits must be between 0 and 20000")
    # Every held long-poll is a socket of this process.
    raise_open_files()
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if args.waits + 200 > soft:
        log(f"FAILED: open-file limit {soft} is too low for {args.waits} long-polls")
        return 2
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="paddock-load-") as tmp:
            result = run(args, Path(tmp))
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    except RUN_ERRORS as exc:
        log(f"FAILED: {exc}")
        return 2
    m = result.machine
    print(
        f"Paddock load — {m['date']}\n"
        f"machine: {m['nproc']} CPUs, {m['memory_gib']:.1f} GiB memory, {m['kernel']}, "
        f"Docker {m['docker']}, Python {m['python']}\n"
        f"load average (1 min) before the run {m['loadavg_start']:.1f}, "
        f"after it {m['loadavg_end']:.1f}\n"
    )
    print(phase_table(result.phases))
    for note in result.notes:
        print(f"  - {note}")
    print(f"\n(total load time {time.monotonic() - started:.0f} s)")
    if not args.no_json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result.to_json(), indent=2) + "\n")
        print(f"figures written to {args.json}")
    failed = sum(sum(p.errors.values()) for p in result.phases)
    if failed:
        log(f"{failed} requests failed (see the errors under the table)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
