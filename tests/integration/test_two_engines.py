"""Two real engines: a second dockerd (tests/integration/engine_helpers.py) next to the
machine's, one host worker on each, and two web replicas (two gunicorns over one Redis).

Sandboxes land on both engines and either replica answers for any of them; an engine restart
with live-restore (as bootstrap starts dockerd) keeps a sandbox working, one without it makes
the sandbox `lost` (never `running` for a dead container, never a 500); a host whose worker and
engine stop has its sandboxes marked `lost` by the control worker within a bounded time
(PADDOCK_HOST_DEAD_AFTER), their slots freed, and new sandboxes go to the other host.

Sandboxes have no network here (PADDOCK_SANDBOX_NETWORK=none): the second engine makes no
iptables rules (it must not touch the machine's), so a sandbox with internet on it would get
a network that reaches nothing; egress has its own tests.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from devstack.stack import Stack
from shared import keys
from tests.integration.client import Client, LongPoll, stderr_lines, stdout_lines, wait_until
from tests.integration.engine_helpers import Engine
from tests.integration.session_helpers import new_tenant

ONE, TWO = "one", "two"
IMAGE = "paddock/tpl-bash:latest"  # the smallest template image (~190 MB)
DEAD_AFTER = 5.0


def _machine_bridge() -> str:
    """The interface of the machine's engine's default bridge network (docker0)."""
    bridge = docker.from_env(timeout=60).networks.get("bridge")
    return str(bridge.attrs["Options"].get("com.docker.network.bridge.name", "docker0"))


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    machine_bridge = _machine_bridge()
    e = Engine()
    try:
        e.start(live_restore=True)
        e.load(IMAGE)
        yield e
    finally:
        e.destroy()
    # The second engine left the machine's engine as it was: its default bridge is there
    # (a dockerd started with --bridge=none, or restarted, deletes the docker0 of its network
    # namespace: the second one runs in its own).
    assert Path(f"/sys/class/net/{machine_bridge}").exists(), f"{machine_bridge} was removed"


@pytest.fixture(scope="module")
def st(tmp_path_factory: pytest.TempPathFactory, engine: Engine) -> Iterator[Stack]:
    env = {
        "PADDOCK_SANDBOX_NETWORK": "none",
        "PADDOCK_HOST_CAPACITY": "6",
        "PADDOCK_RECONCILE_INTERVAL": "2",
        "PADDOCK_HOST_DEAD_AFTER": str(DEAD_AFTER),
        "PADDOCK_LOST_KEEP": "300",
        "PADDOCK_WAIT_TIMEOUT": "60",
    }
    with Stack(
        tmp_path_factory.mktemp("two-engines"),
        hosts=(ONE, TWO),
        env=env,
        host_env={TWO: {"DOCKER_HOST": engine.url}},
        web_replicas=2,
    ) as s:
        yield s


def _apis(st: Stack) -> tuple[Client, Client]:
    """A client of each web replica, as one new tenant."""
    key = new_tenant(st, "t" + secrets.token_hex(3))
    a, b = Client(st, key, timeout=60), Client(st, key, timeout=60)
    b.url = st.urls[1]
    assert a.url != b.url
    return a, b


def _owner(st: Stack, sid: str) -> str:
    raw = st.redis.hget(keys.sandbox(sid), "host")
    assert raw is not None
    return str(raw.decode())


def _on(st: Stack, api: Client, host: str) -> str:
    """A new Bash sandbox on ``host``. Placement picks the freest host (ties always to the
    same one): the ones that land elsewhere are kept until one lands there, then deleted."""
    # After an engine restart its host skips a heartbeat or two: placed only once back.
    wait_until(lambda: host in st.alive_hosts(), f"{host} alive", 30)
    elsewhere = []
    try:
        for _ in range(6):
            sid = api.sandbox("Bash")
            if _owner(st, sid) == host:
                return sid
            elsewhere.append(sid)
        raise AssertionError(f"no sandbox placed on {host}")
    finally:
        for sid in elsewhere:
            assert api.req("DELETE", f"/sessions/{sid}").status_code in (200, 204)


def _state(api: Client, sid: str) -> str | int:
    r = api.req("GET", f"/v1/sandboxes/{sid}")
    assert r.status_code != 500, r.text
    return str(r.json()["state"]) if r.status_code == 200 else r.status_code


def test_sandboxes_land_on_both_engines_and_both_replicas_answer_for_each(
    st: Stack, engine: Engine
) -> None:
    a, b = _apis(st)
    sids = [(a if i % 2 else b).sandbox("Bash") for i in range(4)]
    owners = {sid: _owner(st, sid) for sid in sids}
    assert sorted(owners.values()) == [ONE, ONE, TWO, TWO], "placement spreads"
    for sid in sids:
        # Each container runs on its owner's engine, and only there.
        on_two = [c.labels["paddock.sandbox"] for c in engine.client().containers.list()]
        assert (sid in on_two) == (owners[sid] == TWO)
        # Written through one replica, read and run through the other, both ways.
        for writer, reader in ((a, b), (b, a)):
            assert writer.write(sid, "/tmp/f", f"from {writer.url}").status_code in (200, 204)
            got = reader.read(sid, "/tmp/f")
            assert got.status_code == 200 and got.json()["content"] == f"from {writer.url}"
            assert stdout_lines(reader.run(sid, "cat /tmp/f")) == [f"from {writer.url}"]
            started = writer.start(sid, "sleep 0.5; echo done")
            assert started.status_code == 200, started.text
            pid = started.json()["processID"]
            waited = reader.req("GET", f"/sessions/{sid}/processes/{pid}?wait=true")
            assert waited.status_code == 200 and stdout_lines(waited.json()) == ["done"]
        assert _state(a, sid) == _state(b, sid) == "running"
    for i, sid in enumerate(sids):
        assert (a, b)[i % 2].req("DELETE", f"/sessions/{sid}").status_code in (200, 204)
    wait_until(lambda: not st.containers(), "containers removed on both engines", 30)


def test_an_engine_restart_with_live_restore_keeps_the_sandbox_working(
    st: Stack, engine: Engine
) -> None:
    a, b = _apis(st)
    sid = _on(st, a, TWO)
    assert a.write(sid, "/home/user/kept", "before").status_code in (200, 204)
    engine.restart(live_restore=True)
    # Back within seconds, same sandbox, same files, new commands run; never lost.
    got = wait_until(
        lambda: (
            (
                r := b.req("POST", f"/sessions/{sid}/processes?wait=true", json={"cmd": "echo up"})
            ).status_code
            == 200
            and r
        ),
        "an exec on the restarted engine",
        30,
    )
    assert stdout_lines(got.json()) == ["up"]
    assert b.read(sid, "/home/user/kept").json()["content"] == "before"
    time.sleep(5)  # two reconcile passes: the container is running, the record stays so
    assert _state(a, sid) == "running"
    assert a.req("DELETE", f"/sessions/{sid}").status_code in (200, 204)


def test_an_engine_restart_without_live_restore_loses_the_sandbox_never_a_500(
    st: Stack, engine: Engine
) -> None:
    a, b = _apis(st)
    sid = _on(st, a, TWO)
    pid = a.start(sid, "sleep 600").json()["processID"]
    engine.restart(live_restore=False)  # its containers stop with it
    # Noticed by the engine's host (an exec meeting the stopped container, or the periodic
    # pass): lost on /v1 through either replica, 404 on the E2B API, slot freed.
    first = b.start(sid, "echo hi")
    assert first.status_code in (404, 410), first.text
    wait_until(lambda: _state(a, sid) == "lost", "the sandbox marked lost", 20)
    assert _state(b, sid) == "lost"
    assert b.req("GET", f"/sessions/{sid}").status_code == 404
    assert sid not in st.redis.smembers(keys.host_sandboxes(TWO))
    # Its process is closed, saying why, rather than running forever.
    done = a.req("GET", f"/sessions/{sid}/processes/{pid}?wait=true")
    assert done.status_code in (200, 404), done.text
    if done.status_code == 200:
        assert done.json()["finished"] is True
        assert any("lost" in line for line in stderr_lines(done.json()))
    # The host goes on with new sandboxes on the restarted engine.
    fresh = _on(st, a, TWO)
    assert stdout_lines(b.run(fresh, "echo fresh")) == ["fresh"]
    assert a.req("DELETE", f"/sessions/{fresh}").status_code in (200, 204)


def test_a_dead_host_loses_its_sandboxes_and_new_ones_go_to_the_other(
    st: Stack, engine: Engine
) -> None:
    a, b = _apis(st)
    if engine.live_restore:  # its containers must die with it, as with a machine that dies
        engine.restart(live_restore=False)
    doomed = _on(st, a, TWO)
    survivor = _on(st, a, ONE)
    pid = a.start(doomed, "for i in $(seq 1 600); do echo $i; sleep 0.1; done").json()["processID"]
    poller = LongPoll(b, doomed, pid, timeout=120)
    poller.start()
    time.sleep(1)

    stopped = time.monotonic()
    st.stop_process(f"worker-{TWO}")
    engine.stop()
    # Heartbeat gone (3 intervals), then PADDOCK_HOST_DEAD_AFTER, then a reaper tick.
    bound = 3 + DEAD_AFTER + 10
    wait_until(lambda: _state(a, doomed) == "lost", "the dead host's sandbox marked lost", bound)
    took = time.monotonic() - stopped
    assert _state(b, doomed) == "lost"
    assert b"heartbeat" in (st.redis.hget(keys.sandbox(doomed), "lost_reason") or b"")
    for api in (a, b):
        assert api.req("GET", f"/sessions/{doomed}").status_code == 404
        assert api.start(doomed, "echo hi").status_code == 404
    assert st.redis.smembers(keys.host_sandboxes(TWO)) == set()
    listed = [s["sandbox_id"] for s in a.req("GET", "/v1/sandboxes").json()["sandboxes"]]
    assert doomed not in listed and survivor in listed
    # The waiter is answered: the process closed with a line saying why.
    poller.join(20)
    assert not poller.is_alive(), "a long-poll on the dead host's process still hangs"
    assert poller.status == 200, (poller.error, poller.body)
    assert poller.body["finished"] is True
    assert any("lost" in line for line in stderr_lines(poller.body))

    # New sandboxes go to the live host, and the other sandbox never noticed.
    fresh = [(a, b)[i % 2].sandbox("Bash") for i in range(3)]
    assert {_owner(st, sid) for sid in fresh} == {ONE}
    assert stdout_lines(b.run(survivor, "echo alive")) == ["alive"]
    for sid in [*fresh, survivor]:
        assert a.req("DELETE", f"/sessions/{sid}").status_code in (200, 204)
    print(f"dead host noticed after {took:.1f} s")

    # The host comes back: its worker removes the lost sandbox's leftover container.
    engine.start(live_restore=True)
    st.start_host(TWO)
    wait_until(lambda: TWO in st.alive_hosts(), "the host back", 60)
    wait_until(
        lambda: not engine.client().containers.list(all=True), "the leftover container removed", 30
    )
