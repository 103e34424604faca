"""Directory watches' logic without a sandbox: the stream entries as a reader decodes them
(shared/watches.py decode), the Redis layout's bounds and lifetime on fakeredis (its Lua runs
through lupa), the host's event names and rate (workers/host/watches.py), and the host's
registry draining a scripted watch into Redis."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator

import fakeredis
import pytest

from shared import keys
from shared.errors import PathNotFound, QuotaExceeded, SandboxError
from shared.settings import Settings
from shared.watches import (
    END,
    FAIL,
    MAX_NAME,
    OVERFLOW,
    Entry,
    Watches,
    WatchEvent,
    WatchLimits,
    decode,
    valid_id,
    watcher_id,
)
from web.api.envd.gen.filesystem_pb import EventType
from web.api.envd.watching import keepalive_interval, to_proto
from workers.backends.base import FsEvent, WatchBroken
from workers.host.watches import TokenBucket, WatchRegistry, relative_name

pytest.importorskip("lupa", reason="fakeredis runs Lua scripts only with lupa installed")


def _e(seq: int, kind: str, name: str = "", is_dir: bool = False) -> tuple[str, dict[str, str]]:
    return f"{seq}-0", {"s": str(seq), "k": kind, "n": name, "d": "1" if is_dir else "0"}


# -- decode ---------------------------------------------------------------------------------------
def test_decode_events_in_order_with_directories() -> None:
    batch = decode([_e(1, "create", "a"), _e(2, "write", "a"), _e(3, "create", "d", True)], 0)
    assert batch.events == [
        WatchEvent("create", "a"),
        WatchEvent("write", "a"),
        WatchEvent("create", "d", True),
    ]
    assert batch.seq == 3 and batch.ended is None


def test_decode_gaps_overflow_and_bad_entries_become_one_overflow_each_run() -> None:
    entries = [
        _e(5, "create", "a"),  # after seq 2: 3 and 4 were trimmed unread
        _e(6, OVERFLOW, "17"),
        _e(7, "bogus", "x"),  # not a kind: lost
        ("8-0", {"s": "x"}),  # malformed: lost
        _e(8, "create", "b" * (MAX_NAME + 1)),  # too long: lost
        _e(9, "remove", "a"),
        _e(9, "remove", "a"),  # a retried write: skipped
    ]
    batch = decode(entries, 2)
    assert batch.events == [
        WatchEvent(OVERFLOW),
        WatchEvent("create", "a"),
        WatchEvent(OVERFLOW),
        WatchEvent("remove", "a"),
    ]
    assert batch.seq == 9


def test_decode_stops_at_the_end() -> None:
    batch = decode([_e(1, "create", "a"), _e(2, END, "gone"), _e(3, "create", "late")], 0)
    assert batch.events == [WatchEvent("create", "a")]
    assert batch.ended == Entry(2, END, "gone") and batch.seq == 2


def test_watcher_ids() -> None:
    new = watcher_id()
    assert valid_id(new) and new != watcher_id()
    for bad in ("", "x" * 24, new + "0", "../" + new[3:], new.upper()):
        assert not valid_id(bad)


# -- host-side pure logic -------------------------------------------------------------------------
def test_relative_names() -> None:
    assert relative_name("/home/user/w", "/home/user/w/a") == "a"
    assert relative_name("/home/user/w/", "/home/user/w/sub/b") == "sub/b"
    assert relative_name("/", "/etc") == "etc"
    assert relative_name("/home/user/w", "/home/user/wx/a") is None  # a sibling, not under it
    assert relative_name("/home/user/w", "/home/user/w") is None
    assert relative_name("/home/user/w", "/home/user/w/") is None
    assert relative_name("/w", "/w/" + "n" * MAX_NAME) == "n" * MAX_NAME
    assert relative_name("/w", "/w/" + "n" * (MAX_NAME + 1)) is None
    assert relative_name("/w", "/w/a\x00b") is None
    assert relative_name("/w", "/w/\udcff") == "\ufffd" or relative_name("/w", "/w/\udcff") == "?"


def test_token_bucket() -> None:
    bucket = TokenBucket(10.0, 3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.05) is False  # half a token
    assert bucket.take(0.1) is True
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]  # burst caps


# -- the Redis layout -----------------------------------------------------------------------------
@pytest.fixture
def r() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


def _register(
    w: Watches, wid: str, sandbox: str = "sb1", tenant: str = "t1", path: str = "/w"
) -> None:
    w.register(wid, sandbox, tenant, "host-a", path, True)


def test_limits_come_from_the_settings() -> None:
    assert WatchLimits.of(Settings()) == WatchLimits()  # the same defaults
    env = {
        "PADDOCK_SANDBOX_MAX_WATCHERS": "2",
        "PADDOCK_TENANT_MAX_WATCHERS": "3",
        "PADDOCK_HOST_MAX_WATCHERS": "4",
        "PADDOCK_WATCH_EVENTS_PER_SECOND": "5.5",
        "PADDOCK_WATCH_MAX_EVENTS": "6",
    }
    assert WatchLimits.of(Settings.from_env(env)) == WatchLimits(2, 3, 4, 5.5, 6)


def test_register_counts_per_sandbox_and_tenant(r: fakeredis.FakeRedis) -> None:
    w = Watches(r, WatchLimits(sandbox_max=2, tenant_max=3))
    for i in range(2):
        _register(w, f"a{i}")
    with pytest.raises(QuotaExceeded, match="per sandbox"):
        _register(w, "a2")
    _register(w, "b0", sandbox="sb2")
    with pytest.raises(QuotaExceeded, match="per tenant"):
        _register(w, "b1", sandbox="sb2")
    _register(w, "c0", tenant="t2", sandbox="sb3")  # another tenant
    w.remove("a0")  # frees its places
    _register(w, "a3")
    record = w.record("a3")
    assert record is not None
    assert (record.sandbox_id, record.tenant_id, record.path, record.recursive) == (
        "sb1",
        "t1",
        "/w",
        True,
    )
    assert record.state == "starting" and r.ttl(keys.watch("a3")) > 0


def test_write_consume_and_bounds(r: fakeredis.FakeRedis) -> None:
    w = Watches(r)
    cap = w.limits.max_events
    _register(w, "w1")
    assert w.write("w1", [Entry(1, "create", "a"), Entry(2, "write", "a")])
    record = w.touch("w1", "sb1", "t1")
    assert record is not None and record.state == "running" and record.wseq == 2
    assert not record.stale
    got = w.consume("w1")
    assert got is not None and [e.name for e in got.events] == ["a", "a"]
    again = w.consume("w1")  # consumed: nothing twice
    assert again is not None and again.events == [] and again.seq == 2
    assert r.xlen(keys.watch_events("w1")) <= 1  # what was read is dropped
    # A flood: the stream keeps its cap, the reader sees the gap as one overflow.
    flood = [Entry(3 + i, "create", f"f{i}") for i in range(cap + 50)]
    assert w.write("w1", flood)
    assert r.xlen(keys.watch_events("w1")) == cap
    got = w.consume("w1")
    assert got is not None and got.events[0] == WatchEvent(OVERFLOW)
    assert len(got.events) == cap + 1 and got.events[-1].name == f"f{cap + 49}"
    # Ended: no more writes; the end comes once.
    assert w.write("w1", [Entry(cap + 53, FAIL, "broke")], "broke")
    assert not w.write("w1", [Entry(cap + 54, "create", "late")])
    got = w.consume("w1")
    assert got is not None and got.ended is not None and got.ended.kind == FAIL
    record = w.record("w1")
    assert record is not None and (record.state, record.reason) == ("ended", "broke")


def test_read_streams_and_trims(r: fakeredis.FakeRedis) -> None:
    w = Watches(r)
    _register(w, "w1")
    w.write("w1", [Entry(1, "create", "a")])
    after, batch = w.read("w1", "0-0", 0, 10)
    assert batch.events == [WatchEvent("create", "a")] and batch.seq == 1
    w.write("w1", [Entry(2, "remove", "a")])
    after, batch = w.read("w1", after, batch.seq, 10)
    assert batch.events == [WatchEvent("remove", "a")]
    assert r.xlen(keys.watch_events("w1")) == 1


def test_removed_or_foreign_watchers(r: fakeredis.FakeRedis) -> None:
    w = Watches(r)
    _register(w, "w1")
    w.write("w1", [Entry(1, "create", "a")])
    r.pexpire(keys.watch("w1"), 5000)
    for sandbox, tenant in (("sb2", "t1"), ("sb1", "t2"), ("", "")):
        assert w.touch("w1", sandbox, tenant) is None  # not theirs: not even its expiry moves
    assert r.pttl(keys.watch("w1")) <= 5000
    assert w.touch("w1", "sb1", "t1") is not None and r.pttl(keys.watch("w1")) > 5000
    w.remove("w1")
    assert not w.write("w1", [Entry(2, "create", "b")])  # the host stops; no stream remade
    assert w.touch("w1", "sb1", "t1") is None and w.consume("w1") is None
    assert not r.exists(keys.watch("w1"), keys.watch_events("w1"))
    assert r.zcard(keys.sandbox_watches("sb1")) == 0 == r.zcard(keys.tenant_watches("t1"))


def test_forget_sandbox_leaves_nothing(r: fakeredis.FakeRedis) -> None:
    w = Watches(r)
    for wid in ("w1", "w2"):
        _register(w, wid)
        w.write(wid, [Entry(1, "create", "a")])
    _register(w, "other", sandbox="sb2")
    w.forget_sandbox("sb1")
    left = {k.decode() for k in r.keys("*")}
    assert left == {
        keys.watch("other"),
        keys.sandbox_watches("sb2"),
        keys.tenant_watches("t1"),
    }


def test_stale_when_the_host_stops_beating(r: fakeredis.FakeRedis) -> None:
    w = Watches(r)
    _register(w, "w1")
    w.write("w1")
    r.hset(keys.watch("w1"), "beat", 1)  # long ago
    record = w.touch("w1", "sb1", "t1")
    assert record is not None and record.stale


# -- the host's registry --------------------------------------------------------------------------
class ScriptedWatch:
    """Events the test feeds; None ends the watch (the directory went away); an exception
    is raised from ``events``."""

    def __init__(self) -> None:
        self.feed: queue.Queue[FsEvent | BaseException | None] = queue.Queue()
        self.ended = False
        self.closed = threading.Event()

    def events(self, timeout: float) -> Iterator[FsEvent]:
        while not self.ended:
            try:
                item = self.feed.get(timeout=timeout)
            except queue.Empty:
                return
            if item is None:
                self.ended = True
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self.ended = True
        self.closed.set()


class WatchBackend:
    def __init__(self) -> None:
        self.watches: list[ScriptedWatch] = []
        self.missing: set[str] = set()

    def watch(self, sandbox_id: str, path: str, recursive: bool) -> ScriptedWatch:
        if path in self.missing:
            raise PathNotFound(f"no such file or directory: {path}")
        self.watches.append(ScriptedWatch())
        return self.watches[-1]


def _registry(
    r: fakeredis.FakeRedis, limits: WatchLimits | None = None
) -> tuple[WatchRegistry, WatchBackend, Watches]:
    backend = WatchBackend()
    log = Watches(r, limits)
    return WatchRegistry(backend, log, "host-a"), backend, log  # type: ignore[arg-type]


def _until(log: Watches, wid: str, want: int) -> list[WatchEvent]:
    """Events consumed until ``want`` came (or the watch ended); 10 s at most."""
    got: list[WatchEvent] = []
    deadline = time.monotonic() + 10
    while len(got) < want and time.monotonic() < deadline:
        batch = log.consume(wid)
        assert batch is not None
        got += batch.events
        if batch.ended is not None:
            got.append(WatchEvent(batch.ended.kind, batch.ended.name))
            break
        time.sleep(0.02)
    return got


def test_registry_drains_names_and_ends(r: fakeredis.FakeRedis) -> None:
    reg, backend, log = _registry(r)
    _register(log, "w1", path="/home/user/w")
    reg.start("sb1", "w1", "/home/user/w", True)
    watch = backend.watches[0]
    for e in [
        FsEvent("create", "/home/user/w/a", False),
        FsEvent("create", "/etc/passwd", False),  # not under the directory: dropped
        FsEvent("create", "/home/user/w/sub", True),
        FsEvent("write", "/home/user/w/sub/b", False),
    ]:
        watch.feed.put(e)
    got = _until(log, "w1", 3)
    assert got[:3] == [
        WatchEvent("create", "a"),
        WatchEvent("create", "sub", True),
        WatchEvent(OVERFLOW),
    ] or got[:4] == [
        WatchEvent("create", "a"),
        WatchEvent("create", "sub", True),
        WatchEvent("write", "sub/b"),
        WatchEvent(OVERFLOW),
    ]
    watch.feed.put(None)  # the directory went away
    rest = _until(log, "w1", 10)
    assert rest[-1] == WatchEvent(END, "the directory was removed or moved")
    assert watch.closed.wait(5) and reg.count() == 0


def test_registry_rate_and_removal(r: fakeredis.FakeRedis) -> None:
    reg, backend, log = _registry(r, WatchLimits(rate=0.001, max_events=5))
    _register(log, "w1")
    reg.start("sb1", "w1", "/w", False)
    watch = backend.watches[0]
    for i in range(50):
        watch.feed.put(FsEvent("create", f"/w/{i}", False))
    got = _until(log, "w1", 5)
    assert [e.name for e in got] == ["0", "1", "2", "3", "4"]
    log.remove("w1")  # RemoveWatcher: the host stops within its tick
    assert watch.closed.wait(5)
    assert not r.exists(keys.watch("w1"), keys.watch_events("w1"))


def test_registry_rewatches_a_broken_channel_and_resumes(r: fakeredis.FakeRedis) -> None:
    reg, backend, log = _registry(r)
    _register(log, "w1")
    with pytest.raises(SandboxError):
        reg.start("sb1", "nope", "/w", False)  # no record: the web gave up
    reg.start("sb1", "w1", "/w", False)
    reg.start("sb1", "w1", "/w", False)  # a redelivery: the same watch
    assert len(backend.watches) == 1
    backend.watches[0].feed.put(FsEvent("create", "/w/a", False))
    backend.watches[0].feed.put(WatchBroken("the channel dropped"))
    deadline = time.monotonic() + 10
    while len(backend.watches) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    backend.watches[1].feed.put(FsEvent("create", "/w/b", False))
    got = _until(log, "w1", 3)
    assert got == [WatchEvent("create", "a"), WatchEvent(OVERFLOW), WatchEvent("create", "b")]
    # A new worker: the watch is taken up again, after an overflow, its seq going on.
    record = log.record("w1")
    assert record is not None
    fresh, backend2, _ = _registry(r)
    reg.stop("w1")
    assert backend.watches[1].closed.wait(5)
    fresh.backend = backend2  # type: ignore[assignment]
    fresh.resume("sb1")
    assert len(backend2.watches) == 1
    backend2.watches[0].feed.put(FsEvent("remove", "/w/b", False))
    assert _until(log, "w1", 2) == [WatchEvent(OVERFLOW), WatchEvent("remove", "b")]
    # One whose directory went away meanwhile ends.
    fresh.stop("w1")
    deadline = time.monotonic() + 10
    while fresh.count() and time.monotonic() < deadline:
        time.sleep(0.02)
    backend2.missing.add("/w")
    fresh.resume("sb1")
    assert _until(log, "w1", 5)[-1].kind == END


# -- the envd wire --------------------------------------------------------------------------------
def test_events_on_the_envd_wire() -> None:
    assert to_proto(WatchEvent("rename", "sub/a")).type == EventType.RENAME
    assert to_proto(WatchEvent("rename", "sub/a")).name == "sub/a"
    lost = to_proto(WatchEvent(OVERFLOW))  # the SDKs skip an unspecified event
    assert (lost.type, lost.name) == (EventType.UNSPECIFIED, "")
    assert keepalive_interval({"keepalive-ping-interval": "2"}) == 2.0
    for raw in ("50", "", "nan", "inf", "x", "-3"):
        assert 1.0 <= keepalive_interval({"keepalive-ping-interval": raw}) <= 5.0
    assert keepalive_interval({}) == 5.0
