"""Abuse: output amplification, output budgets, the process quota, OOM kills, wait slots.

Each attack runs against the real stack with small budgets (so it is quick), and each test
asserts the victim's side: web and Redis memory, another tenant's output and exec.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.stack import Stack
from shared import keys
from shared.output import ENTRY_BYTES, RECORD_BYTES
from tests.integration.client import Client, stdout_lines
from tests.integration.session_helpers import new_tenant, recv, until, ws_connect

MiB = 1 << 20
ENV = {
    "PADDOCK_MAX_OUTPUT_BYTES": "4m",
    "PADDOCK_SANDBOX_OUTPUT_BYTES": "6m",
    "PADDOCK_TENANT_OUTPUT_BYTES": "10m",
    "PADDOCK_SANDBOX_MAX_PROCESSES": "3",
    "PADDOCK_TENANT_MAX_WAITS": "2",
    "PADDOCK_SANDBOX_MEMORY": "96m",
    "PADDOCK_SESSION_OUTPUT_BYTES": "1m",
    "PADDOCK_TENANT_MAX_STREAMS": "3",
    "PADDOCK_SESSION_MAX_QUEUED_TASKS": "2",
    "PADDOCK_MAX_FILE_BYTES": "64k",
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(tmp_path_factory.mktemp("abuse-output"), env=ENV) as s:
        yield s


def web_rss(stack: Stack) -> int:
    """Resident memory of the web server's processes (master and workers), in bytes."""
    group = stack.procs["web"].pid
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == group:  # pgrp
                total += int(fields[21]) * os.sysconf("SC_PAGE_SIZE")  # rss pages
        except (OSError, IndexError, ValueError):
            continue
    return total


def web_worker_fds(stack: Stack) -> list[int]:
    """Open descriptors of each web worker (the gunicorn master's children)."""
    master = stack.procs["web"].pid
    counts = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == master:  # ppid
                counts.append(len(os.listdir(stat.parent / "fd")))
        except (OSError, IndexError, ValueError):
            continue
    return counts or [0]


class Peak:
    """Samples a number in the background; ``peak`` is the highest seen."""

    def __init__(self, sample: Any) -> None:
        self.sample = sample
        self.peak = sample()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(0.05):
            self.peak = max(self.peak, self.sample())

    def __enter__(self) -> Peak:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join()


def stderr_text(out: dict[str, Any]) -> str:
    return "\n".join(x["line"] for x in out["stderr"])


def test_streamed_answers_and_stops_keep_web_memory_flat(stack: Stack) -> None:
    a, b = Client(stack, new_tenant(stack, "amp")), Client(stack, new_tenant(stack, "bystander"))
    sid, victim = a.sandbox(), b.sandbox()
    # ~3.9 MB of two-byte lines: 1.9 M line objects. Built whole, that cost ~150x its size.
    out = a.run(sid, "yes | head -n 1900000")
    pid = out["processID"]
    assert len(out["stdout"]) == 1_900_000 and out["stdout"][-1]["line"] == "y"
    before = web_rss(stack)

    def read_back() -> None:
        r = a.req("GET", f"/sessions/{sid}/processes/{pid}", stream=True)
        got = sum(len(c) for c in r.iter_content(1 << 16))
        assert r.status_code == 200 and got > 100 * MiB

    readers = [threading.Thread(target=read_back, daemon=True) for _ in range(3)]
    with Peak(lambda: web_rss(stack)) as peak:
        for t in readers:
            t.start()
        # Meanwhile the web answers others: health, and another tenant's exec (how fast is
        # bench's business; here, that they are answered while the readers stream).
        for _ in range(5):
            assert a.req("GET", "/health", timeout=30).status_code == 200
        for _ in range(3):
            assert stdout_lines(b.run(victim, "echo hi")) == ["hi"]
        for t in readers:
            t.join(120)
    assert peak.peak - before < 200 * MiB, (before, peak.peak)
    # A chatty process stopped without results: the stop reads none of it.
    r = a.start(sid, "timeout 20 yes")
    chatty = r.json()["processID"]
    time.sleep(2)
    with Peak(lambda: web_rss(stack)) as peak:
        t0 = time.monotonic()
        r = a.req("DELETE", f"/sessions/{sid}/processes/{chatty}")
        assert r.status_code == 204
        assert time.monotonic() - t0 < 15
    assert peak.peak - before < 150 * MiB
    assert a.req("GET", f"/sessions/{sid}/processes/{chatty}").status_code == 204
    a.req("DELETE", f"/sessions/{sid}/processes/{pid}")


def test_output_budgets_truncate_with_a_named_marker_and_spare_other_tenants(
    stack: Stack,
) -> None:
    a, b = Client(stack, new_tenant(stack, "greedy")), Client(stack, new_tenant(stack, "victim"))
    redis_before = int(stack.redis.info("memory")["used_memory"])
    s1 = a.sandbox()
    # Per process: 4 MiB kept, then the marker.
    big = a.run(s1, "yes 0123456789 | head -c 8000000")
    kept = sum(len(x["line"]) + 1 for x in big["stdout"])
    assert 3.5 * MiB < kept <= 4 * MiB
    assert "PADDOCK_MAX_OUTPUT_BYTES" in stderr_text(big)
    assert big["stderr"][-1]["line"].startswith("[paddock] output truncated")
    # Per sandbox: 6 MiB over all its processes.
    second = a.run(s1, "yes 0123456789 | head -c 3000000")
    assert "PADDOCK_SANDBOX_OUTPUT_BYTES" in stderr_text(second)
    # Deleting a process gives its bytes back.
    assert a.req("DELETE", f"/sessions/{s1}/processes/{big['processID']}").status_code == 204
    third = a.run(s1, "yes 0123456789 | head -c 1000000")
    assert stderr_text(third) == "" and len(third["stdout"]) == 1000000 // 11 + 1
    # Per tenant: 10 MiB over all its sandboxes.
    s2 = a.sandbox()
    fourth = a.run(s2, "yes 0123456789 | head -c 3900000")
    assert stderr_text(fourth) == ""
    s3 = a.sandbox()
    fifth = a.run(s3, "yes 0123456789 | head -c 3900000")
    assert "PADDOCK_TENANT_OUTPUT_BYTES" in stderr_text(fifth)
    # The victim's output is whole, and Redis holds about the greedy tenant's budget.
    sv = b.sandbox()
    victim = b.run(sv, "yes abc | head -n 200000")
    assert len(victim["stdout"]) == 200000 and victim["stderr"] == []
    used = int(stack.redis.info("memory")["used_memory"]) - redis_before
    assert used < 40 * MiB, used
    # Ending a sandbox gives its whole share back to the tenant.
    tenant = stack_tenant(stack, s2)
    held = int(stack.redis.get(keys.tenant_output_bytes(tenant)) or 0)
    assert held > 9 * MiB
    assert a.req("DELETE", f"/v1/sandboxes/{s2}").status_code == 204
    deadline = time.monotonic() + 30
    while int(stack.redis.get(keys.tenant_output_bytes(tenant)) or 0) > held - 3.5 * MiB:
        assert time.monotonic() < deadline
        time.sleep(0.2)


def test_a_byte_at_a_time_writer_keeps_in_redis_no_more_than_it_is_charged(stack: Stack) -> None:
    """One write per byte (a frame per read from the supervisor): frames already at the worker
    are stored as one entry, and each entry is charged ENTRY_BYTES besides its bytes, so what
    the stream costs Redis stays within what the budgets count. Every byte reads back."""
    a = Client(stack, new_tenant(stack, "dribbler"))
    sid = a.sandbox("Python3")
    script = (
        "import os, time\n"
        "data = ''.join(f'{i:05d}\\n' for i in range(20000)).encode()\n"
        "for i in range(len(data)):\n"
        "    os.write(1, data[i : i + 1])\n"
        "    if i % 100 == 0:\n"
        "        time.sleep(0.001)  # bursts the worker may well read apart\n"
    )
    assert a.write(sid, "/home/user/drip.py", script).status_code == 204
    cmd = "python3 /home/user/drip.py"
    out = a.run(sid, cmd)
    assert [x["line"] for x in out["stdout"]] == [f"{i:05d}" for i in range(20000)]
    assert out["stderr"] == []
    pid = out["processID"]
    key = keys.output(sid, pid)
    charged = int(stack.redis.hget(keys.process(sid, pid), "bytes") or 0)
    entries = int(stack.redis.xlen(key)) - 1  # and the end entry
    used = int(stack.redis.memory_usage(key, samples=0) or 0)
    assert charged == RECORD_BYTES + len(cmd) + 120_000 + entries * ENTRY_BYTES
    assert used <= charged, (used, charged, entries)


def test_process_quota_is_per_sandbox_and_named(stack: Stack) -> None:
    a = Client(stack, new_tenant(stack, "forker"))
    sid, other = a.sandbox(), a.sandbox()
    pids = [a.start(sid, "sleep 60").json()["processID"] for _ in range(3)]
    r = a.start(sid, "echo one too many")
    assert r.status_code == 429 and r.headers.get("Retry-After")
    assert "PADDOCK_SANDBOX_MAX_PROCESSES" in r.json()["message"]
    assert set(r.json()) == {"message"}
    # Another sandbox of the same tenant is not affected; a stopped process frees its place.
    assert a.run(other, "echo fine")["stdout"][0]["line"] == "fine"
    assert a.req("DELETE", f"/sessions/{sid}/processes/{pids[0]}").status_code == 204
    assert a.run(sid, "echo again")["stdout"][0]["line"] == "again"


def test_wait_slots_refuse_before_starting_anything(stack: Stack) -> None:
    a = Client(stack, new_tenant(stack, "waiter"))
    sid = a.sandbox()
    pid = a.start(sid, "sleep 30").json()["processID"]
    waiting = [
        threading.Thread(
            target=lambda: a.req("GET", f"/sessions/{sid}/processes/{pid}?wait=true"),
            daemon=True,
        )
        for _ in range(2)
    ]
    for t in waiting:
        t.start()
    key = keys.sandbox_processes(sid)
    deadline = time.monotonic() + 20
    while stack.redis.zcard(keys.slots("waits", stack_tenant(stack, sid))) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    before = stack.redis.scard(key)
    r = a.start(sid, "touch /tmp/should-not-exist", wait=True)
    assert r.status_code == 429 and "PADDOCK_TENANT_MAX_WAITS" in r.json()["message"]
    assert r.headers.get("Retry-After")
    assert stack.redis.scard(key) == before
    r = a.req("GET", f"/sessions/{sid}/processes/{pid}?wait=true")
    assert r.status_code == 429
    # Polling without wait still works, and stopping the process ends the waits.
    assert a.req("GET", f"/sessions/{sid}/processes/{pid}").status_code == 200
    a.req("DELETE", f"/sessions/{sid}/processes/{pid}")
    for t in waiting:
        t.join(30)
    ls = a.run(sid, "ls /tmp")
    assert "should-not-exist" not in str(ls["stdout"])


def test_a_client_that_goes_away_stops_waiting(stack: Stack) -> None:
    a = Client(stack, new_tenant(stack, "leaver"))
    sid = a.sandbox()
    pid = a.start(sid, "sleep 120").json()["processID"]
    slots = keys.slots("waits", stack_tenant(stack, sid))
    conns = []
    for _ in range(2):
        conn = socket.create_connection(("127.0.0.1", stack.port), timeout=10)
        conn.sendall(
            f"GET /sessions/{sid}/processes/{pid}?wait=true HTTP/1.1\r\n"
            f"Host: 127.0.0.1\r\nX-API-Key: {a.http.headers['X-API-Key']}\r\n\r\n".encode()
        )
        conns.append(conn)
    deadline = time.monotonic() + 20
    while stack.redis.zcard(slots) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    for conn in conns:
        conn.close()
    # Noticed at the next check (every 10 s): the slots are free again for live clients.
    deadline = time.monotonic() + 30
    while stack.redis.zcard(slots) > 0:
        assert time.monotonic() < deadline, "a departed client still holds its wait slot"
        time.sleep(0.2)
    a.req("DELETE", f"/sessions/{sid}/processes/{pid}")


def test_agent_session_history_has_an_output_budget(stack: Stack) -> None:
    client = Client(stack, new_tenant(stack, "chatty-agent"), bearer=True)
    session = client.agent_session(template="Bash")
    with ws_connect(session["connect_url"], session["jwt"]) as ws:
        assert recv(ws)["type"] == "ready"
        ws.send(json.dumps({"type": "task", "prompt": "yes 0123456789 | head -c 3000000"}))
        frames = until(ws, "exit", timeout=120)
        streamed = sum(len(f["data"]) for f in frames if f["type"] == "stdout")
        assert 0 < streamed <= 1 * MiB  # whole frames: one that does not fit is dropped
        notes = [f["data"] for f in frames if f["type"] == "stderr"]
        assert any("PADDOCK_SESSION_OUTPUT_BYTES" in n for n in notes), notes
        assert frames[-1]["exit_code"] == 0 and frames[-1]["oom_killed"] is False
        # The budget stays spent for the next task, which is told so; the session still works.
        ws.send(json.dumps({"type": "task", "prompt": "yes abc | head -c 1200000; echo done"}))
        frames = until(ws, "exit", timeout=60)
        more = sum(len(f["data"]) for f in frames if f["type"] == "stdout")
        assert streamed + more <= 1 * MiB
        assert any("PADDOCK_SESSION_OUTPUT_BYTES" in f.get("data", "") for f in frames)
        assert frames[-1]["exit_code"] == 0
    events = client.req("GET", f"/v1/sessions/{session['chat_session_id']}/events").json()
    assert len(json.dumps(events)) < 2 * MiB


def test_finished_processes_cannot_pile_up_without_limit(stack: Stack) -> None:
    a = Client(stack, new_tenant(stack, "hoarder"))
    sid = a.sandbox()
    cmd = ": " + "x" * 500_000  # a process record keeps its command
    started = []
    for _ in range(40):
        r = a.start(sid, cmd, wait=True)
        if r.status_code == 429:
            break
        assert r.status_code == 200, r.text
        started.append(r.json()["processID"])
    else:
        raise AssertionError("40 kept processes of 0.5 MB each fit a 6 MiB sandbox budget")
    assert 8 <= len(started) <= 12, len(started)
    assert "PADDOCK_SANDBOX_OUTPUT_BYTES" in r.json()["message"] and r.headers["Retry-After"]
    assert a.req("GET", f"/sessions/{sid}/processes/{started[0]}").status_code == 200
    # Deleting a finished process makes room for the next.
    assert a.req("DELETE", f"/sessions/{sid}/processes/{started[0]}").status_code == 204
    assert a.start(sid, cmd, wait=True).status_code == 200


def test_output_answers_in_flight_are_capped_per_tenant(stack: Stack) -> None:
    a, b = Client(stack, new_tenant(stack, "streamer")), Client(stack, new_tenant(stack, "reader"))
    sid = a.sandbox()
    pid = a.run(sid, "yes | head -n 1900000")["processID"]
    held = []
    for _ in range(3):  # read one chunk of each ~120 MB answer, then stall
        r = a.req("GET", f"/sessions/{sid}/processes/{pid}", stream=True)
        assert r.status_code == 200
        r.raw.read(1)
        held.append(r)
    r = a.req("GET", f"/sessions/{sid}/processes/{pid}")
    assert r.status_code == 429 and "PADDOCK_TENANT_MAX_STREAMS" in r.json()["message"]
    assert r.headers["Retry-After"]
    # A short answer, read whole at once, is written without a slot: still given.
    assert a.run(sid, "echo short")["stdout"][0]["line"] == "short"
    # Another tenant reads at once; health answers while the stalled answers stay open.
    sv = b.sandbox()
    assert b.run(sv, "echo mine")["stdout"][0]["line"] == "mine"
    assert a.req("GET", "/health").status_code == 200
    for r in held:
        r.close()
    deadline = time.monotonic() + 30
    while True:  # the server notices the closed connections at its next write
        r = a.req("GET", f"/sessions/{sid}/processes/{pid}", stream=True)
        if r.status_code == 200:
            r.close()
            break
        assert time.monotonic() < deadline, "closed answers still hold their slots"
        time.sleep(0.5)


def test_an_agent_session_queues_a_bounded_number_of_tasks(stack: Stack) -> None:
    client = Client(stack, new_tenant(stack, "queuer"), bearer=True)
    session = client.agent_session(template="Bash")
    with ws_connect(session["connect_url"], session["jwt"]) as ws:
        assert recv(ws)["type"] == "ready"
        ws.send(json.dumps({"type": "task", "prompt": "sleep 30", "id": "busy"}))
        until(ws, "task_started", timeout=60)
        for i in range(3):
            ws.send(json.dumps({"type": "task", "prompt": "x" * 60_000, "id": f"q{i}"}))
        frame = recv(ws, timeout=30)
        while frame["type"] != "error":
            frame = recv(ws, timeout=30)
        assert frame["code"] == "queue_full"
        assert "PADDOCK_SESSION_MAX_QUEUED_TASKS" in frame["message"]
        queue = keys.session_jobs(session["chat_session_id"])
        assert stack.redis.llen(queue) == 2
    client.req("DELETE", f"/v1/sessions/{session['chat_session_id']}")


def test_a_sandbox_with_a_huge_socket_table_costs_a_capped_read(stack: Stack) -> None:
    a = Client(stack, new_tenant(stack, "listener"))
    sid = a.sandbox("Python3")
    script = (
        "import socket, time\n"
        "socks = []\n"
        "for i in range(3000):\n"
        "    s = socket.socket(); s.bind(('127.0.0.1', 20000 + i)); s.listen(); socks.append(s)\n"
        "open('/tmp/ready', 'w').close()\n"
        "time.sleep(120)\n"
    )
    assert a.write(sid, "/home/user/listen.py", script).status_code == 204
    pid = a.start(sid, "python3 /home/user/listen.py").json()["processID"]
    deadline = time.monotonic() + 60
    while a.run(sid, "test -e /tmp/ready && echo y || echo n")["stdout"][0]["line"] != "y":
        assert time.monotonic() < deadline
        time.sleep(0.5)
    r = a.req("GET", f"/sessions/{sid}")
    assert r.status_code == 200, r.text
    ports = r.json()["ports"]
    # 3,000 listeners are ~450 KB of /proc/net/tcp: only what fits PADDOCK_MAX_FILE_BYTES
    # (64 KiB here) is read, and listed.
    assert 100 < len(ports) < 3000, len(ports)
    a.req("DELETE", f"/sessions/{sid}/processes/{pid}")


def _raw_long_poll(stack: Stack, key: str, sid: str, pid: str) -> socket.socket:
    conn = socket.create_connection(("127.0.0.1", stack.port), timeout=60)
    conn.sendall(
        f"GET /sessions/{sid}/processes/{pid}?wait=true HTTP/1.1\r\n"
        f"Host: 127.0.0.1\r\nX-API-Key: {key}\r\nConnection: close\r\n\r\n".encode()
    )
    return conn


def test_long_polls_on_descriptors_past_1023_wait_and_notice_departures(stack: Stack) -> None:
    """An evented web worker holding a thousand clients hands out descriptors past 1023, where
    select() fails: a wait must neither end early there nor miss its client leaving."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    idle = []
    try:
        # Connections that never send a request, until every web worker holds over 1,100
        # descriptors: the next ones it accepts get numbers past 1023.
        while min(web_worker_fds(stack)) <= 1100:
            assert len(idle) < 6000, web_worker_fds(stack)
            for _ in range(200):
                idle.append(socket.create_connection(("127.0.0.1", stack.port), timeout=10))
            time.sleep(0.2)
        a = Client(stack, new_tenant(stack, "high-fd"))
        key = a.http.headers["X-API-Key"]
        sid = a.sandbox()
        pid = a.start(sid, "sleep 14").json()["processID"]
        stays = _raw_long_poll(stack, key, sid, pid)
        leaves = _raw_long_poll(stack, key, sid, pid)
        slots = keys.slots("waits", stack_tenant(stack, sid))
        deadline = time.monotonic() + 20
        while stack.redis.zcard(slots) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        leaves.close()
        answer = b""
        while chunk := stays.recv(1 << 16):  # past a 10 s check, then the process's end
            answer += chunk
        stays.close()
        assert b" 200 OK" in answer.split(b"\r\n", 1)[0]
        assert b'"finished":true' in answer, answer[-200:]
        assert stack.redis.zcard(slots) == 0
    finally:
        for conn in idle:
            conn.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def stack_tenant(stack: Stack, sid: str) -> str:
    return str(stack.redis.hget(keys.sandbox(sid), "tenant").decode())


def test_an_oom_kill_is_reported(stack: Stack) -> None:
    a = Client(stack, new_tenant(stack, "hog"))
    sid = a.sandbox()
    out = a.run(sid, "x=$(head -c 300000000 /dev/zero | tr '\\0' a); echo survived")
    assert [x["line"] for x in out["stdout"]] == []
    last = out["stderr"][-1]["line"]
    assert "ran out of memory" in last and "PADDOCK_SANDBOX_MEMORY" in last
    # A process that is simply killed is not called an OOM kill.
    killed = a.run(sid, "kill -9 $$")
    assert "memory" not in stderr_text(killed)
    assert a.run(sid, "echo alive")["stdout"][0]["line"] == "alive"
