"""A process start whose reply is lost (a slow engine, a worker killed after it spawned): a
process that started is answered with its id, never as failed; one that did not start is
given up, and a start delivered later refuses to run it (fakeredis with Lua)."""

from __future__ import annotations

import threading
from typing import Any

import fakeredis
import pytest

from shared import keys, rpc
from shared.errors import WorkerTimeout
from shared.output import ProcessLog
from shared.settings import Settings
from shared.store import Sandbox
from web import sandboxes as web_sandboxes
from web.sandboxes import Sandboxes

SB = Sandbox("sbx1", "tenant1", "host-a", "Bash", "running", 0.0)


@pytest.fixture
def r() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


def test_a_start_given_up_is_refused_later_and_changes_nothing(r: fakeredis.FakeRedis) -> None:
    plog = ProcessLog(r)
    assert plog.give_up("sbx1", "p1", ttl=600) is None
    with pytest.raises(WorkerTimeout, match="too late"):
        plog.register("sbx1", "p1", "echo hi", "tenant1", limit=4)
    # Nothing registered, nothing charged.
    assert not plog.exists("sbx1", "p1")
    assert r.scard(keys.sandbox_running("sbx1")) == 0
    assert r.get(keys.sandbox_output_bytes("sbx1")) is None
    assert 0 < r.ttl(keys.process_given_up("sbx1", "p1")) <= 600
    # Other processes of the sandbox are not affected.
    plog.register("sbx1", "p2", "echo hi", "tenant1", limit=4)
    assert plog.exists("sbx1", "p2")


def test_a_registered_process_is_found_not_given_up(r: fakeredis.FakeRedis) -> None:
    plog = ProcessLog(r)
    plog.register("sbx1", "p1", "echo hi", "tenant1")
    assert plog.give_up("sbx1", "p1", ttl=600) == "starting"
    plog.set_fields("sbx1", "p1", status="running")
    assert plog.give_up("sbx1", "p1", ttl=600) == "running"
    assert not r.exists(keys.process_given_up("sbx1", "p1"))


def _web(r: fakeredis.FakeRedis) -> Sandboxes:
    return Sandboxes(Settings(task_timeout=1), r, celery=None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "running_after",
    [0.0, 0.5],  # the worker started it, then died; a slow engine, the exec under way
    ids=["started", "starting"],
)
def test_the_web_answers_a_started_process_whose_reply_was_lost(
    r: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch, running_after: float
) -> None:
    plog = ProcessLog(r)
    monkeypatch.setattr(web_sandboxes, "_STARTING_GRACE", 5.0)

    def reply_lost(*args: Any, **_: Any) -> Any:
        process_id = args[4]["process_id"]
        plog.register("sbx1", process_id, "echo hi", "tenant1")  # "starting"
        if running_after:
            running = {"status": "running"}
            threading.Timer(running_after, plog.set_fields, ("sbx1", process_id), running).start()
        else:
            plog.set_fields("sbx1", process_id, status="running")
        raise WorkerTimeout()

    monkeypatch.setattr(rpc, "call", reply_lost)
    process_id = _web(r).start_process(SB, "echo hi", {}, "")
    assert plog.info("sbx1", process_id)["status"] == "running"


def test_a_start_that_never_ran_is_a_timeout_and_cannot_run_later(
    r: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[str] = []

    def no_worker(*args: Any, **_: Any) -> Any:
        sent.append(args[4]["process_id"])
        raise WorkerTimeout()

    monkeypatch.setattr(rpc, "call", no_worker)
    with pytest.raises(WorkerTimeout):
        _web(r).start_process(SB, "echo hi", {}, "")
    # The worker comes back and takes the task late: it must not run what the client was told
    # had failed.
    with pytest.raises(WorkerTimeout):
        ProcessLog(r).register("sbx1", sent[0], "echo hi", "tenant1")
    assert not ProcessLog(r).exists("sbx1", sent[0])
