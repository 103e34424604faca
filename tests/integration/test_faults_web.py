"""Faults of the web tier and of the host worker, against the real stack, while processes print
and clients wait:

- `kill -9` of the gunicorn workers holding an agent session's WebSocket and long-polls: the
  master starts new workers, long-polls retried get every line once, and the WebSocket resumed
  by `last_seq` has no gap and no repeat.
- `kill -9` of the host worker, restarted as a supervisor would: the API answers within
  seconds of its return, every wait returns (none hangs to PADDOCK_WAIT_TIMEOUT), the
  processes' records are closed, saying on stderr that their output was lost, and new execs
  run. Output surviving the restart is future work (issue 12): lines printed while the worker
  was away are lost, and this says so rather than asserting otherwise.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from websockets.exceptions import ConnectionClosed

from devstack.stack import Stack
from shared import keys
from tests.integration.client import Client, stderr_lines, stdout_lines, wait_until
from tests.integration.session_helpers import new_tenant, recv, until, ws_connect

HOST = "host-a"
N = 60  # lines per process, one every 100 ms: the fault falls in the middle
COUNT = f"for i in $(seq 1 {N}); do echo $i; sleep 0.1; done"
# The agent's command prints half its lines, then waits for GATE (made by the test once the web
# workers are dead): however slow the set-up, it cannot end before the kill (under load it did,
# and the resumed socket then had no exit left to send).
GATE = "/tmp/after-the-kill"
AGENT = (
    "for i in $(seq 1 25); do echo a$i; sleep 0.1; done; "
    f"while [ ! -e {GATE} ]; do sleep 0.1; done; "
    "for i in $(seq 26 50); do echo a$i; sleep 0.1; done"
)
WAIT_TIMEOUT = 45


@pytest.fixture(scope="module")
def st(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"PADDOCK_AUTH": "on", "PADDOCK_WAIT_TIMEOUT": str(WAIT_TIMEOUT)}
    with Stack(tmp_path_factory.mktemp("web-faults"), hosts=(HOST,), env=env) as s:
        yield s


def _children(pid: int) -> set[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return {int(x) for x in f.read().split()}


def _beat(st: Stack, host: str) -> float:
    """When the host last sent its heartbeat (0: none alive)."""
    return float(st.redis.hget(keys.host(host), "updated") or 0)


def _healthy(api: Client) -> bool:
    try:
        return api.req("GET", "/health", timeout=5).ok
    except requests.RequestException:
        return False


class Poller(threading.Thread):
    """A client that long-polls a process until it has finished, retrying when its connection
    breaks (as an SDK's retry would). ``failures``: connections that broke."""

    def __init__(self, api: Client, sid: str, pid: str) -> None:
        super().__init__(daemon=True)
        self.api, self.sid, self.pid = api, sid, pid
        self.failures = 0
        self.body: dict[str, Any] | None = None
        self.statuses: list[int] = []

    def run(self) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                r = self.api.req(
                    "GET", f"/sessions/{self.sid}/processes/{self.pid}?wait=true", timeout=90
                )
            except requests.RequestException:
                self.failures += 1
                time.sleep(0.2)
                continue
            self.statuses.append(r.status_code)
            if r.status_code == 200 and r.json()["finished"]:
                self.body = r.json()
                return
            time.sleep(0.2)


def _start_counting(api: Client, n: int) -> list[Poller]:
    pollers = []
    # The sandboxes first (slow under load), then the processes close together: each is
    # still printing when the fault falls.
    for sid in [api.sandbox("Bash") for _ in range(n)]:
        r = api.start(sid, COUNT)
        assert r.status_code == 200, r.text
        pollers.append(Poller(api, sid, r.json()["processID"]))
    for p in pollers:
        p.start()
    return pollers


def test_kill_9_of_the_web_workers_loses_no_line_and_the_socket_resumes(st: Stack) -> None:
    key = new_tenant(st, "webkill")
    api, client = Client(st, key, timeout=90), Client(st, key, bearer=True)
    session = client.agent_session()
    ws = ws_connect(session["connect_url"], session["jwt"])
    recv(ws)
    ws.send(json.dumps({"type": "task", "prompt": AGENT, "id": "count"}))
    seen: list[dict[str, Any]] = []
    while len([f for f in seen if f["type"] == "stdout"]) < 3:
        seen.append(recv(ws))
    pollers = _start_counting(api, 3)
    time.sleep(1.5)  # every long-poll is waiting, the output half printed

    master = st.procs["web"].pid
    workers = _children(master)
    assert len(workers) == 2
    for pid in workers:  # the ones holding the socket and the long-polls among them
        os.kill(pid, signal.SIGKILL)
    # The master starts new workers, which serve once they have loaded the app (seconds on a
    # loaded machine: a new worker imports it; CI once took more than 10 s).
    wait_until(lambda: len(_children(master) - workers) == 2, "new web workers", 15)
    wait_until(lambda: _healthy(api), "the new web workers to answer", 60)

    # The socket broke; resumed from the last frame seen, it misses and repeats nothing.
    try:
        while True:
            seen.append(recv(ws, timeout=15))
    except ConnectionClosed:
        pass
    assert "exit" not in [f["type"] for f in seen]
    sandbox = client.req("GET", f"/v1/sessions/{session['chat_session_id']}").json()["sandbox_id"]
    assert stdout_lines(api.run(sandbox, f"touch {GATE} && echo open")) == ["open"]  # the rest
    ws = ws_connect(session["connect_url"], session["jwt"], last_seq=seen[-1]["seq"])
    assert recv(ws)["type"] == "ready"
    seen += until(ws, "exit", timeout=60)
    ws.close()
    seqs = [f["seq"] for f in seen]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "a gap or a repeat"
    out = "".join(f["data"] for f in seen if f["type"] == "stdout")
    assert out == "".join(f"a{i}\n" for i in range(1, 51))

    for p in pollers:
        p.join(90)
        assert p.body is not None, (p.failures, p.statuses)
        assert p.failures >= 1, "the long-poll's connection was on a killed worker"
        assert 500 not in p.statuses
        assert stdout_lines(p.body) == [str(i) for i in range(1, N + 1)]  # 0 lost, 0 doubled
    client.req("DELETE", f"/v1/sessions/{session['chat_session_id']}")
    for p in pollers:
        api.req("DELETE", f"/sessions/{p.sid}")


def test_kill_9_of_the_host_worker_closes_every_wait_and_says_what_was_lost(st: Stack) -> None:
    """The Docker backend loses what was printed while no worker read it, and says so; the
    supervisor backend's restarted worker follows its processes again and loses nothing."""
    followed = st.env["PADDOCK_SANDBOX_BACKEND"] == "supervisor"
    api = Client(st, new_tenant(st, "hostkill"), timeout=90)
    sleeper = api.sandbox("Bash")
    slow = api.start(sleeper, "sleep 600" if not followed else "sleep 8").json()["processID"]
    pollers = [*_start_counting(api, 3), Poller(api, sleeper, slow)]
    pollers[-1].start()
    time.sleep(2)

    st.stop_process(f"worker-{HOST}", signal.SIGKILL)
    killed = time.time()
    time.sleep(1)
    st.start_host(HOST)  # as a supervisor would
    # Back: a heartbeat of the new worker (the killed one's lives on until its TTL), sent once
    # it is ready.
    wait_until(lambda: _beat(st, HOST) > killed, "the worker back", 60)
    back = time.monotonic()

    # The API answers within seconds of the worker's return.
    started = time.monotonic()
    r = api.req("GET", f"/v1/sandboxes/{sleeper}", timeout=30)
    assert r.status_code == 200 and r.json()["state"] == "running"
    assert time.monotonic() - started < 5
    # Every wait returns soon after, far from PADDOCK_WAIT_TIMEOUT; each record is closed.
    for p in pollers:
        p.join(max(1.0, back + 20 - time.monotonic()))
        assert not p.is_alive(), "a wait hangs after the worker returned"
        assert p.body is not None and p.body["finished"] is True, p.statuses
        assert 500 not in p.statuses
        lines = stdout_lines(p.body)
        if followed:  # every line once, and nothing lost
            assert lines == ([] if p.pid == slow else [str(i) for i in range(1, N + 1)])
            assert not stderr_lines(p.body), p.body
            continue
        # What was read before the kill is kept, in order and once; the rest is lost, and
        # the answer says so.
        assert lines == [str(i) for i in range(1, len(lines) + 1)]
        assert any("output was lost" in line for line in stderr_lines(p.body)), p.body
    assert time.monotonic() - back < WAIT_TIMEOUT
    # New execs run, in the same sandboxes.
    for p in pollers:
        assert stdout_lines(api.run(p.sid, "echo after")) == ["after"]
        api.req("DELETE", f"/sessions/{p.sid}")
