"""Faults of the engine and of the control worker, against the real stack: a container stopped
behind Paddock's back makes its sandbox `lost` (slots and storage freed, 404 on the E2B API,
never a 500), a paused one is not lost, and periodic tasks tick once per interval across two
control workers, a killed one leaving nothing running.

The machine's dockerd is shared with other stacks, so it is never restarted here: `docker
kill` of one container is what a dockerd restart (live-restore off) does to every container.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from devstack.stack import Stack
from shared import keys
from shared.settings import Settings
from tests.integration.client import Client, stdout_lines, wait_until
from tests.integration.session_helpers import close_code, new_tenant, recv, until, ws_connect
from workers.backends.docker.storage import SandboxStorage

HOST = "host-a"
REAP = "paddock.control.reap"


@pytest.fixture(scope="module")
def st(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {
        # Long enough that the exec right after the kill is what notices it (driver.on_gone);
        # the sandbox killed without a request is found by the periodic pass.
        "PADDOCK_RECONCILE_INTERVAL": "3",
        "PADDOCK_LOST_KEEP": "60",
        "PADDOCK_HOST_CAPACITY": "3",
        "PADDOCK_TENANT_MAX_SANDBOXES": "3",
    }
    with Stack(tmp_path_factory.mktemp("faults"), hosts=(HOST,), env=env) as s:
        yield s


def _container(st: Stack, sid: str) -> Any:
    [c] = [c for c in st.containers() if c.labels["paddock.sandbox"] == sid]
    return c


def _state(api: Client, sid: str) -> str | int:
    """The sandbox's state on /v1, or the status code when it has none."""
    r = api.req("GET", f"/v1/sandboxes/{sid}")
    return str(r.json()["state"]) if r.status_code == 200 else r.status_code


def _storage_ids(st: Stack) -> list[str]:
    return SandboxStorage(Settings.from_env({**st.env, "PADDOCK_HOST_ID": HOST})).sandbox_ids()


def test_a_killed_container_is_lost_frees_its_slots_and_never_answers_500(st: Stack) -> None:
    api = Client(st, new_tenant(st, "crashed"), timeout=60)
    a, b = api.sandbox("Bash"), api.sandbox("Bash")
    assert api.start(a, "sleep 600").status_code == 200
    # Both looked up before either is killed: the first kill is noticed at once (the supervisor
    # backend's channel ends), and the reconcile it wakes may run before the second lookup.
    for container in [_container(st, sid) for sid in (a, b)]:
        container.kill()

    # The exec right after the kill meets Docker's 409 "is not running": a clear 404.
    r = api.start(a, "echo hi")
    assert r.status_code in (404, 410), r.text
    assert "message" in r.json()
    # Both are lost within seconds: `a` from that refusal, `b` by the periodic reconcile.
    for sid in (a, b):
        wait_until(lambda sid=sid: _state(api, sid) != "running", f"{sid} noticed", 20)
        assert _state(api, sid) == "lost"
        assert api.req("GET", f"/sessions/{sid}").status_code == 404
        assert api.start(sid, "echo hi").status_code == 404
        listing = api.req("GET", f"/sessions/{sid}/filesystem/dir", params={"path": "/"})
        assert listing.status_code == 404
    listed = [s["sandbox_id"] for s in api.req("GET", "/v1/sandboxes").json()["sandboxes"]]
    assert a not in listed and b not in listed, "a lost sandbox holds no slot"

    # Slots: the host's capacity and the tenant's quota, as the next create is checked.
    assert st.redis.smembers(keys.host_sandboxes(HOST)) == set()
    usage = api.req("GET", "/v1/tenants/me/usage").json()["quotas"]["sandboxes"]
    assert usage["used"] == 0
    # Cleaned up: containers removed, storage released (after the container and the egress
    # rules: not at the same instant).
    wait_until(
        lambda: not any(c.labels["paddock.sandbox"] in (a, b) for c in st.containers()),
        "containers removed",
        20,
    )
    wait_until(lambda: not {a, b} & set(_storage_ids(st)), "storage released", 20)
    # The full capacity (3) and quota (3) are usable again.
    fresh = [api.sandbox("Bash") for _ in range(3)]
    assert stdout_lines(api.run(fresh[0], "echo ok")) == ["ok"]
    assert "lost (its container is" in st.log(f"worker-{HOST}")
    for sid in fresh:
        assert api.req("DELETE", f"/v1/sandboxes/{sid}").status_code == 204
    # The lost records are purged by the reaper after PADDOCK_LOST_KEEP (60 s here): still
    # shown now, and a delete of one is accepted and purges it.
    assert api.req("DELETE", f"/v1/sandboxes/{a}").status_code == 204
    wait_until(lambda: not st.redis.exists(keys.sandbox(a)), "lost record deleted", 30)


def test_a_paused_container_is_frozen_not_lost(st: Stack) -> None:
    api = Client(st, new_tenant(st, "frozen"), timeout=60)
    sid = api.sandbox("Bash")
    c = _container(st, sid)
    c.pause()
    try:
        r = api.start(sid, "echo hi")
        assert r.status_code == 409, r.text
        assert "paused" in r.json()["message"]
        time.sleep(7)  # two periodic passes
        assert api.req("GET", f"/v1/sandboxes/{sid}").json()["state"] == "running"
        # Not gone: the E2B session answers (its ports read says paused), never 404 or 500.
        assert api.req("GET", f"/sessions/{sid}").status_code in (200, 409)
    finally:
        c.unpause()
    assert stdout_lines(api.run(sid, "echo back")) == ["back"]
    assert api.req("DELETE", f"/sessions/{sid}").status_code in (200, 204)


def test_an_agent_session_whose_sandbox_is_lost_ends_and_says_why(st: Stack) -> None:
    client = Client(st, new_tenant(st, "agent-lost"), bearer=True)
    s = client.agent_session(template="Bash")
    sid = s["chat_session_id"]
    sandbox = client.req("GET", f"/v1/sessions/{sid}").json()["sandbox_id"]
    with ws_connect(s["connect_url"], s["jwt"]) as ws:
        assert recv(ws)["type"] == "ready"
        _container(st, sandbox).kill()
        # Found by the periodic pass (3 s here): the client is told why, then the socket
        # closes as for any ended session.
        [*_, error] = until(ws, "error", timeout=30)
        assert error["code"] == "sandbox_lost" and "lost" in error["message"]
        assert close_code(ws) == 4404
    got = client.req("GET", f"/v1/sessions/{sid}").json()
    assert got["state"] == "ended"
    assert client.req("GET", f"/v1/sandboxes/{sandbox}").json()["state"] == "lost"
    # The session no longer counts against the tenant's sessions.
    usage = client.req("GET", "/v1/tenants/me/usage").json()["quotas"]["agent_sessions"]
    assert usage["used"] == 0


def _group(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(entry))
    return out


def _ticks(st: Stack) -> int:
    return int(st.redis.hget(keys.ticks(), REAP) or 0)


def test_two_control_workers_tick_once_and_a_killed_one_leaves_nothing(st: Stack) -> None:
    st._spawn("control2", [sys.executable, "-m", "workers", "control"])
    wait_until(lambda: "scheduler started" in st.log("control2"), "second control worker", 60)
    # The reaper ticks every second (devstack/stack.py): once per tick with two schedulers.
    before, started = _ticks(st), time.monotonic()
    time.sleep(8)
    ran = _ticks(st) - before
    elapsed = time.monotonic() - started
    assert 3 <= ran <= elapsed + 2, f"{ran} reaps in {elapsed:.1f} s with two control workers"
    assert "scheduler started" in st.log("control")

    proc = st.procs.pop("control")
    assert _group(proc.pid) == [proc.pid], "the control worker runs no child process (no beat)"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    time.sleep(1)
    assert _group(proc.pid) == [], "nothing of the killed control worker is left running"

    before, started = _ticks(st), time.monotonic()
    time.sleep(5)
    ran = _ticks(st) - before
    assert 2 <= ran <= time.monotonic() - started + 2, "ticks go on with the other worker"
