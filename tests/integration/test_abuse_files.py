"""Abuse through file operations and request bodies, against the real stack: FIFOs, devices and
sockets are refused at once, a sandbox (and a tenant) can hold only its share of a host's
worker threads, dash paths are paths, bad JSON is a 4xx, and logs keep no user content.

Two tenants: "local" (no key, ``PADDOCK_AUTH=off``) attacks; "victim" (an API key) measures.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
import requests

from devstack.stack import Stack
from tests.integration.client import Client
from tests.integration.session_helpers import new_tenant, recv, until, ws_connect

FS_TIMEOUT = 10  # seconds: PADDOCK_FS_TIMEOUT (its default) of this module's stack
TENANT_SHARE = 3  # PADDOCK_TENANT_WORKER_SHARE of this module's stack (sandbox share: 2)
# Generous: the old code answered a FIFO read with a 504 after 60 s, and another tenant's exec
# waited behind it as long.
PROMPT = 5.0
# A task over its share is put back in the queue for ~4.5 s in all before its 429.
REFUSED_WITHIN = 10.0

# Runs in the sandbox: stops (SIGSTOP) whatever process opens /home/user/bait, the moment it
# opens it. A read of the bait then never finishes by itself: a reproducible slow operation,
# which only the file-operation deadline ends.
FREEZER = r"""
import ctypes, os, signal
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init()
assert libc.inotify_add_watch(fd, b"/home/user/bait", 0x20) >= 0  # IN_OPEN
print("armed", flush=True)
while True:
    os.read(fd, 4096)
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            if any(os.readlink(f"/proc/{pid}/fd/{n}") == "/home/user/bait" for n in fds):
                os.kill(int(pid), signal.SIGSTOP)
        except OSError:
            pass
"""


def lines(out: dict[str, Any]) -> list[str]:
    return [x["line"] for x in out["stdout"]]


def timed(fn: Any, *args: Any, **kw: Any) -> tuple[requests.Response, float]:
    started = time.monotonic()
    r = fn(*args, **kw)
    return r, time.monotonic() - started


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {
        "PADDOCK_FS_TIMEOUT": str(FS_TIMEOUT),
        "PADDOCK_TENANT_WORKER_SHARE": str(TENANT_SHARE),
        "PADDOCK_SANDBOX_WORKER_SHARE": "2",
        "PADDOCK_WORKER_CONCURRENCY": "8",
    }
    with Stack(tmp_path_factory.mktemp("abuse-files"), env=env) as st:
        yield st


@pytest.fixture(scope="module")
def attacker(stack: Stack) -> Client:
    return Client(stack)


@pytest.fixture(scope="module")
def victim_key(stack: Stack) -> str:
    return new_tenant(stack, "victim")


@pytest.fixture(scope="module")
def victim(stack: Stack, victim_key: str) -> Client:
    return Client(stack, victim_key)


@pytest.fixture(scope="module")
def victim_sid(victim: Client) -> str:
    return victim.sandbox("Bash")


@pytest.fixture(scope="module")
def bash_sid(attacker: Client) -> str:
    return attacker.sandbox("Bash")


@pytest.fixture(scope="module")
def py_sid(attacker: Client) -> str:
    return attacker.sandbox("Python3")


# -- FIFOs, devices, sockets -------------------------------------------------------------------
def test_fifo_reads_answer_at_once_and_other_tenants_are_served(
    attacker: Client, bash_sid: str, victim: Client, victim_sid: str
) -> None:
    attacker.run(bash_sid, "mkfifo /home/user/fifo")
    with ThreadPoolExecutor(9) as pool:
        reads = [pool.submit(timed, attacker.read, bash_sid, "/home/user/fifo") for _ in range(8)]
        victim_took = pool.submit(victim.timed_echo, victim_sid)
        results = [f.result() for f in reads]
        assert victim_took.result() < PROMPT
    refused = 0
    for r, took in results:
        assert took < PROMPT, (r.status_code, took)
        # Refused as a FIFO, or (8 at once on one sandbox) over the sandbox's worker share.
        assert r.status_code in (400, 429), r.text
        if r.status_code == 400:
            assert r.json() == {
                "message": "not a regular file (a FIFO, socket or device): /home/user/fifo"
            }
            refused += 1
        else:
            assert "PADDOCK_SANDBOX_WORKER_SHARE" in r.json()["message"]
            assert r.headers["Retry-After"] == "1"
    assert refused >= 1
    # The FIFO is still there, and the sandbox works.
    assert lines(attacker.run(bash_sid, "test -p /home/user/fifo && echo fifo")) == ["fifo"]


@pytest.mark.parametrize(
    "path",
    ["/dev/zero", "/dev/urandom", "/dev/null", "/home/user/link-to-fifo", "/home/user/sock"],
)
def test_devices_sockets_and_links_to_them_are_not_read(
    attacker: Client, py_sid: str, path: str
) -> None:
    attacker.run(
        py_sid,
        "cd /home/user && [ -e sock ] || { mkfifo fifo2 && ln -s fifo2 link-to-fifo && "
        "python3 -c \"import socket; socket.socket(socket.AF_UNIX).bind('sock')\"; }",
    )
    r, took = timed(attacker.read, py_sid, path)
    assert took < PROMPT
    assert r.status_code == 400, r.text
    assert r.json() == {"message": f"not a regular file (a FIFO, socket or device): {path}"}


def test_a_link_to_a_regular_file_is_read(attacker: Client, bash_sid: str) -> None:
    attacker.run(bash_sid, "cd /home/user && echo linked > target.txt && ln -sf target.txt l.txt")
    r = attacker.read(bash_sid, "/home/user/l.txt")
    assert r.status_code == 200 and r.json() == {"content": "linked\n"}


@pytest.mark.parametrize("path", ["/home/user/wfifo", "/home/user/link-to-wfifo", "/dev/null"])
def test_writing_onto_a_fifo_or_device_is_refused_without_blocking(
    attacker: Client, bash_sid: str, path: str
) -> None:
    attacker.run(bash_sid, "cd /home/user && mkfifo wfifo; ln -sf wfifo link-to-wfifo")
    r, took = timed(attacker.write, bash_sid, path, "data")
    assert took < PROMPT
    assert r.status_code == 400, r.text
    assert r.json() == {"message": f"not a regular file (a FIFO, socket or device): {path}"}
    assert lines(attacker.run(bash_sid, "test -p /home/user/wfifo && echo still-fifo")) == [
        "still-fifo"
    ]


# -- fair shares of the host's worker threads ---------------------------------------------------
def _arm(attacker: Client, sid: str) -> str:
    """An 8 MiB bait file plus the freezer, running; returns the freezer's process id."""
    attacker.run(sid, "head -c 8388608 /dev/zero | tr '\\0' x > /home/user/bait")
    assert attacker.write(sid, "/home/user/freezer.py", FREEZER).status_code == 204
    assert attacker.write(sid, "/home/user/small.txt", "small").status_code == 204
    r = attacker.req(
        "POST", f"/sessions/{sid}/processes", json={"cmd": "python3 /home/user/freezer.py"}
    )
    assert r.status_code == 200, r.text
    pid = str(r.json()["processID"])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        out = attacker.req("GET", f"/sessions/{sid}/processes/{pid}").json()
        if "armed" in lines(out):
            return pid
        assert not out["finished"], out
        time.sleep(0.2)
    raise AssertionError("the freezer did not start")


def test_a_sandbox_and_a_tenant_hold_only_their_share_of_worker_threads(
    attacker: Client, victim: Client, victim_sid: str, bash_sid: str
) -> None:
    s1 = attacker.sandbox("Python3")
    s2 = attacker.sandbox("Python3")
    freezers = {s1: _arm(attacker, s1), s2: _arm(attacker, s2)}
    sleeper = attacker.req("POST", f"/sessions/{s1}/processes", json={"cmd": "sleep 300"}).json()[
        "processID"
    ]
    with ThreadPoolExecutor(12) as pool:
        # Three slow reads: two fill s1's share, the third fills the tenant's (3).
        held: list[Future[tuple[requests.Response, float]]] = [
            pool.submit(timed, attacker.read, sid, "/home/user/bait") for sid in (s1, s1, s2)
        ]
        time.sleep(1.5)
        assert not any(f.done() for f in held), "the bait reads were not held"

        # s1 is at its share; the tenant is at its share on any other sandbox.
        over_sandbox = pool.submit(timed, attacker.read, s1, "/home/user/small.txt")
        over_tenant = [
            pool.submit(timed, attacker.read, s2, "/home/user/small.txt"),
            pool.submit(timed, attacker.read, bash_sid, "/home/user/small.txt"),
            pool.submit(
                timed,
                attacker.req,
                "POST",
                f"/sessions/{bash_sid}/processes",
                json={"cmd": "true"},
            ),
        ]
        # A stop is never refused.
        stop = pool.submit(timed, attacker.req, "DELETE", f"/sessions/{s1}/processes/{sleeper}")
        # Another tenant is served meanwhile, at once.
        assert victim.timed_echo(victim_sid) < PROMPT
        assert victim.write(victim_sid, "/home/user/v.txt", "v").status_code == 204

        r, took = stop.result()
        assert r.status_code == 204 and took < PROMPT
        r, took = over_sandbox.result()
        assert took < REFUSED_WITHIN
        assert r.status_code == 429, r.text
        assert "PADDOCK_SANDBOX_WORKER_SHARE" in r.json()["message"]
        assert r.headers["Retry-After"] == "1"
        for f in over_tenant:
            r, took = f.result()
            assert took < REFUSED_WITHIN
            assert r.status_code == 429, r.text
            assert "PADDOCK_TENANT_WORKER_SHARE" in r.json()["message"]
            assert r.headers["Retry-After"] == "1"
        assert not any(f.done() for f in held), "the bait reads ended too soon"

        # The held reads end at the file-operation deadline: the host then continues the
        # stopped supervisor and asks once more. The freezer stops it again (a 504 saying
        # which deadline) unless, on a loaded machine, the 8 MiB were sent before it could:
        # then the whole file, and never anything else.
        for f in held:
            r, took = f.result()
            assert r.status_code in (200, 504), r.text
            if r.status_code == 504:
                assert "PADDOCK_FS_TIMEOUT" in r.json()["message"]
            else:
                assert r.json() == {"content": "x" * 8388608}
            assert FS_TIMEOUT - 1 < took < 2 * FS_TIMEOUT + 15

    # Shares are back: once the freezer is gone the sandboxes answer, and no stopped reader
    # was left in them (the supervisor backend's reader is the supervisor: the host continues
    # it when it does not answer).
    for sid in (s1, s2):
        attacker.req("DELETE", f"/sessions/{sid}/processes/{freezers[sid]}")
        assert attacker.read(sid, "/home/user/small.txt").json() == {"content": "small"}
        ps = attacker.run(sid, "ps -eo stat=,comm= | grep -c '^T' || true")
        assert lines(ps) == ["0"], ps
    for sid in (s1, s2):
        assert attacker.req("DELETE", f"/sessions/{sid}").status_code == 204


# -- paths that start with a dash ----------------------------------------------------------------
def test_dash_paths_are_paths_and_delete_nothing(attacker: Client, bash_sid: str) -> None:
    attacker.run(
        bash_sid,
        "mkdir -p /home/user/dash && cd /home/user/dash && touch keep1 keep2 && "
        "cd /home/user && mkdir -p -- -delete '(' && touch -- -delete/inside -x.txt keep-home",
    )
    # Relative paths are relative to the home directory, as for the sandbox's own processes.
    r = attacker.req("GET", "/sessions/" + bash_sid + "/filesystem/dir", params={"path": "-delete"})
    assert r.status_code == 200, r.text
    assert r.json() == {"entries": [{"name": "inside", "isDir": False}]}
    for path, status in (("(", 200), ("!", 404), ("-print", 404), ("-fprint", 404)):
        r = attacker.req("GET", f"/sessions/{bash_sid}/filesystem/dir", params={"path": path})
        assert r.status_code == status, (path, r.text)
    assert attacker.write(bash_sid, "-x.txt", "dash file").status_code == 204
    assert attacker.read(bash_sid, "-x.txt").json() == {"content": "dash file"}
    assert attacker.write(bash_sid, "-new.txt", "new").status_code == 204
    r = attacker.req("PUT", f"/sessions/{bash_sid}/filesystem/dir", params={"path": "-newdir"})
    assert r.status_code == 204
    r = attacker.req("DELETE", f"/sessions/{bash_sid}/filesystem", params={"path": "-new.txt"})
    assert r.status_code == 204
    assert lines(attacker.run(bash_sid, "ls -A /home/user/dash")) == ["keep1", "keep2"]
    assert lines(attacker.run(bash_sid, "ls -A /home/user/-delete")) == ["inside"]
    assert lines(attacker.run(bash_sid, "cd /home/user && ls -d -- -* keep-home")) == [
        "-delete",
        "-newdir",
        "-x.txt",
        "keep-home",
    ]
    # A rootdir or a command starting with a dash is one too.
    out = attacker.run(bash_sid, "pwd", rootdir="-delete")
    assert lines(out) == ["/home/user/-delete"]
    out = attacker.req(
        "POST", f"/sessions/{bash_sid}/processes?wait=true", json={"cmd": "--version"}
    ).json()
    assert "command not found" in " ".join(x["line"] for x in out["stderr"])


# -- request bodies: deep JSON, lone surrogates ------------------------------------------------
DEEP = "[" * 1000 + "]" * 1000
SURROGATE = '"\\ud800"'  # JSON text: a lone surrogate, escaped


def _post_raw(http: Client, method: str, path: str, body: str) -> requests.Response:
    return http.req(method, path, data=body.encode(), headers={"Content-Type": "application/json"})


@pytest.mark.parametrize("bad", [DEEP, SURROGATE, '"x\\udfff"'])
def test_bad_json_in_e2b_bodies_is_422_and_changes_nothing(
    attacker: Client, bash_sid: str, stack: Stack, bad: str
) -> None:
    before = len(stack.containers())
    r = _post_raw(attacker, "POST", "/sessions", f'{{"envID": {bad}}}')
    assert r.status_code == 422, r.text
    assert r.json()["message"] == "Validation Failed"
    assert len(stack.containers()) == before

    marker = f"/home/user/never-{secrets.token_hex(4)}"
    for body in (
        f'{{"cmd": {bad}}}',
        f'{{"cmd": "touch {marker} \\ud800"}}',
        f'{{"cmd": "touch {marker}", "envVars": {{"A": {bad}}}}}',
        f'{{"cmd": "touch {marker}", "rootdir": {bad}}}',
    ):
        r = _post_raw(attacker, "POST", f"/sessions/{bash_sid}/processes?wait=true", body)
        assert r.status_code == 422, (body[:80], r.text)
    assert lines(attacker.run(bash_sid, f"test -e {marker} && echo made || echo none")) == ["none"]

    path = "/home/user/keep.txt"
    assert attacker.write(bash_sid, path, "original").status_code == 204
    r = _post_raw(
        attacker,
        "PUT",
        f"/sessions/{bash_sid}/filesystem/file?path={path}",
        f'{{"content": {bad}}}',
    )
    assert r.status_code == 422, r.text
    assert attacker.read(bash_sid, path).json() == {"content": "original"}

    r = attacker.req("POST", f"/sessions/{bash_sid}/processes", json={"cmd": "cat"})
    pid = r.json()["processID"]
    r = _post_raw(
        attacker, "POST", f"/sessions/{bash_sid}/processes/{pid}/stdin", f'{{"stdin": {bad}}}'
    )
    assert r.status_code == 422, r.text
    r = attacker.req(
        "POST", f"/sessions/{bash_sid}/processes/{pid}/stdin", json={"stdin": "only-this\n"}
    )
    assert r.status_code == 204
    time.sleep(0.5)
    out = attacker.req("DELETE", f"/sessions/{bash_sid}/processes/{pid}?results=true").json()
    assert lines(out) == ["only-this"]


def test_nul_in_a_command_env_or_rootdir_is_422_and_starts_nothing(
    attacker: Client, bash_sid: str
) -> None:
    marker = f"/home/user/nul-{secrets.token_hex(4)}"
    for body in (
        {"cmd": f"touch {marker}\u0000x"},
        {"cmd": f"touch {marker}", "envVars": {"A": "a\u0000b"}},
        {"cmd": f"touch {marker}", "rootdir": "/tmp\u0000"},
    ):
        r = attacker.req("POST", f"/sessions/{bash_sid}/processes?wait=true", json=body)
        assert r.status_code == 422, r.text
        assert "NUL" in str(r.json()["details"])
    assert lines(attacker.run(bash_sid, f"test -e {marker} && echo made || echo none")) == ["none"]


@pytest.mark.parametrize("bad", [DEEP, SURROGATE])
def test_bad_json_in_v1_bodies_is_400_and_changes_nothing(stack: Stack, bad: str) -> None:
    client = Client(stack, new_tenant(stack, f"v1json{secrets.token_hex(3)}"), bearer=True)
    for body in (
        f'{{"name": "bad", "values": {{"K": {bad}}}}}',
        f'{{"name": {bad}, "values": {{"K": "v"}}}}',
    ):
        r = client.req(
            "POST",
            "/v1/tenants/me/secrets",
            data=body.encode(),
            headers={"Content-Type": "application/json"},
        )
        assert r.status_code == 400, r.text
        assert r.json()["error"]["type"] == "invalid_request_error"
    assert client.req("GET", "/v1/tenants/me/secrets").json() == {"secrets": []}
    r = client.req(
        "POST", "/v1/sessions", data=f'{{"agent": {bad}}}'.encode(),
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    assert r.status_code == 400, r.text


def test_websocket_frame_with_a_lone_surrogate_gets_an_error_and_the_socket_lives(
    stack: Stack, victim_key: str
) -> None:
    client = Client(stack, victim_key, bearer=True)
    s = client.agent_session()
    try:
        with ws_connect(s["connect_url"], s["jwt"]) as ws:
            assert recv(ws)["type"] == "ready"
            for raw in (
                '{"type": "task", "prompt": "echo \\ud800"}',
                '{"type": "task", "prompt": ' + DEEP + "}",
                "[" * 5000 + "]" * 5000,
            ):
                ws.send(raw)
                frame = recv(ws)
                assert frame["type"] == "error", frame
                assert frame["code"] in ("invalid_frame", "invalid_task"), frame
            ws.send(json.dumps({"type": "ping"}))
            assert recv(ws) == {"type": "pong"}
            ws.send(json.dumps({"type": "task", "prompt": "echo still-here", "id": "t1"}))
            frames = until(ws, "exit")
            assert "still-here\n" in [f.get("data") for f in frames]
    finally:
        client.req("DELETE", f"/v1/sessions/{s['chat_session_id']}")


# -- logs keep ids and sizes, never user content -------------------------------------------------
def test_logs_hold_no_command_file_stdin_env_or_prompt_text(
    stack: Stack, attacker: Client, bash_sid: str, victim_key: str
) -> None:
    marker = "pdkmark" + secrets.token_hex(8)
    attacker.run(bash_sid, f"echo {marker}-cmd", envVars={"SECRET_X": f"{marker}-env"})
    assert attacker.write(bash_sid, "/home/user/m.txt", f"{marker}-file").status_code == 204
    assert attacker.read(bash_sid, "/home/user/m.txt").json() == {"content": f"{marker}-file"}
    r = attacker.req("POST", f"/sessions/{bash_sid}/processes", json={"cmd": "cat"})
    pid = r.json()["processID"]
    attacker.req(
        "POST", f"/sessions/{bash_sid}/processes/{pid}/stdin", json={"stdin": f"{marker}-in\n"}
    )
    attacker.req("DELETE", f"/sessions/{bash_sid}/processes/{pid}")
    # An error path too: a command whose start fails, a write that is refused.
    attacker.run(bash_sid, f"{marker}-nosuchcommand")
    attacker.write(bash_sid, "/home/user/fifo", f"{marker}-refused")
    client = Client(stack, victim_key, bearer=True)
    s = client.agent_session()
    with ws_connect(s["connect_url"], s["jwt"]) as ws:
        assert recv(ws)["type"] == "ready"
        ws.send(json.dumps({"type": "task", "prompt": f"echo {marker}-prompt", "id": "t1"}))
        until(ws, "exit")
    client.req("DELETE", f"/v1/sessions/{s['chat_session_id']}")
    time.sleep(1)
    needles = [marker, base64.b64encode(f"{marker}-file".encode()).decode()[:16]]
    logs = sorted(stack.workdir.rglob("*.log"))
    assert logs
    for log in logs:
        text = log.read_text(errors="replace")
        for needle in needles:
            assert needle not in text, f"{needle} in {log.name}"
