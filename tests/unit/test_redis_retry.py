"""The writers' retry across a Redis restart (persist) and the pump's buffer of writes that
wait for Redis (Pending): pure logic, with a fake clock."""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, cast

import pytest
import redis

from shared.output import Piece
from shared.redisconn import Backoff, persist
from shared.settings import Settings
from workers.host import runner
from workers.host.runner import (
    MAX_PENDING,
    WRITE_OVERHEAD,
    HostPending,
    Pending,
    ProcessManager,
    Running,
)


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


def _line(text: str) -> list[Piece]:
    return [Piece("o", text.encode(), 0)]


def test_pending_keeps_order_seq_and_size() -> None:
    p = Pending()
    p.add(_line("1"), 2, budgeted=True)
    p.add(_line("2"), 2, budgeted=True)
    p.add(_line("note"), 0, budgeted=False)
    seqs = [w.seq for w in p.writes]
    # Room between seqs for the writes a budget refusal adds (fit, marker).
    assert seqs == [4, 8, 12] and p.size == 4
    p.done()
    assert [w.pieces[0].data for w in p.writes] == [b"2", b"note"] and p.size == 2


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


class DownRedis:
    """The ProcessLog a pump writes to, down until ``back`` is set; records what it stored."""

    def __init__(self) -> None:
        self.back = threading.Event()
        self.stored: dict[str, list[str]] = {}
        self._lock = threading.Lock()

    def append_budgeted(
        self, sid: str, pid: str, tenant: str, pieces: list[Piece], size: int, *_: Any, seq: int = 0
    ) -> None:
        if not self.back.is_set():
            raise redis.ConnectionError("Connection refused")
        with self._lock:
            self.stored.setdefault(pid, []).extend(x.data.decode() for x in pieces)


def test_pumps_together_never_hold_more_than_the_host_cap_while_redis_is_down(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cap, chunk, pumps, chunks = 1 << 20, 64 << 10, 40, 12  # 15 chunks fit, 480 are read
    plog = DownRedis()
    pm = ProcessManager(cast(Any, None), cast(Any, plog), Settings())
    pm.pending = HostPending(cap)
    waiting = threading.Semaphore(0)  # one release per pump that stopped reading, or ended
    peak = [0]

    def waits_for_redis(write: Callable[[], Any], what: str) -> Any:
        peak[0] = max(peak[0], pm.pending.size)
        waiting.release()
        plog.back.wait()
        return write()

    monkeypatch.setattr(runner, "persist", waits_for_redis)
    handle = SimpleNamespace(poll_every=lambda _: None)
    runs = [
        Running("s", f"p{i}", "t", cast(Any, handle), pending=Pending(pm.pending))
        for i in range(pumps)
    ]

    def pump(run: Running) -> None:
        for n in range(chunks):
            pm._store_budgeted(run, "o", f"{run.process_id}-{n}".encode().ljust(chunk))
            peak[0] = max(peak[0], pm.pending.size)
        if plog.back.is_set():
            return
        waiting.release()  # read all it had without stopping: its writes are all held

    threads = [threading.Thread(target=pump, args=(run,)) for run in runs]
    for t in threads:
        t.start()
    for _ in runs:
        assert waiting.acquire(timeout=10)
    # Every pump read until it had to stop: what they hold for Redis is within the cap, and
    # each holds at most the one write it stopped on besides.
    assert pm.pending.size <= cap and peak[0] <= cap
    held = sum(w.size + WRITE_OVERHEAD for run in runs for w in run.pending.writes if w.held)
    assert held == pm.pending.size
    assert all(run.pending.unheld <= 1 for run in runs)
    assert sum(run.pending.unheld for run in runs) >= pumps - cap // (chunk + WRITE_OVERHEAD)

    plog.back.set()
    for t in threads:
        t.join(10)
    for run in runs:
        pm._flush(run, wait=True)  # a pump that never stopped stores its rest at its end
    # Redis is back: every chunk stored once, in order, and the host's room all given back.
    assert plog.stored == {
        run.process_id: [f"{run.process_id}-{n}".ljust(chunk) for n in range(chunks)]
        for run in runs
    }
    assert pm.pending.size == 0 and peak[0] <= cap


def test_dropped_writes_give_their_room_back_to_the_host() -> None:
    host = HostPending(10 + 2 * WRITE_OVERHEAD)
    a, b = Pending(host), Pending(host)
    a.add(_line("x"), 6, budgeted=True)
    b.add(_line("y"), 6, budgeted=True)  # no room left: not held, and b stops reading
    assert host.size == 6 + WRITE_OVERHEAD and not a.full and b.full
    assert b.drop() == 6 and host.size == 6 + WRITE_OVERHEAD and not b.full
    assert a.drop() == 6 and host.size == 0


def test_a_process_printing_a_byte_at_a_time_keeps_few_writes() -> None:
    # Each write's objects outweigh its byte: the count is capped too, and the host is charged
    # for them.
    host = HostPending()
    p = Pending(host)
    while not p.full:
        p.add(_line(""), 1, budgeted=True)
    assert len(p.writes) <= MAX_PENDING // WRITE_OVERHEAD + 1
    assert host.size == len(p.writes) * (1 + WRITE_OVERHEAD)
