"""Sandbox ports through the web tier (web/ports/, workers/host/relay.py): the E2B SDK's
``get_host(port)`` address, ``{port}-{id}.localhost``, served on Paddock's own port, against the
real stack with two hosts. Sandboxes are made with the official SDK; their servers are started
through the E2B-compatible process API (``/sessions/{id}/processes``).

The relays listen on every address here (``PADDOCK_RELAY_ADDR=0.0.0.0``, the web dialing
127.0.0.1), the worst an operator could choose: sandboxes must still reach none of them."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import websocket
from e2b import Sandbox

from devstack.stack import Stack
from shared import keys, relay
from shared.slots import PROXIES, Slots
from tests.integration.client import wait_until
from tests.integration.e2b_helpers import sdk_env
from tests.integration.session_helpers import new_tenant

MAX_PROXIED = 4
IDLE = 5
RELAY_MAX = 8
SERVER = (Path(__file__).parent / "ports_server.py").read_text()
BIG = 50_000_000


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {
        "PADDOCK_AUTH": "on",
        "PADDOCK_TENANT_MAX_PROXIED": str(MAX_PROXIED),
        "PADDOCK_PROXY_IDLE_TIMEOUT": str(IDLE),
        "PADDOCK_RELAY_ADDR": "0.0.0.0",
        "PADDOCK_RELAY_ADVERTISE": "127.0.0.1",
        "PADDOCK_RELAY_MAX_CONNECTIONS": str(RELAY_MAX),
    }
    with Stack(tmp_path_factory.mktemp("ports"), hosts=("host-a", "host-b"), env=env) as st:
        yield st


@pytest.fixture(scope="module")
def keys_ab(stack: Stack) -> Iterator[tuple[str, str]]:
    """Two tenants' API keys; the SDK's environment points at the stack (loopback only)."""
    # E2B_DOMAIN is plain localhost: the create answer's domain (the preview domain on the
    # port the request reached) makes get_host(port) {port}-{id}.localhost:{web port}.
    with sdk_env(stack):
        yield new_tenant(stack, "portsa"), new_tenant(stack, "portsb")


def _start(stack: Stack, key: str, sid: str, cmd: str) -> None:
    r = requests.post(
        f"{stack.url}/sessions/{sid}/processes",
        json={"cmd": cmd, "rootdir": "/home/user"},
        headers={"X-API-Key": key},
        timeout=60,
    )
    assert r.status_code == 200, r.text


def _run(stack: Stack, key: str, sid: str, cmd: str) -> str:
    r = requests.post(
        f"{stack.url}/sessions/{sid}/processes?wait=true",
        json={"cmd": cmd, "rootdir": "/home/user"},
        headers={"X-API-Key": key},
        timeout=120,
    )
    assert r.status_code == 200 and r.json()["finished"], r.text
    return "\n".join(x["line"] for x in r.json()["stdout"])


def _write(stack: Stack, key: str, sid: str, path: str, content: str) -> None:
    r = requests.put(
        f"{stack.url}/sessions/{sid}/filesystem/file",
        params={"path": path},
        json={"content": content},
        headers={"X-API-Key": key},
        timeout=60,
    )
    assert r.status_code == 204, r.text


def _get(
    stack: Stack,
    sid: str,
    port: int,
    path: str = "/",
    headers: dict[str, str] | None = None,
    stream: bool = False,
) -> requests.Response:
    """GET ``path`` of ``port`` in the sandbox, as a browser given ``get_host(port)`` would."""
    return requests.get(
        f"{stack.url}{path}",
        headers={"Host": f"{port}-{sid}.localhost", **(headers or {})},
        timeout=60,
        stream=stream,
    )


def _serve(stack: Stack, key: str, sbx: Sandbox) -> None:
    """http.server on 8000 (in /home/user, with hello.txt) and ports_server.py on 8001; returns
    once both answer through the proxy."""
    sid = sbx.sandbox_id
    _write(stack, key, sid, "/home/user/hello.txt", "hi")
    _write(stack, key, sid, "/home/user/ports_server.py", SERVER)
    _start(stack, key, sid, "python3 -m http.server 8000")
    _start(stack, key, sid, "python3 ports_server.py 8001")
    token = sbx.traffic_access_token
    headers = {"e2b-traffic-access-token": token} if token else {}
    for port in (8000, 8001):
        wait_until(
            lambda port=port: _get(stack, sid, port, headers=headers).status_code == 200,
            f"port {port} answering through the proxy",
        )


@pytest.fixture(scope="module")
def public(stack: Stack, keys_ab: tuple[str, str]) -> Iterator[Sandbox]:
    """Tenant A's sandbox, public ports (allowPublicTraffic absent: E2B's default, true)."""
    sbx = Sandbox.create(api_key=keys_ab[0], timeout=600)
    _serve(stack, keys_ab[0], sbx)
    yield sbx
    sbx.kill()


@pytest.fixture(scope="module")
def private(stack: Stack, keys_ab: tuple[str, str]) -> Iterator[Sandbox]:
    """Tenant B's sandbox whose ports need its traffic token."""
    sbx = Sandbox.create(api_key=keys_ab[1], timeout=600, network={"allow_public_traffic": False})
    assert sbx.traffic_access_token
    _serve(stack, keys_ab[1], sbx)
    yield sbx
    sbx.kill()


def _host_of(stack: Stack, sid: str) -> str:
    return stack.redis.hget(keys.sandbox(sid), "host").decode()


def test_http_server_lists_files_on_both_hosts(
    stack: Stack, public: Sandbox, private: Sandbox
) -> None:
    r = _get(stack, public.sandbox_id, 8000)
    assert r.status_code == 200 and "hello.txt" in r.text and "ports_server.py" in r.text
    # The example, and the SDK's own address, with curl (which resolves *.localhost).
    sid = public.sandbox_id
    for argv in (
        ["-H", f"Host: 8000-{sid}.localhost", f"{stack.url}/"],
        [f"http://{public.get_host(8000)}/"],
    ):
        out = subprocess.run(
            ["curl", "-sS", "--noproxy", "*", *argv], capture_output=True, text=True, timeout=60
        )
        assert "hello.txt" in out.stdout, out.stderr
    assert public.get_host(8000) == f"8000-{sid}.localhost:{stack.port}"
    token = {"e2b-traffic-access-token": private.traffic_access_token}
    assert "hello.txt" in _get(stack, private.sandbox_id, 8000, headers=token).text
    # Placement spread the two over both hosts: each is reached through its own host's relay.
    assert {_host_of(stack, public.sandbox_id), _host_of(stack, private.sandbox_id)} == {
        "host-a",
        "host-b",
    }
    # A path and query reach the app as sent.
    assert _get(stack, public.sandbox_id, 8000, "/hello.txt?x=1").text == "hi"


def test_traffic_token(stack: Stack, keys_ab: tuple[str, str], private: Sandbox) -> None:
    sid = private.sandbox_id
    missing = _get(stack, sid, 8000)
    assert missing.status_code == 403 and "e2b-traffic-access-token" in missing.text
    assert missing.headers["Content-Type"].startswith("text/html")
    wrong = _get(stack, sid, 8000, headers={"e2b-traffic-access-token": "x" * 43})
    assert wrong.status_code == 403
    # Another tenant's API key (or the sandbox's envd access token) opens nothing.
    other = _get(stack, sid, 8000, headers={"X-API-Key": keys_ab[0], "X-Access-Token": "x"})
    assert other.status_code == 403 and "hello.txt" not in other.text
    right = _get(
        stack, sid, 8000, headers={"e2b-traffic-access-token": private.traffic_access_token}
    )
    assert right.status_code == 200 and "hello.txt" in right.text


def test_request_as_the_app_sees_it(
    stack: Stack, keys_ab: tuple[str, str], public: Sandbox
) -> None:
    """Paddock's credentials are stripped, the app's own Authorization and the Host kept, and
    a chunked upload streams through."""
    sid = public.sandbox_id
    blob = os.urandom(3 << 20)

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(blob), 100_000):
            yield blob[i : i + 100_000]

    r = requests.post(
        f"{stack.url}/upload?a=b",
        data=chunks(),
        headers={
            "Host": f"8001-{sid}.localhost",
            "X-API-Key": keys_ab[0],
            "X-Access-Token": "envd-token",
            "e2b-traffic-access-token": "traffic",
            "Authorization": "Bearer app-token",
            "X-Custom": "kept",
            # The client's own claim (gunicorn trusts loopback's https, so another word).
            "X-Forwarded-Proto": "ftp",
        },
        timeout=60,
    )
    assert r.status_code == 200 and r.headers["X-App"] == "ports-server"
    seen = r.json()
    names = [n for n, _ in seen["headers"]]
    got = dict(seen["headers"])
    assert seen["method"] == "POST" and seen["target"] == "/upload?a=b"
    assert seen["size"] == len(blob) and seen["sha256"] == hashlib.sha256(blob).hexdigest()
    assert not {"x-api-key", "x-access-token", "e2b-traffic-access-token"} & set(names)
    assert got["authorization"] == "Bearer app-token" and got["x-custom"] == "kept"
    assert got["host"] == f"8001-{sid}.localhost" and got["x-forwarded-for"] == "127.0.0.1"
    assert [v for n, v in seen["headers"] if n == "x-forwarded-proto"] == ["http"]  # ours
    # A Paddock API key as a bearer is Paddock's too.
    r = _get(stack, sid, 8001, headers={"Authorization": f"Bearer {keys_ab[0]}"})
    assert "authorization" not in dict(r.json()["headers"])


def test_websocket_echo(stack: Stack, public: Sandbox, private: Sandbox) -> None:
    ws = websocket.create_connection(
        f"ws://127.0.0.1:{stack.port}/echo",
        host=f"8001-{public.sandbox_id}.localhost",
        timeout=30,
        http_no_proxy=["127.0.0.1"],
    )
    try:
        ws.send("hello through the proxy")
        assert ws.recv() == "hello through the proxy"
        blob = os.urandom(200_000)
        ws.send_binary(blob)
        assert ws.recv() == blob
    finally:
        ws.close()
    # A private sandbox's WebSocket needs its token like any request.
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        websocket.create_connection(
            f"ws://127.0.0.1:{stack.port}/",
            host=f"8001-{private.sandbox_id}.localhost",
            timeout=30,
        )
    assert refused.value.status_code == 403
    ws = websocket.create_connection(
        f"ws://127.0.0.1:{stack.port}/",
        host=f"8001-{private.sandbox_id}.localhost",
        header=[f"e2b-traffic-access-token: {private.traffic_access_token}"],
        timeout=30,
    )
    ws.send("private")
    assert ws.recv() == "private"
    # Idle: nothing either way for PADDOCK_PROXY_IDLE_TIMEOUT closes it.
    ws.settimeout(IDLE * 6)
    with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError)):
        while True:
            if ws.recv() in ("", b""):
                raise websocket.WebSocketConnectionClosedException()


def test_closed_port_and_unknown_names(
    stack: Stack, keys_ab: tuple[str, str], public: Sandbox
) -> None:
    sid = public.sandbox_id
    closed = _get(stack, sid, 8999)
    assert closed.status_code == 502 and "Closed port" in closed.text and "8999" in closed.text
    assert closed.headers["X-Paddock-Proxy-Error"] == "closed-port"
    assert _get(stack, "zzzzzzzz-00000000", 8000).status_code == 404
    assert _get(stack, sid, 70000).status_code == 400
    # A sandbox made by another face of Paddock (/sessions) has no E2B record: not served.
    r = requests.post(
        f"{stack.url}/sessions",
        json={"envID": "Bash"},
        headers={"X-API-Key": keys_ab[0]},
        timeout=120,
    )
    other = r.json()["id"]
    assert _get(stack, other, 8000).status_code == 404
    requests.delete(f"{stack.url}/sessions/{other}", headers={"X-API-Key": keys_ab[0]}, timeout=60)
    # Any other Host is Paddock's own.
    assert (
        requests.get(f"{stack.url}/health", headers={"Host": "localhost"}, timeout=10).text == "OK"
    )


def test_no_network_and_paused(stack: Stack, keys_ab: tuple[str, str]) -> None:
    offline = Sandbox.create(api_key=keys_ab[0], allow_internet_access=False)
    try:
        r = _get(stack, offline.sandbox_id, 8000)
        assert r.status_code == 502 and "no network" in r.text
    finally:
        offline.kill()
    sbx = Sandbox.create(api_key=keys_ab[0])
    try:
        sbx.pause()
        r = _get(stack, sbx.sandbox_id, 8000)
        assert r.status_code == 409 and "paused" in r.text
    finally:
        Sandbox.kill(sbx.sandbox_id, api_key=keys_ab[0])


def test_proxied_connections_per_tenant(stack: Stack, public: Sandbox) -> None:
    opened = []
    try:
        for _ in range(MAX_PROXIED):
            opened.append(
                websocket.create_connection(
                    f"ws://127.0.0.1:{stack.port}/",
                    host=f"8001-{public.sandbox_id}.localhost",
                    timeout=30,
                )
            )
        r = _get(stack, public.sandbox_id, 8000)
        assert r.status_code == 429 and r.headers["Retry-After"] == "1"
    finally:
        for ws in opened:
            ws.close()
    wait_until(lambda: _get(stack, public.sandbox_id, 8000).status_code == 200, "a slot freed")


def _web_workers(stack: Stack) -> list[int]:
    master = stack.procs["web"].pid
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == master:
                    out.append(int(d.name))
            except (OSError, IndexError, ValueError):
                continue
    assert out
    return out


def _kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


def test_large_answer_streams_in_bounded_memory(
    stack: Stack, keys_ab: tuple[str, str], public: Sandbox
) -> None:
    sid = public.sandbox_id
    digest = _run(
        stack, keys_ab[0], sid, f"head -c {BIG} /dev/urandom > big.bin && sha256sum big.bin"
    ).split()[0]
    workers = _web_workers(stack)
    before = {}
    for pid in workers:
        # Reset each worker's peak RSS to its RSS now (clear_refs 5), so the peak afterwards
        # says how much the download added.
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        before[pid] = _kib(pid, "VmRSS")
    h, size = hashlib.sha256(), 0
    with _get(stack, sid, 8000, "/big.bin", stream=True) as r:
        assert r.status_code == 200 and int(r.headers["Content-Length"]) == BIG
        for chunk in r.iter_content(1 << 16):
            h.update(chunk)
            size += len(chunk)
    assert size == BIG and h.hexdigest() == digest
    grown = max(_kib(pid, "VmHWM") - before[pid] for pid in workers)
    assert grown < 16 * 1024, f"a web worker's peak RSS grew {grown} KiB for a {BIG}-byte answer"


def test_sandbox_still_cannot_reach_another(
    stack: Stack, keys_ab: tuple[str, str], public: Sandbox
) -> None:
    """The relay's connections come from the host; sandboxes stay apart: one cannot open
    another's server (on the same host's network) that the proxy reaches."""
    sbx = Sandbox.create(api_key=keys_ab[0])
    try:
        ip = _container_ip(stack, public.sandbox_id)
        connect = f"import socket; socket.create_connection(('{ip}', 8000), 3); print('open')"
        probe = f'python3 -c "{connect}" 2>/dev/null || echo closed'
        assert _run(stack, keys_ab[0], sbx.sandbox_id, probe).strip() == "closed"
        assert _get(stack, public.sandbox_id, 8000).status_code == 200
    finally:
        sbx.kill()


def _container_net(stack: Stack, sid: str) -> dict[str, str]:
    """The sandbox's container's network settings (its address, its gateway...)."""
    for c in stack.containers():
        if c.labels.get("paddock.sandbox") == sid:
            nets = c.attrs["NetworkSettings"]["Networks"]
            return dict(next(n for n in nets.values() if n.get("IPAddress")))
    raise AssertionError(sid)


def _container_ip(stack: Stack, sid: str) -> str:
    return str(_container_net(stack, sid)["IPAddress"])


def _relay_say(at: str, line: bytes) -> str:
    host, _, port = at.rpartition(":")
    with socket.create_connection((host, int(port)), 10) as s:
        s.sendall(line)
        return s.recv(512).decode()


def test_relay_takes_only_the_webs_tickets(stack: Stack, public: Sandbox) -> None:
    sid = public.sandbox_id
    home = _host_of(stack, sid)
    away = ({"host-a", "host-b"} - {home}).pop()
    relay_at = {h: stack.redis.hget(keys.host(h), "relay").decode() for h in (home, away)}
    key = relay.relay_keys(stack.env["PADDOCK_SECRET_KEY"])[0]
    assert _relay_say(relay_at[home], b"GET / HTTP/1.1\r\n\r\n").startswith("ERR auth")
    forged = relay.sign(b"k" * 32, home, sid, 8000)
    assert _relay_say(relay_at[home], forged).startswith("ERR auth")
    # A ticket for one host is refused by another, and each ticket works once.
    assert _relay_say(relay_at[away], relay.sign(key, home, sid, 8000)).startswith("ERR auth")
    ticket = relay.sign(key, home, sid, 8000)
    assert _relay_say(relay_at[home], ticket).startswith("OK")
    assert _relay_say(relay_at[home], ticket).startswith("ERR auth")
    # A sandbox of another host is unknown here, whoever signs.
    assert _relay_say(relay_at[away], relay.sign(key, away, sid, 8000)).startswith("ERR unknown")
    old = relay.sign(key, home, sid, 8000, now=time.time() - 3600)
    assert _relay_say(relay_at[home], old).startswith("ERR auth")


def _tenant(stack: Stack, sid: str) -> str:
    return stack.redis.hget(keys.sandbox(sid), "tenant").decode()


def _exchange(stack: Stack, request: bytes) -> bytes:
    """``request`` sent raw to the web; what comes back until the web closes (or a first
    answer has come and nothing more for 10 s)."""
    got = b""
    with socket.create_connection(("127.0.0.1", stack.port), 10) as s:
        s.sendall(request)
        s.settimeout(IDLE * 6)  # a bound for the test, not an assertion on time
        while True:
            try:
                data = s.recv(65536)
            except TimeoutError:
                assert got, "no answer"
                return got
            if not data:
                return got
            got += data
            s.settimeout(10)


def test_a_slow_client_or_a_silent_app_frees_its_slot(stack: Stack, public: Sandbox) -> None:
    """A client that stops sending its body gets 408, an app that reads the request and never
    answers 504, each after PADDOCK_PROXY_IDLE_TIMEOUT; either way the tenant's slot is free."""
    sid = public.sandbox_id
    tenant = _tenant(stack, sid)
    stalled = (
        f"POST /upload HTTP/1.1\r\nHost: 8001-{sid}.localhost\r\nContent-Length: 1000\r\n\r\nabc"
    ).encode()
    assert _exchange(stack, stalled).startswith(b"HTTP/1.1 408 ")
    r = _get(stack, sid, 8001, "/hang")
    assert r.status_code == 504 and r.headers["X-Paddock-Proxy-Error"] == "gateway-timeout"
    wait_until(lambda: Slots(stack.redis).count(PROXIES, tenant) == 0, "the slots freed")


def test_no_request_or_answer_smuggling(stack: Stack, public: Sandbox) -> None:
    """Content-Length with Transfer-Encoding is refused before the app (no second request
    hides in the body); an app's answer whose Content-Lengths disagree is a 502, never
    passed on for a client to frame its own way."""
    sid = public.sandbox_id
    host = f"8001-{sid}.localhost"
    smuggled = (
        f"POST / HTTP/1.1\r\nHost: {host}\r\nContent-Length: 40\r\n"
        "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        f"GET /smuggled HTTP/1.1\r\nHost: {host}\r\n\r\n"
    ).encode()
    answer = _exchange(stack, smuggled)
    assert answer.startswith(b"HTTP/1.1 400 ") and answer.count(b"HTTP/1.1 ") == 1
    assert b"ports-server" not in answer
    r = _get(stack, sid, 8001, "/lengths")
    assert r.status_code == 502 and "Content-Length" in r.text


def test_sandboxes_reach_no_relay(stack: Stack, keys_ab: tuple[str, str], public: Sandbox) -> None:
    """Both hosts' relays listen on every address of the machine; from a sandbox, none of
    those addresses answers on a relay's port (the host's INPUT rules for sandbox bridges),
    so a sandbox can neither try tickets nor fill a relay's connections."""
    sid = public.sandbox_id
    ports = [
        int(stack.redis.hget(keys.host(h), "relay").decode().rpartition(":")[2])
        for h in ("host-a", "host-b")
    ]
    gateway = _container_net(stack, sid)["Gateway"]
    out = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=True)
    addrs = {line.split()[3].split("/")[0] for line in out.stdout.splitlines()}
    addrs = {a for a in addrs if not a.startswith("127.")} | {gateway}
    # From this machine the relay answers on the sandbox network's gateway: the probe can fail.
    with socket.create_connection((gateway, ports[0]), 5):
        pass
    targets = [(a, p) for a in sorted(addrs) for p in ports]
    probe = (
        "import socket\n"
        f"for a, p in {targets!r}:\n"
        "    try:\n"
        "        socket.create_connection((a, p), 3).close()\n"
        "        print('open', a, p)\n"
        "    except OSError:\n"
        "        print('closed', a, p)\n"
    )
    _write(stack, keys_ab[0], sid, "/home/user/probe.py", probe)
    lines = _run(stack, keys_ab[0], sid, "python3 probe.py").splitlines()
    assert len(lines) == len(targets) and all(line.startswith("closed") for line in lines), lines


def test_a_full_relay_says_busy(stack: Stack, public: Sandbox) -> None:
    """PADDOCK_RELAY_MAX_CONNECTIONS at once per host relay: past it the relay answers busy
    (the web: 503 Retry-After) until one closes."""
    sid = public.sandbox_id
    at = stack.redis.hget(keys.host(_host_of(stack, sid)), "relay").decode()
    host, _, port = at.rpartition(":")
    held = [socket.create_connection((host, int(port)), 10) for _ in range(RELAY_MAX)]
    try:
        # Each waits for its ticket; a web request now finds the relay full.
        r = _get(stack, sid, 8000)
        assert r.status_code == 503 and r.headers["Retry-After"] == "1"
        assert "PADDOCK_RELAY_MAX_CONNECTIONS" in r.text
    finally:
        for s in held:
            s.close()
    wait_until(lambda: _get(stack, sid, 8000).status_code == 200, "the relay taking connections")
