"""The egress policy against real sandboxes (workers/backends/docker/egress.py, shared/egress.py).

Every target is the test's own: a listener in a container on a Docker network the test makes
in 10.0.0.0/8, a listener on the host's 0.0.0.0, another sandbox's listener, and the package
index pip uses by default (the machine's registry). A refusal is shown to be the policy, not a
missing route: the same target answers from somewhere the policy does not cover (the host, a
container of the test's own, or a sandbox whose allow_out opens it), and the sandbox's attempt
ends at once with "no route to host" (the REJECT's admin-prohibited answer), not a timeout.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import random
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import requests

from devstack.stack import Stack
from tests.integration.client import Client, stdout_lines, wait_until
from tests.integration.session_helpers import new_tenant

HOST_CA = "/etc/ssl/certs/ca-certificates.crt"
PROBE_PORT = 8000
HOLD_PORT = 9000
MAX_FLOWS = 64
_HOLDER = f"""
import socket, threading
def serve(c):
    while c.recv(64):
        pass
    c.close()
s = socket.socket()
s.bind(("0.0.0.0", {HOLD_PORT}))
s.listen(4096)
while True:
    threading.Thread(target=serve, args=(s.accept()[0],), daemon=True).start()
"""
# Opens N connections at once and holds them; prints how many were refused, and by what.
_HOLD = """python3 -c '
import socket, sys
held, refused = [], []
for _ in range(int(sys.argv[3])):
    try:
        held.append(socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5))
    except OSError as e:
        refused.append(e.errno)
print(len(held), len(refused), sorted(set(refused)))
' {host} {port} {n}"""

# Connects to HOST:PORT from inside a sandbox; prints "open <first bytes>" or "blocked <errno>".
_PROBE = """python3 -c '
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
    s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
    print("open", s.recv(64).split(b" ")[0].decode())
except OSError as e:
    print("blocked", e.errno)
' {host} {port}"""
# An HTTPS request to the package index through the sandbox's own resolver and CA store.
_INDEX = """python3 -c '
import urllib.request
try:
    print("open", urllib.request.urlopen("https://pypi.org/simple/six/", timeout=10).status)
except Exception as e:
    print("blocked", type(e).__name__)
'"""


def probe(api: Client, sid: str, host: str, port: int = PROBE_PORT) -> str:
    return stdout_lines(api.run(sid, _PROBE.format(host=host, port=port)))[0]


def index(api: Client, sid: str) -> str:
    return stdout_lines(api.run(sid, _INDEX))[0]


def create(api: Client, network: dict[str, Any] | None = None, env: str = "Python3") -> str:
    body: dict[str, Any] = {"envID": env}
    if network is not None:
        body["network"] = network
    r = api.req("POST", "/sessions", json=body)
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def sandbox_ip(stack: Stack, sid: str) -> str:
    [c] = [c for c in stack.containers() if c.labels["paddock.sandbox"] == sid]
    return str(c.attrs["NetworkSettings"]["Networks"][network_name(stack)]["IPAddress"])


def network_name(stack: Stack, host: str = "host-a") -> str:
    return f"paddock-{stack.instance}-{host}"


BLOCKED = f"blocked {errno.EHOSTUNREACH}"  # the policy's REJECT, at once


@pytest.fixture(scope="module")
def private_net() -> Iterator[dict[str, str]]:
    """A network of the test's own in 10.0.0.0/8 with an HTTP listener on it."""
    client = docker.from_env(timeout=60)
    net = None
    for _ in range(20):
        third = random.randrange(0, 250)
        subnet = f"10.213.{third}.0/24"
        try:
            net = client.networks.create(
                f"pdktest-{os.getpid()}-{third}",
                driver="bridge",
                ipam=docker.types.IPAMConfig(
                    pool_configs=[docker.types.IPAMPool(subnet=subnet, gateway=f"10.213.{third}.1")]
                ),
            )
            break
        except docker.errors.APIError:  # that subnet is taken: another one
            continue
    assert net is not None
    image = client.images.get("paddock/tpl-python3:latest")
    listener = client.containers.run(
        image,
        ["python3", "-m", "http.server", str(PROBE_PORT), "--bind", "0.0.0.0"],
        detach=True,
        network=net.name,
        cap_drop=["ALL"],
        user="1000",
        working_dir="/tmp",
        labels={"paddock.test": "egress"},
    )
    try:
        listener.reload()
        ip = listener.attrs["NetworkSettings"]["Networks"][net.name]["IPAddress"]
        # A second listener that keeps every connection open until its client closes it.
        listener.exec_run(["python3", "-c", _HOLDER], detach=True, user="1000")
        _wait_open(ip, PROBE_PORT)
        _wait_open(ip, HOLD_PORT)
        yield {"subnet": subnet, "ip": ip, "gateway": f"10.213.{third}.1", "name": net.name}
    finally:
        listener.remove(force=True)
        net.remove()


def _wait_open(ip: str, port: int) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection((ip, port), timeout=2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, private_net: dict[str, str]) -> Iterator[Stack]:
    env = {
        "PADDOCK_EGRESS_PRIVATE_ALLOWED": private_net["subnet"],
        "PADDOCK_SANDBOX_MAX_FLOWS": str(MAX_FLOWS),
    }
    if os.path.exists(HOST_CA):
        # This machine's network inspects TLS: sandboxes trust what the host trusts.
        env["PADDOCK_SANDBOX_CA_BUNDLE"] = HOST_CA
    st = Stack(tmp_path_factory.mktemp("egress"), env=env)
    with st:
        yield st
    # The worker stopped and the stack removed its sandboxes: nothing of ours is left.
    rules = subprocess.run(["iptables", "-S"], capture_output=True, text=True, check=True).stdout
    assert f"PDK-{_tag(st)}-" not in rules
    assert not [n for n in docker.from_env().networks.list() if n.name == network_name(st)]


@pytest.fixture(scope="module")
def api(stack: Stack) -> Client:
    return Client(stack)


@pytest.fixture(scope="module")
def default_sid(api: Client) -> str:
    return create(api)


@pytest.fixture(scope="module")
def host_listener() -> Iterator[dict[str, Any]]:
    """A TCP listener on the host's 0.0.0.0 that records who connected."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", 0))
    srv.listen(16)
    peers: list[str] = []

    def serve() -> None:
        while True:
            try:
                conn, peer = srv.accept()
            except OSError:
                return
            peers.append(peer[0])
            with contextlib.suppress(OSError):
                conn.sendall(b"HOST listener\r\n")
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    yield {"port": srv.getsockname()[1], "peers": peers}
    srv.close()


def test_default_sandbox_downloads_from_the_package_index(api: Client, default_sid: str) -> None:
    out = api.run(
        default_sid,
        "cd /tmp && pip download --no-deps --no-cache-dir --retries 1 --timeout 30 -d dl six"
        " >/dev/null 2>err; echo rc=$?; ls dl; tail -3 err",
    )
    lines = stdout_lines(out)
    assert lines[0] == "rc=0", lines
    assert any(x.startswith("six-") and x.endswith(".whl") for x in lines), lines


def test_private_listener_is_blocked_by_policy_and_opened_by_allow_out(
    api: Client, default_sid: str, private_net: dict[str, str]
) -> None:
    ip = private_net["ip"]
    # The host reaches it (a route exists), the default sandbox is refused at once.
    assert requests.get(f"http://{ip}:{PROBE_PORT}/", timeout=10).ok
    assert probe(api, default_sid, ip) == BLOCKED
    # allow_out opens it (the operator permits this range: PADDOCK_EGRESS_PRIVATE_ALLOWED)...
    opened = create(api, {"allow_out": [private_net["subnet"]]})
    assert probe(api, opened, ip) == "open HTTP/1.0"
    # ... only what it names: the rest of 10.0.0.0/8 stays shut, e.g. the network's gateway.
    assert probe(api, opened, private_net["gateway"]) == BLOCKED
    # deny_out with allow_out on the same range: allowing wins (E2B's rule).
    both = create(api, {"allow_out": [f"{ip}/32"], "deny_out": [private_net["subnet"]]})
    assert probe(api, both, ip) == "open HTTP/1.0"
    for sid in (opened, both):
        api.req("DELETE", f"/sessions/{sid}")


def test_deny_out_blocks_the_internet_and_allow_out_makes_an_allow_list(
    api: Client, default_sid: str
) -> None:
    assert index(api, default_sid) == "open 200"
    denied = create(api, {"deny_out": ["0.0.0.0/0"]})
    assert index(api, denied) == "blocked URLError"
    # The index's addresses as the host resolves them (the sandbox asks the same resolver).
    addresses = {
        i[4][0]
        for name in ("pypi.org", "files.pythonhosted.org")
        for i in socket.getaddrinfo(name, 443, socket.AF_INET)
    }
    listed = create(api, {"deny_out": ["0.0.0.0/0"], "allow_out": [f"{a}/32" for a in addresses]})
    assert index(api, listed) == "open 200"
    for sid in (denied, listed):
        api.req("DELETE", f"/sessions/{sid}")


def test_host_listener_is_unreachable_through_the_gateway(
    api: Client,
    stack: Stack,
    default_sid: str,
    host_listener: dict[str, Any],
    private_net: dict[str, str],
) -> None:
    port = host_listener["port"]
    gateway = (
        docker.from_env().networks.get(network_name(stack)).attrs["IPAM"]["Config"][0]["Gateway"]
    )
    before = list(host_listener["peers"])
    assert probe(api, default_sid, gateway, port) == BLOCKED
    # Not even with allow_out naming every address (the host is never reachable).
    opened = create(api, {"allow_out": ["0.0.0.0/0", private_net["subnet"]]})
    assert probe(api, opened, gateway, port) == BLOCKED
    # Nor the host's address on the test's network, which the sandbox may otherwise reach.
    assert probe(api, opened, private_net["gateway"], port) == BLOCKED
    assert host_listener["peers"] == before
    # A container of the test's own, on its own network, reaches the listener through its
    # gateway: the host listens there, only the policy keeps sandboxes out.
    client = docker.from_env(timeout=60)
    out = client.containers.run(
        "paddock/tpl-python3:latest",
        ["python3", "-c", _PROBE.split("'")[1], private_net["gateway"], str(port)],
        network=private_net["name"],
        remove=True,
        cap_drop=["ALL"],
    )
    assert out.decode().strip() == "open HOST"
    api.req("DELETE", f"/sessions/{opened}")


def test_other_sandboxes_are_unreachable(api: Client, stack: Stack, default_sid: str) -> None:
    target = create(api)
    api.start(target, f"cd /tmp && python3 -m http.server {PROBE_PORT}")
    ip = sandbox_ip(stack, target)
    _wait_open(ip, PROBE_PORT)  # the host (Paddock's side) may reach a sandbox's port
    assert probe(api, default_sid, ip) == BLOCKED
    # Not even with allow_out naming every address.
    intruder = create(api, {"allow_out": ["0.0.0.0/0"]})
    assert probe(api, intruder, ip) == BLOCKED
    for sid in (target, intruder):
        api.req("DELETE", f"/sessions/{sid}")


def test_a_sandbox_holds_at_most_its_share_of_connections(
    api: Client, private_net: dict[str, str]
) -> None:
    """The host's conntrack table is shared: one sandbox opening connections without end
    must not fill it. Past PADDOCK_SANDBOX_MAX_FLOWS it is refused; closing frees its share."""
    sid = create(api, {"allow_out": [private_net["subnet"]]})
    hold = _HOLD.format(host=private_net["ip"], port=HOLD_PORT, n=MAX_FLOWS + 40)
    held, refused, errnos = stdout_lines(api.run(sid, hold))[0].split(" ", 2)
    assert int(held) == MAX_FLOWS and int(refused) == 40
    assert errnos == f"[{errno.EHOSTUNREACH}]"
    # All closed (the process ended): once the peer has closed too, a new batch gets its
    # whole share again.
    again = _HOLD.format(host=private_net["ip"], port=HOLD_PORT, n=MAX_FLOWS)
    wait_until(lambda: stdout_lines(api.run(sid, again)) == [f"{MAX_FLOWS} 0 []"], "flows freed")
    api.req("DELETE", f"/sessions/{sid}")


def test_none_has_no_network(api: Client, host_listener: dict[str, Any]) -> None:
    sid = create(api, {"mode": "none"})
    assert stdout_lines(api.run(sid, "ls /sys/class/net")) == ["lo"]
    assert probe(api, sid, "pypi.org", 443).startswith("blocked")
    api.req("DELETE", f"/sessions/{sid}")


@pytest.mark.parametrize(
    ("network", "field"),
    [
        ("internet", "body.network"),
        ({"mode": "wifi"}, "body.network.mode"),
        ({"allow_out": "10.0.0.0/8"}, "body.network.allow_out"),
        ({"allow_out": ["not-a-cidr"]}, "body.network.allow_out[0]"),
        ({"deny_out": ["fd00::/8"]}, "body.network.deny_out[0]"),
        ({"allow_out": ["169.254.169.254/32"]}, "body.network.allow_out[0]"),
        ({"allow_out": ["8.8.8.8", "192.168.1.0/24"]}, "body.network.allow_out[1]"),
        ({"mode": "none", "deny_out": ["1.1.1.1"]}, "body.network.mode"),
        ({"deny_out": ["1.1.1.1"] * 65}, "body.network.deny_out"),
        ({"allow": ["1.1.1.1"]}, "body.network.allow"),
    ],
)
def test_bad_network_is_422_and_creates_nothing(
    api: Client, stack: Stack, network: Any, field: str
) -> None:
    before = {c.id for c in stack.containers()}
    r = api.req("POST", "/sessions", json={"envID": "Bash", "network": network})
    assert r.status_code == 422, r.text
    assert field in r.json()["details"], r.json()
    assert {c.id for c in stack.containers()} == before


def test_v1_session_network_is_kept_and_shown(stack: Stack) -> None:
    c = Client(stack, new_tenant(stack, "netv1"), bearer=True)
    r = c.req(
        "POST",
        "/v1/sessions",
        json={"agent": {"kind": "shell"}, "network": {"allow_out": ["203.0.113.0/24"]}},
    )
    # Without the operator's permission a private allow_out is refused; a public one is kept.
    bad = c.req(
        "POST",
        "/v1/sessions",
        json={"agent": {"kind": "shell"}, "network": {"allow_out": ["172.16.0.0/12"]}},
    )
    assert bad.status_code == 400, bad.text
    assert bad.json()["error"]["param"] == "network.allow_out[0]"
    assert "PADDOCK_EGRESS_PRIVATE_ALLOWED" in bad.json()["error"]["message"]
    assert r.status_code == 201, r.text
    session = c.req("GET", f"/v1/sessions/{r.json()['chat_session_id']}").json()
    sandbox = c.req("GET", f"/v1/sandboxes/{session['sandbox_id']}").json()
    assert sandbox["network"] == {
        "mode": "internet",
        "allow_out": ["203.0.113.0/24"],
        "deny_out": [],
    }
    c.req("DELETE", f"/v1/sessions/{r.json()['chat_session_id']}")


def test_rules_come_back_and_survive_a_worker_restart(
    api: Client, stack: Stack, default_sid: str, private_net: dict[str, str]
) -> None:
    opened = create(api, {"allow_out": [private_net["subnet"]]})
    tag = _tag(stack)
    jump = ["DOCKER-USER", "-i", f"pdk{tag}", "-j", f"PDK-{tag}-FWD"]
    # Someone flushes our jump: the next heartbeat puts it back, and the policy holds.
    subprocess.run(["iptables", "-D", *jump], check=True)
    wait_until(lambda: _iptables_ok(["-C", *jump]), "the rules to be reinstalled")
    assert probe(api, default_sid, private_net["ip"]) == BLOCKED
    # The worker stops while sandboxes run: its rules stay (removing them would open the
    # sandboxes); restarted, it rebuilds every sandbox's rules from the engine.
    stack.stop_process("worker-host-a")
    assert _iptables_ok(["-C", *jump])
    stack.start_host("host-a")
    wait_until(lambda: "host-a" in stack.alive_hosts(), "the worker to come back")
    assert probe(api, default_sid, private_net["ip"]) == BLOCKED
    assert probe(api, opened, private_net["ip"]) == "open HTTP/1.0"
    api.req("DELETE", f"/sessions/{opened}")


def _tag(stack: Stack) -> str:
    return hashlib.sha1(f"{stack.instance}/host-a".encode()).hexdigest()[:8]


def _iptables_ok(args: list[str]) -> bool:
    return subprocess.run(["iptables", "-w", "5", *args], capture_output=True).returncode == 0


def test_a_host_without_rules_refuses_internet_and_says_why(tmp_path: Path) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    for tool in ("iptables", "iptables-restore", "ip6tables", "ip6tables-restore"):
        script = fake / tool
        script.write_text("#!/bin/sh\necho 'simulated: this host has no firewall' >&2\nexit 4\n")
        script.chmod(0o755)
    env = {"PATH": f"{fake}:{os.environ['PATH']}"}
    with Stack(tmp_path / "st", env=env) as st:
        api = Client(st)
        # /health reads the hosts at most once a second per web process.
        wait_until(
            lambda: "host-a:" in requests.get(st.url + "/health", timeout=10).text,
            "/health to name the host",
        )
        health = requests.get(st.url + "/health", timeout=10)
        assert health.status_code == 200
        assert health.text.startswith("OK\nhost-a: sandboxes get no internet:")
        assert "simulated: this host has no firewall" in health.text
        as_json = requests.get(
            st.url + "/health", headers={"Accept": "application/json"}, timeout=10
        ).json()
        assert as_json["status"] == "degraded"
        r = api.req("POST", "/sessions", json={"envID": "Bash"})
        assert r.status_code == 503, r.text
        assert "internet" in r.json()["message"]
        assert st.containers() == []
        # Without network it works, and the worker's log says why internet is off.
        sid = create(api, {"mode": "none"}, env="Bash")
        assert stdout_lines(api.run(sid, "echo ok")) == ["ok"]
        assert "simulated: this host has no firewall" in st.log("worker-host-a")
