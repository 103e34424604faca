"""Warm pools (workers/host/pool.py) on the real stack, supervisor backend: a create claims a
started sandbox that carries nothing of an earlier one, with exactly the network it asked;
the pool refills; a burst beyond it starts cold without errors; a warm sandbox is nobody's
quota; a worker killed and restarted keeps its pool, claimable as before; a warm sandbox reaches
nothing before its claim, not even the host's resolvers, and the claimed one's first command
already has its policy.

The resolver is the test's own: a listener in a network namespace the test makes, joined to the
host by a veth pair of its own (PADDOCK_SANDBOX_DNS points there)."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import docker
import pytest

from devstack.stack import Stack
from shared import keys
from shared.pools import Pools
from shared.settings import Settings
from tests.integration.client import Client, stdout_lines, wait_until
from workers.backends.base import SANDBOX_USER
from workers.backends.docker.egress import Egress

HOST = "pool-host"
SIZE = 2
BURST = 20
# Records each peer's address in the file argv[2] and answers one line; listens on argv[1]:53.
_RESOLVER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 53))
s.listen(16)
while True:
    c, peer = s.accept()
    with open(sys.argv[2], "a") as f:
        f.write(peer[0] + "\\n")
    c.sendall(b"resolver\\n")
    c.close()
"""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=15)


@pytest.fixture(scope="module")
def resolver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A TCP listener on port 53 in a network namespace of the test's own, reached from the
    host through a veth pair (10.214.N.0/30: the host .1, the namespace .2)."""
    tag = f"rsv{os.getpid() % 100000}"  # (not pdk…: the rules refuse any pdk+ interface)
    third = random.randrange(0, 250)
    host_ip, ns_ip = f"10.214.{third}.1", f"10.214.{third}.2"
    peers = tmp_path_factory.mktemp("resolver") / "peers"
    peers.touch()
    _ip("netns", "add", tag)
    proc = None
    try:
        _ip("link", "add", f"{tag}h", "type", "veth", "peer", "name", f"{tag}n")
        _ip("link", "set", f"{tag}n", "netns", tag)
        _ip("addr", "add", f"{host_ip}/30", "dev", f"{tag}h")
        _ip("link", "set", f"{tag}h", "up")
        for args in (
            ("addr", "add", f"{ns_ip}/30", "dev", f"{tag}n"),
            ("link", "set", f"{tag}n", "up"),
            ("link", "set", "lo", "up"),
            ("route", "add", "default", "via", host_ip),
        ):
            _ip("netns", "exec", tag, "ip", *args)
        proc = subprocess.Popen(
            ["ip", "netns", "exec", tag, sys.executable, "-c", _RESOLVER, ns_ip, str(peers)]
        )
        deadline = time.monotonic() + 30
        while True:  # up (the check's own connection is the host's, not a sandbox's)
            try:
                socket.create_connection((ns_ip, 53), timeout=2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the test's resolver did not start"
                time.sleep(0.2)
        yield {"ip": ns_ip, "peers": peers}
    finally:
        if proc is not None:
            proc.kill()
            proc.wait(10)
        subprocess.run(["ip", "link", "del", f"{tag}h"], capture_output=True, timeout=15)
        subprocess.run(["ip", "netns", "del", tag], capture_output=True, timeout=15)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, resolver: dict[str, Any]) -> Iterator[Stack]:
    env = {
        "PADDOCK_SANDBOX_BACKEND": "supervisor",
        "PADDOCK_POOL_SIZES": f"Bash={SIZE}",
        "PADDOCK_TENANT_MAX_SANDBOXES": str(BURST + 10),
        "PADDOCK_SANDBOX_DNS": resolver["ip"],
    }
    with Stack(tmp_path_factory.mktemp("pools"), hosts=(HOST,), env=env) as s:
        yield s


@pytest.fixture(scope="module")
def api(stack: Stack) -> Client:
    return Client(stack)


def ready(stack: Stack) -> set[str]:
    return Pools(stack.redis).ready_ids(HOST, "Bash", "internet")


def full_pool(stack: Stack) -> set[str]:
    return set(wait_until(lambda: len(ready(stack)) == SIZE and ready(stack), "a full pool", 60))


def chain(stack: Stack, sid: str) -> str:
    egress = Egress(docker.from_env(), Settings.from_env({**stack.env, "PADDOCK_HOST_ID": HOST}))
    return egress._chain(sid)


REJECT_ALL = "-j REJECT --reject-with icmp-admin-prohibited"


def chain_rules(stack: Stack, sid: str) -> list[str]:
    """The sandbox's own egress chain on the host (iptables -S), without its -N line."""
    chain_name = chain(stack, sid)
    out = subprocess.run(
        ["iptables", "-w", "5", "-S", chain_name], capture_output=True, text=True, timeout=15
    )
    assert out.returncode == 0, out.stderr
    return [line for line in out.stdout.splitlines() if line.startswith("-A ")]


def used(stack: Stack) -> int:
    """Sandboxes held by every tenant together (their quota sets)."""
    return sum(int(stack.redis.scard(k)) for k in stack.redis.scan_iter(keys.tenant_sandboxes("*")))


def create(api: Client, network: dict[str, Any] | None = None) -> str:
    body: dict[str, Any] = {"envID": "Bash"}
    if network is not None:
        body["network"] = network
    r = api.req("POST", "/sessions", json=body)
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


# What a sandbox shows of itself: its files, env and processes (each /proc entry's name, but
# this command's own).
_STATE = (
    'ls -A ~ /tmp /workspace | tr "\\n" " "; echo; env | grep -c MARK; '
    'for p in /proc/[0-9]*; do cat "$p/comm"; done 2>/dev/null '
    '| grep -vxE "bash|sh|cat|grep|sort|tr" | sort | tr "\\n" " "'
)


def test_a_claimed_sandbox_is_fresh_with_the_network_asked_and_the_pool_refills(
    stack: Stack, api: Client
) -> None:
    warm = full_pool(stack)
    assert used(stack) == 0  # warm sandboxes are nobody's quota
    # Until claimed, a warm sandbox with internet reaches nothing.
    for sid in warm:
        assert chain_rules(stack, sid) == [f"-A {chain(stack, sid)} {REJECT_ALL}"]
    clean = stdout_lines(api.run(create(api), _STATE))  # what a fresh one shows

    first = create(api)
    assert first in warm and used(stack) == 2
    api.run(
        first,
        "echo secret > ~/mark; echo secret > /tmp/mark; echo x > /workspace/mark; "
        "export MARK=1; (MARK=1 setsid sleep 600 >/dev/null 2>&1 &)",
    )
    assert "mark" in stdout_lines(api.run(first, "ls ~"))
    assert api.req("DELETE", f"/sessions/{first}").status_code in (200, 204)

    refilled = full_pool(stack)  # back to SIZE, with new sandboxes
    assert not refilled & {first}
    second = create(api)
    assert second in refilled and second != first
    # None of the earlier sandbox's files, env or processes; the same as a fresh one.
    assert stdout_lines(api.run(second, _STATE)) == clean
    assert clean[1:] == ["0", "docker-init paddock-supervi "]
    # Default network: the internet under the policy (no lists): its reject-all is gone.
    assert chain_rules(stack, second) == []
    assert "eth0" in stdout_lines(api.run(second, "ls /sys/class/net"))
    # A policy with lists is the one installed.
    full_pool(stack)
    listed = create(api, {"mode": "internet", "deny_out": ["192.0.2.0/24"]})
    api.run(listed, "true")  # (installed after the claim answers, before anything runs)
    rules = chain_rules(stack, listed)
    assert any("-d 192.0.2.0/24" in r and "REJECT" in r for r in rules), rules
    assert f"-A {chain(stack, listed)} {REJECT_ALL}" not in rules
    # No network asked: never a warm (internet) sandbox; only loopback.
    before = ready(stack)
    offline = create(api, {"mode": "none"})
    assert offline not in before
    assert stdout_lines(api.run(offline, "ls /sys/class/net")) == ["lo"]
    for sid in (second, listed, offline):
        api.req("DELETE", f"/sessions/{sid}")


# Connects to the resolver's port 53 (TCP) from inside a sandbox: its answer, or the error.
_PROBE = "timeout 10 bash -c 'exec 3<>/dev/tcp/{ip}/53 && head -n1 <&3' 2>&1; echo rc=$?"


def test_a_warm_sandbox_reaches_nothing_not_even_dns_until_claimed(
    stack: Stack, api: Client, resolver: dict[str, Any]
) -> None:
    peers: Path = resolver["peers"]
    probe = _PROBE.format(ip=resolver["ip"])
    warm = full_pool(stack)
    before = peers.read_text()
    for sid in warm:
        [c] = [c for c in stack.containers() if c.labels["paddock.sandbox"] == sid]
        _, out = c.exec_run(["bash", "-c", probe], user=SANDBOX_USER)
        text = out.decode(errors="replace")
        # Refused on the host at once (the policy's REJECT), not dropped somewhere on the way.
        assert "No route to host" in text and "rc=1" in text, text
    assert peers.read_text() == before  # nothing reached the resolver
    # Claimed, the same sandbox (same address) reaches it from its very first command: the
    # policy is in place before anything of the tenant runs.
    sid = create(api)
    assert sid in warm
    out = stdout_lines(api.run(sid, probe))
    assert out == ["resolver", "rc=0"], out
    assert len(peers.read_text().splitlines()) == len(before.splitlines()) + 1
    api.req("DELETE", f"/sessions/{sid}")


def test_a_burst_beyond_the_pool_starts_cold_and_every_sandbox_works(
    stack: Stack, api: Client
) -> None:
    warm = full_pool(stack)
    with ThreadPoolExecutor(max_workers=5) as pool:
        sids = list(pool.map(lambda _: create(api), range(BURST)))
    assert len(set(sids)) == BURST
    assert len(set(sids) & warm) == SIZE  # the pool's first, then cold starts
    with ThreadPoolExecutor(max_workers=5) as pool:
        outs = list(pool.map(lambda s: stdout_lines(api.run(s, f"echo {s}")), sids))
    assert outs == [[s] for s in sids]
    assert used(stack) >= BURST
    with ThreadPoolExecutor(max_workers=5) as pool:
        list(pool.map(lambda s: api.req("DELETE", f"/sessions/{s}"), sids))
    full_pool(stack)


def test_a_restarted_worker_keeps_its_pool_and_the_claimed_policies(
    stack: Stack, api: Client
) -> None:
    full_pool(stack)
    claimed = create(api, {"mode": "internet", "deny_out": ["192.0.2.0/24"]})
    warm = full_pool(stack)
    stack.stop_process(f"worker-{HOST}", signal.SIGKILL)
    stack.start_host(HOST)
    wait_until(lambda: stack.alive_hosts() == [HOST], "the worker back")
    assert full_pool(stack) == warm  # kept: neither removed as leftovers nor replaced
    # The claimed sandbox's rules are its tenant's again (not the pool's reject-all) ...
    rules = chain_rules(stack, claimed)
    assert any("-d 192.0.2.0/24" in r for r in rules), rules
    assert f"-A {chain(stack, claimed)} {REJECT_ALL}" not in rules
    # ... and the warm ones' still reject everything until a claim, which works as before.
    for sid in warm:
        assert chain_rules(stack, sid) == [f"-A {chain(stack, sid)} {REJECT_ALL}"]
    sid = create(api)
    assert sid in warm
    assert stdout_lines(api.run(sid, "echo again")) == ["again"]
    assert chain_rules(stack, sid) == []
    # Every container is a record's: nothing leaked, nothing unaccounted.
    full_pool(stack)
    records = {
        k.decode().split(":")[2]
        for k in stack.redis.scan_iter("pdk:sbx:*")
        if k.count(b":") == 2 and stack.redis.type(k) == b"hash"
    }
    assert {c.labels["paddock.sandbox"] for c in stack.containers()} <= records
    for s in (sid, claimed):
        api.req("DELETE", f"/sessions/{s}")
