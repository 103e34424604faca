"""Idle timeout, hardening of the sandbox container, and recovery after a worker restart."""

from __future__ import annotations

import time
from pathlib import Path

import docker

from devstack.stack import Stack
from shared import keys
from tests.integration.client import Client, stderr_lines, stdout_lines


def test_idle_sessions_are_reaped_and_busy_ones_survive(tmp_path: Path) -> None:
    with Stack(tmp_path, env={"PADDOCK_IDLE_TIMEOUT": "4"}) as st:
        api = Client(st)
        idle, busy = api.sandbox("Bash"), api.sandbox("Bash")
        started = time.monotonic()
        # Keep `busy` alive with requests of several kinds; leave `idle` alone.
        while time.monotonic() - started < 9:
            api.req("GET", f"/sessions/{busy}/filesystem/dir", params={"path": "/tmp"})
            time.sleep(1)
        assert api.req("GET", f"/sessions/{idle}").status_code == 404
        assert not any(c.labels["paddock.sandbox"] == idle for c in st.containers())
        assert st.redis.keys(f"{keys.PREFIX}:*{idle}*") == []
        # The busy one outlived the timeout twice over and still works.
        assert stdout_lines(api.run(busy, "echo alive")) == ["alive"]


def test_sandbox_is_hardened(api: Client) -> None:
    sid = api.sandbox("Bash")
    [container] = [c for c in api.stack.containers() if c.labels["paddock.sandbox"] == sid]
    hc = container.attrs["HostConfig"]
    assert hc["Privileged"] is False
    assert hc["CapDrop"] == ["ALL"] and not hc["CapAdd"]
    assert "no-new-privileges:true" in hc["SecurityOpt"]
    assert hc["PidsLimit"] == 512
    assert hc["Memory"] == 1 << 30 and hc["MemorySwap"] == hc["Memory"]
    assert hc["NanoCpus"] == 1_000_000_000
    # The internet by default, on the host's confined network (tests/integration/test_egress.py
    # shows what it reaches), with IPv6 off.
    assert hc["NetworkMode"] == f"paddock-{api.stack.instance}-host-a"
    assert hc["Sysctls"]["net.ipv6.conf.all.disable_ipv6"] == "1"
    # Read-only image; the writable paths are the sandbox's own capped storage, no tmpfs.
    assert hc["ReadonlyRootfs"] is True
    assert not hc.get("Tmpfs") and not hc.get("StorageOpt")
    writable = [m for m in hc["Mounts"] if not m.get("ReadOnly")]
    assert sorted(m["Target"] for m in writable) == [
        "/dev/shm",
        "/home/user",
        "/tmp",
        "/var/tmp",
        "/workspace",
    ]
    assert all(m["Type"] == "bind" for m in hc["Mounts"])
    # Besides them only the supervisor's binary (supervisor backend), read-only.
    assert [m["Target"] for m in hc["Mounts"] if m.get("ReadOnly")] in (
        [],
        ["/opt/paddock/paddock-supervisor"],
    )
    assert container.attrs["Config"]["User"] == "user"
    out = api.run(sid, "id -u; grep CapEff /proc/self/status; grep NoNewPrivs /proc/self/status")
    assert stdout_lines(out) == ["1000", "CapEff:\t0000000000000000", "NoNewPrivs:\t1"]
    out = api.run(sid, "cat /proc/sys/net/ipv6/conf/all/disable_ipv6")
    assert stdout_lines(out) == ["1"]
    api.req("DELETE", f"/sessions/{sid}")


def test_limits_are_configurable(tmp_path: Path) -> None:
    env = {
        "PADDOCK_SANDBOX_MEMORY": "256m",
        "PADDOCK_SANDBOX_CPUS": "0.5",
        "PADDOCK_SANDBOX_PIDS": "64",
        "PADDOCK_SANDBOX_NETWORK": "none",
    }
    with Stack(tmp_path, env=env) as st:
        api = Client(st)
        sid = api.sandbox("Bash")
        [container] = st.containers()
        hc = container.attrs["HostConfig"]
        assert hc["Memory"] == 256 << 20 and hc["MemorySwap"] == 256 << 20
        assert hc["NanoCpus"] == 500_000_000
        assert hc["PidsLimit"] == 64
        assert hc["NetworkMode"] == "none"
        # The kernel enforces them on the sandbox's cgroup (v1 or v2 layout).
        out = api.run(
            sid,
            "cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max;"
            "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null"
            " || cat /sys/fs/cgroup/memory.max",
        )
        assert stdout_lines(out) == ["64", str(256 << 20)]


def test_worker_restart_closes_lost_processes_and_orphans(tmp_path: Path) -> None:
    # The Docker backend's processes are lost with the worker (the supervisor backend's are
    # followed again: test_supervisor_restart.py).
    with Stack(tmp_path, hosts=("solo",), env={"PADDOCK_SANDBOX_BACKEND": "docker"}) as st:
        api = Client(st)
        sid = api.sandbox("Bash")
        pid = api.req("POST", f"/sessions/{sid}/processes", json={"cmd": "sleep 600"}).json()[
            "processID"
        ]
        # A container that no Redis record knows, as a crash between steps would leave.
        client = docker.from_env()
        [mine] = st.containers()
        orphan = client.containers.run(
            mine.image.id,
            ["sleep", "infinity"],
            detach=True,
            name=f"paddock-{st.instance}-x",
            labels={
                "paddock.sandbox": "orphan00-00000000",
                "paddock.host": "solo",
                "paddock.instance": st.instance,
            },
            network_mode="none",
            cap_drop=["ALL"],
        )
        st.stop_process("worker-solo")
        st.start_host("solo")
        out = api.req("GET", f"/sessions/{sid}/processes/{pid}?wait=true").json()
        assert out["finished"] is True
        assert any("lost" in x for x in stderr_lines(out))
        try:
            orphan.reload()
            raise AssertionError("orphan container survived the reconcile")
        except docker.errors.NotFound:
            pass
        assert stdout_lines(api.run(sid, "echo back")) == ["back"]
