"""The writers' retry across a Redis restart (persist) and the pump's buffer of writes that
wait for Redis (Pending): pure logic, with a fake clock."""

from __future__ import annotations

import pytest
import redis

from shared.output import Line
from shared.redisconn import Backoff, persist
from workers.runner import MAX_PENDING, Pending


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_persist_retries_until_redis_is_back_with_growing_delays() -> None:
    clock = Clock()
    calls = []

    def write() -> str:
        calls.append(clock.now)
        if len(calls) < 5:
            raise redis.ConnectionError("Connection refused")
        return "stored"

    got = persist(write, "test", Backoff(0.1, 0.4, 60), sleep=clock.sleep, clock=lambda: clock.now)
    assert got == "stored"
    assert clock.slept == [0.1, 0.2, 0.4, 0.4]


def test_persist_gives_up_after_its_bound_with_the_redis_error() -> None:
    clock = Clock()

    def write() -> None:
        raise redis.BusyLoadingError("loading")  # a ConnectionError: Redis reads its AOF

    with pytest.raises(redis.BusyLoadingError):
        persist(write, "test", Backoff(1, 4, 30), sleep=clock.sleep, clock=lambda: clock.now)
    assert 26 <= clock.now <= 30


def test_persist_does_not_retry_other_errors() -> None:
    clock = Clock()

    def write() -> None:
        raise redis.ResponseError("WRONGTYPE")

    with pytest.raises(redis.ResponseError):
        persist(write, "test", sleep=clock.sleep, clock=lambda: clock.now)
    assert clock.slept == []


def _line(text: str) -> list[Line]:
    return [Line("o", text, 0)]


def test_pending_keeps_order_seq_and_size() -> None:
    p = Pending()
    p.add(_line("1"), 2, budgeted=True)
    p.add(_line("2"), 2, budgeted=True)
    p.add(_line("note"), 0, budgeted=False)
    seqs = [w.seq for w in p.writes]
    # Room between seqs for the writes a budget refusal adds (fit, marker).
    assert seqs == [4, 8, 12] and p.size == 4
    p.done()
    assert [w.lines[0].text for w in p.writes] == ["2", "note"] and p.size == 2


def test_pending_backs_off_while_down_and_resets_when_back() -> None:
    p = Pending()
    p.add(_line("1"), 2, budgeted=True)
    assert p.failed(10.0) == 0.0
    first = p.retry_at - 10.0
    assert p.failed(11.0) == 1.0
    assert p.retry_at - 11.0 > first  # the wait grows
    p.done()
    assert p.retry_at == 0.0


def test_pending_is_bounded() -> None:
    p = Pending()
    p.add(_line("x"), MAX_PENDING, budgeted=True)
    assert not p.full
    p.add(_line("y"), 1, budgeted=True)
    assert p.full
    assert p.drop() == MAX_PENDING + 1 and not p.writes and p.size == 0
