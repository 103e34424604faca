"""Two hosts on one machine: placement spreads sandboxes, and each sandbox's commands run on
its owner's queue."""

from __future__ import annotations

import json
from pathlib import Path

import docker

from devstack.stack import Stack
from shared import keys
from tests.integration.client import Client, stdout_lines


def test_sandboxes_land_on_both_hosts_and_commands_run_on_the_owner(tmp_path: Path) -> None:
    with Stack(tmp_path, hosts=("alpha", "beta")) as st:
        api = Client(st)
        sids = [api.sandbox("Bash") for _ in range(4)]
        owners = {sid: st.redis.hget(keys.sandbox(sid), "host").decode() for sid in sids}
        assert set(owners.values()) == {"alpha", "beta"}

        for sid in sids:
            api.run(sid, "echo hi")
            api.req(
                "PUT",
                f"/sessions/{sid}/filesystem/file",
                params={"path": "/tmp/f"},
                json={"content": "x"},
            )
            api.req("GET", f"/sessions/{sid}/filesystem/dir", params={"path": "/tmp"})
            api.req("GET", f"/sessions/{sid}")

        for sid in sids:
            # The container carries its owner's label ...
            [container] = [c for c in st.containers() if c.labels["paddock.sandbox"] == sid]
            assert container.labels["paddock.host"] == owners[sid]
            # ... and every task of the sandbox was executed by the owner's worker.
            log = [json.loads(x) for x in st.redis.lrange(keys.task_log(sid), 0, -1)]
            assert {e["task"] for e in log} >= {
                "paddock.sandbox.create",
                "paddock.process.start",
                "paddock.fs.write",
                "paddock.fs.list",
                "paddock.sandbox.ports",
            }
            assert {e["host"] for e in log} == {owners[sid]}
        # Each worker's own log names only its sandboxes.
        for host in ("alpha", "beta"):
            text = st.log(f"worker-{host}")
            for sid, owner in owners.items():
                assert (f"sandbox {sid}: container started" in text) == (owner == host)


def test_a_full_host_is_skipped_and_all_full_is_503(tmp_path: Path) -> None:
    # The capacity comes from the engine's memory: reserve all of it but 2.5 GiB, so that two
    # 1 GiB sandboxes fit and a third does not (CPUs are not the bound here).
    mem_total = int(docker.from_env().info()["MemTotal"])
    env = {
        "PADDOCK_HOST_CAPACITY": "",
        "PADDOCK_SANDBOX_MEMORY": "1g",
        "PADDOCK_HOST_RESERVED_MEMORY": str(mem_total - (5 << 29)),
        "PADDOCK_HOST_CPU_OVERCOMMIT": "1000",
    }
    with Stack(tmp_path, hosts=("small",), env=env) as st:
        assert st.redis.hget(keys.host("small"), "capacity") == b"2"
        assert "capacity 2 sandboxes (memory allows 2" in st.log("worker-small")
        api = Client(st)
        a, b = api.sandbox("Bash"), api.sandbox("Bash")
        r = api.req("POST", "/sessions", json={"envID": "Bash"})
        assert r.status_code == 503
        api.req("DELETE", f"/sessions/{a}")
        c = api.sandbox("Bash")  # the freed slot is usable again
        assert stdout_lines(api.run(c, "echo ok")) == ["ok"]
        assert stdout_lines(api.run(b, "echo ok")) == ["ok"]
