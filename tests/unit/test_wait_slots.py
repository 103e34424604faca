"""A tenant's wait=true requests stay within PADDOCK_TENANT_MAX_WAITS however slowly their
processes start (fakeredis with Lua; the host's reply stubbed)."""

from __future__ import annotations

import time
from typing import Any

import fakeredis
import pytest

from shared import rpc
from shared.errors import QuotaExceeded
from shared.output import STDOUT, Piece, ProcessLog
from shared.settings import Settings
from shared.slots import STREAMS, WAITS
from shared.store import Sandbox
from web import sandboxes as web_sandboxes
from web.sandboxes import Sandboxes

SB = Sandbox("sbx1", "tenant1", "host-a", "Bash", "running", 0.0)


def test_a_slow_start_keeps_its_wait_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    # A start that takes longer than a slot lives unrefreshed (the host is slow, perhaps on
    # purpose) must not let its slot lapse: the next wait would then pass the limit.
    monkeypatch.setattr(web_sandboxes, "_SLOT_TTL", 0.2)
    monkeypatch.setattr(web_sandboxes, "_STARTING_GRACE", 0.1)

    def slow_start(*_a: Any, **_k: Any) -> Any:
        time.sleep(0.5)
        return {"value": None}

    monkeypatch.setattr(rpc, "call", slow_start)
    settings = Settings(task_timeout=1, tenant_max_waits=1)
    sandboxes = Sandboxes(settings, fakeredis.FakeRedis(), celery=None)  # type: ignore[arg-type]
    with sandboxes.waiting(SB):
        sandboxes.start_process(SB, "sleep 100", {}, "")
        assert sandboxes.slots.count(WAITS, SB.tenant_id) == 1
        with pytest.raises(QuotaExceeded, match="wait quota"), sandboxes.waiting(SB):
            pass
    assert sandboxes.slots.count(WAITS, SB.tenant_id) == 0


def test_a_client_that_stops_reading_keeps_its_stream_slot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An answer whose client stops reading blocks its write for as long as the client likes;
    # its slot must count all that time, or a tenant could hold more answers than its limit.
    monkeypatch.setattr(web_sandboxes, "_SLOT_TTL", 0.3)
    settings = Settings(tenant_max_streams=1)
    sandboxes = Sandboxes(settings, fakeredis.FakeRedis(), celery=None)  # type: ignore[arg-type]
    chunks, release = sandboxes.streaming(SB, iter([b"x"] * 3))
    next(chunks)  # the first chunk is written, then the client reads no more
    time.sleep(1.0)  # more than three slot lifetimes
    assert sandboxes.slots.count(STREAMS, SB.tenant_id) == 1
    with pytest.raises(QuotaExceeded, match="stream quota"):
        sandboxes.streaming(SB, iter([]))
    release()
    assert sandboxes.slots.count(STREAMS, SB.tenant_id) == 0
    _, release_next = sandboxes.streaming(SB, iter([]))  # the freed slot is usable again
    release_next()


def test_a_wait_gives_its_slot_back_with_the_answers_first_read() -> None:
    r = fakeredis.FakeRedis()
    plog = ProcessLog(r)
    plog.register(SB.sandbox_id, "p1", "echo 22", SB.tenant_id)
    plog.append(SB.sandbox_id, "p1", [Piece(STDOUT, b"22\n", 1)])
    plog.finish(SB.sandbox_id, "p1", 0)
    sandboxes = Sandboxes(Settings(tenant_max_waits=1), r, celery=None)  # type: ignore[arg-type]
    with sandboxes.waiting(SB) as held:
        assert sandboxes.slots.count(WAITS, SB.tenant_id) == 1
        snap = sandboxes.snapshot(SB, "p1", held)
        assert sandboxes.slots.count(WAITS, SB.tenant_id) == 0  # given back with the read
        with sandboxes.waiting(SB):  # so the next wait may start while this one answers
            pass
    assert snap.complete and snap.size == 3
    lines = [line for entry in sandboxes.output(SB, "p1", snap)() for line in entry.lines]
    assert lines == ["22"]
    assert sandboxes.slots.count(WAITS, SB.tenant_id) == 0  # and not given back twice
