"""A Redis restart (SIGTERM or kill -9, about a second down) under load: running processes,
a long-poll and an agent session with a queued task all carry on, and nothing is lost or
doubled. Redis keeps its data across the restart (AOF, fsync per write), as an operator's does.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from devstack.stack import RedisOptions, Stack
from tests.integration.client import Client, LongPoll, stdout_lines
from tests.integration.session_helpers import new_tenant, recv, ws_connect

N = 60  # lines per process, one every 100 ms: the restart falls in the middle
COUNT = f"for i in $(seq 1 {N}); do echo $i; sleep 0.1; done"
AGENT = "for i in $(seq 1 40); do echo a$i; sleep 0.1; done"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(
        tmp_path_factory.mktemp("redis-faults"),
        env={"PADDOCK_AUTH": "on"},
        redis_options=RedisOptions(aof=True),
    ) as st:
        yield st


def _events_until_exit(
    client: Client, session_id: str, task_id: str, timeout: float = 90
) -> list[dict[str, Any]]:
    """Every event of the session up to the exit of ``task_id``, paged over HTTP (a reader
    that, unlike a socket, does not mind the restart)."""
    events: list[dict[str, Any]] = []
    after = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = client.req("GET", f"/v1/sessions/{session_id}/events", params={"after": after})
        assert r.status_code == 200, r.text
        page = r.json()
        events += page["events"]
        after = page["next_after"]
        if any(e["type"] == "exit" and e["task_id"] == task_id for e in events):
            return events
        if not page["has_more"]:
            time.sleep(0.3)
    raise AssertionError(f"no exit of {task_id} within {timeout}s: {events[-5:]}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_a_redis_restart_loses_nothing_and_wedges_nothing(stack: Stack, sig: int) -> None:
    key = new_tenant(stack, f"redis{sig}")
    api, client = Client(stack, key, timeout=120), Client(stack, key, bearer=True)
    sids = [api.sandbox() for _ in range(3)]
    session = client.agent_session()
    session_id = session["chat_session_id"]
    with ws_connect(session["connect_url"], session["jwt"]) as ws:
        recv(ws)
        ws.send(json.dumps({"type": "task", "prompt": AGENT, "id": "first"}))
        ws.send(json.dumps({"type": "task", "prompt": "echo second-task", "id": "second"}))
    pids = []
    for sid in sids:
        r = api.start(sid, COUNT)
        assert r.status_code == 200, r.text
        pids.append(r.json()["processID"])

    # A long-poll held across the restart.
    poller = LongPoll(api, sids[0], pids[0])
    poller.start()
    time.sleep(1.5)
    stack.restart_redis(down_seconds=1.0, sig=sig)

    poller.join(60)
    assert not poller.is_alive(), "the long-poll outlived the restart by a minute"
    assert poller.status == 200, (poller.error, poller.body)
    assert poller.body["finished"] is True
    assert stdout_lines(poller.body) == [str(i) for i in range(1, N + 1)]

    for sid, pid in zip(sids, pids, strict=True):
        done = api.req("GET", f"/sessions/{sid}/processes/{pid}?wait=true", timeout=60)
        assert done.status_code == 200, done.text
        body = done.json()
        assert body["finished"] is True, body
        # Every line once, in order: none lost while Redis was away, none written twice.
        assert stdout_lines(body) == [str(i) for i in range(1, N + 1)]

    events = _events_until_exit(client, session_id, "second")
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(set(seqs)), "events repeated or out of order"
    exits = [(e["task_id"], e["exit_code"]) for e in events if e["type"] == "exit"]
    assert exits == [("first", 0), ("second", 0)]
    out = {
        t: "".join(e["data"] for e in events if e["type"] == "stdout" and e["task_id"] == t)
        for t in ("first", "second")
    }
    assert out["first"] == "".join(f"a{i}\n" for i in range(1, 41))
    assert out["second"] == "second-task\n"

    # And new work runs as before.
    assert stdout_lines(api.run(sids[1], "echo after-restart")) == ["after-restart"]
    for sid in sids:
        api.req("DELETE", f"/sessions/{sid}")
    client.req("DELETE", f"/v1/sessions/{session_id}")
