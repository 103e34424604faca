"""A tenant that freezes one of Paddock's own execs cannot make its sandbox undeletable.

The attack: a process in the sandbox SIGSTOPs every new process that appears in it, among them
the ``runc init`` of Paddock's next ``docker exec`` (it runs as the sandbox user for a moment
before it becomes the command). Docker then blocks every call on that container (exec,
inspect, kill, ``rm -f``) until that process runs again: a DELETE used to wait for the engine
client's minute and fail, holding a host worker thread, and the reaper retried for ever.

Two tenants: "local" (no key, ``PADDOCK_AUTH=off``) attacks; "victim" (an API key) measures.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import docker
import pytest
import requests

from devstack.stack import Stack
from shared import keys
from tests.integration.client import Client
from tests.integration.session_helpers import new_tenant
from tests.integration.storage_helpers import host_traces, storage_of
from workers.backends.docker.driver import kill_container_processes

HOST = "host-a"
FS_TIMEOUT = 5  # PADDOCK_FS_TIMEOUT of this module's stack: a frozen exec's call ends after 7 s
# Generous: before the fix the DELETE took the engine client's 60 s, and then failed.
DELETE_WITHIN = 40.0
# Another tenant's echo; it took well under a second meanwhile when measured.
PROMPT = 5.0
REQUEST_TIMEOUT = 90  # every request of this module: a hung call fails the test, never hangs it

# Runs in the sandbox: SIGSTOPs every process that appears after it. A process still owned by
# root (``runc init`` before it becomes the sandbox user) is tried again on the next pass.
FREEZER = r"""
import os, signal
done = {int(p) for p in os.listdir("/proc") if p.isdigit()}
print("armed", flush=True)
while True:
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in done:
            continue
        try:
            os.kill(int(name), signal.SIGSTOP)
        except PermissionError:
            continue
        except ProcessLookupError:
            pass
        done.add(int(name))
"""


def timed(fn: Any, *args: Any, **kw: Any) -> tuple[requests.Response, float]:
    started = time.monotonic()
    r = fn(*args, **kw)
    return r, time.monotonic() - started


def redis_traces(stack: Stack, sid: str) -> list[str]:
    """Redis keys that name the sandbox, and sets or indexes that still hold it."""
    found = [k.decode() for k in stack.redis.scan_iter(f"*{sid}*")]
    for key in stack.redis.scan_iter(f"{keys.PREFIX}:*"):
        kind = stack.redis.type(key)
        if (kind == b"set" and stack.redis.sismember(key, sid)) or (
            kind == b"zset" and stack.redis.zscore(key, sid) is not None
        ):
            found.append(key.decode())
    return found


def sandbox_containers(stack: Stack, sid: str) -> list[Any]:
    # A listing: unlike inspect, it answers even while the engine is stuck on a container.
    return [c for c in stack.containers() if c.labels.get("paddock.sandbox") == sid]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # The attack freezes a `docker exec`: the Docker backend's (the supervisor backend has
    # none; a stopped supervisor is test_abuse_supervisor.py's).
    env = {"PADDOCK_FS_TIMEOUT": str(FS_TIMEOUT), "PADDOCK_SANDBOX_BACKEND": "docker"}
    with Stack(tmp_path_factory.mktemp("abuse-frozen"), hosts=(HOST,), env=env) as st:
        try:
            yield st
        finally:
            # A failed test may leave a frozen sandbox, which the stack's own teardown (an
            # engine `rm -f`) would wait on: end its processes first.
            for c in st.containers():
                kill_container_processes(c.id)


@pytest.fixture(scope="module")
def attacker(stack: Stack) -> Client:
    return Client(stack, timeout=REQUEST_TIMEOUT)


@pytest.fixture(scope="module")
def victim(stack: Stack) -> Client:
    return Client(stack, new_tenant(stack, "victim"), timeout=REQUEST_TIMEOUT)


@pytest.fixture(scope="module")
def victim_sid(victim: Client) -> str:
    return victim.sandbox("Bash")


def arm(http: Client, sid: str) -> None:
    """Write and start the freezer; return once it watches."""
    r = http.req(
        "PUT",
        f"/sessions/{sid}/filesystem/file",
        params={"path": "/home/user/freezer.py"},
        json={"content": FREEZER},
    )
    assert r.status_code == 204, r.text
    r = http.req(
        "POST", f"/sessions/{sid}/processes", json={"cmd": "python3 /home/user/freezer.py"}
    )
    assert r.status_code == 200, r.text
    pid = r.json()["processID"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        out = http.req("GET", f"/sessions/{sid}/processes/{pid}").json()
        if [x["line"] for x in out["stdout"]] == ["armed"]:
            return
        assert not out["finished"], out
        time.sleep(0.2)
    raise AssertionError("the freezer did not start")


def wedge(
    http: Client, stack: Stack, sid: str, pool: ThreadPoolExecutor
) -> list[Future[tuple[requests.Response, float]]]:
    """Make Paddock exec into the armed sandbox (a file read) until the engine is stuck on its
    container: an inspect no longer answers. Returns the reads made."""
    probe = docker.from_env(timeout=3)
    name = f"paddock-{stack.instance}-{sid}"
    reads: list[Future[tuple[requests.Response, float]]] = []
    for _ in range(4):
        reads.append(
            pool.submit(
                timed,
                http.req,
                "GET",
                f"/sessions/{sid}/filesystem/dir",
                params={"path": "/home/user"},
            )
        )
        time.sleep(1.5)
        try:
            probe.api.inspect_container(name)
        except requests.exceptions.Timeout:
            return reads
        reads[-1].result(timeout=REQUEST_TIMEOUT)  # it stopped the command, not runc: again
    raise AssertionError("could not freeze an exec of the sandbox")


def test_a_frozen_sandbox_is_deleted_in_bounded_time_and_leaves_nothing(
    stack: Stack, attacker: Client, victim: Client, victim_sid: str
) -> None:
    assert victim.timed_echo(victim_sid) < PROMPT
    sid = attacker.sandbox("Python3")
    path = storage_of(stack, HOST, sid)
    assert os.path.ismount(path / "mnt")
    arm(attacker, sid)
    with ThreadPoolExecutor(4) as pool:
        reads = wedge(attacker, stack, sid, pool)
        delete = pool.submit(timed, attacker.req, "DELETE", f"/sessions/{sid}")
        # Another tenant is served meanwhile, at once, again and again.
        echoes = 0
        while not delete.done() or echoes == 0:
            assert victim.timed_echo(victim_sid) < PROMPT
            echoes += 1
            time.sleep(0.2)
        r, took = delete.result(timeout=REQUEST_TIMEOUT)
        assert r.status_code == 204, r.text
        assert took < DELETE_WITHIN, took
        # The frozen exec's own request ended too, with an error, at its deadline.
        for f in reads:
            r, took = f.result(timeout=REQUEST_TIMEOUT)
            assert r.status_code in (200, 404, 504), r.text
            assert took < FS_TIMEOUT + 15, took

    # The host had to end the container's processes: the attack did wedge the engine.
    assert f"sandbox {sid}: container removal 1/3 failed" in stack.log(f"worker-{HOST}")
    # Nothing is left: container, mount, loop device, image file, records.
    assert sandbox_containers(stack, sid) == []
    assert not path.exists()
    assert host_traces(path) == []
    time.sleep(2)  # a late write (the frozen read's reply, the freezer's pump) would show now
    assert redis_traces(stack, sid) == []
    assert attacker.req("GET", f"/sessions/{sid}").status_code == 404
    assert attacker.req("DELETE", f"/sessions/{sid}").status_code == 404
    # The victim is untouched.
    assert victim.timed_echo(victim_sid) < PROMPT


def test_a_restarted_worker_is_not_held_by_a_frozen_sandbox(
    stack: Stack, attacker: Client, victim: Client, victim_sid: str
) -> None:
    sid = attacker.sandbox("Python3")
    arm(attacker, sid)
    with ThreadPoolExecutor(2) as pool:
        for f in wedge(attacker, stack, sid, pool):
            f.result(timeout=REQUEST_TIMEOUT)
    # A new worker knows no container id yet: it must not ask the stuck engine to inspect the
    # sandbox (before the fix: a minute) to start a process there.
    stack.stop_process(f"worker-{HOST}")
    stack.start_host(HOST)
    deadline = time.monotonic() + 60
    while HOST not in stack.alive_hosts():
        assert time.monotonic() < deadline, "the worker did not come back"
        time.sleep(0.2)
    r, took = timed(attacker.req, "POST", f"/sessions/{sid}/processes", json={"cmd": "true"})
    assert r.status_code == 504, r.text
    assert took < FS_TIMEOUT + 15, took
    assert victim.timed_echo(victim_sid) < PROMPT
    r, took = timed(attacker.req, "DELETE", f"/sessions/{sid}")
    assert r.status_code == 204, r.text
    assert took < DELETE_WITHIN, took
    assert sandbox_containers(stack, sid) == []
    assert host_traces(storage_of(stack, HOST, sid)) == []
