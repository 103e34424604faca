"""A host not heard from for PADDOCK_HOST_DEAD_AFTER has its sandboxes marked lost by the
control worker (on fakeredis); a host only restarting (heartbeat a moment ago) keeps them."""

from __future__ import annotations

import fakeredis
import pytest
from celery import Celery

from shared import keys
from shared.output import ProcessLog
from shared.pools import Pools
from shared.settings import Settings
from shared.store import Store
from workers.control import reaper

pytest.importorskip("lupa", reason="fakeredis runs Lua scripts only with lupa installed")


def _host_with_a_sandbox(r: fakeredis.FakeRedis, host: str, sandbox_id: str) -> Store:
    store = Store(r)
    store.heartbeat(host, 10, ["Bash"], ttl=60)
    store.place(sandbox_id, "t1", "Bash", 5, 3600)
    store.set_sandbox_status(sandbox_id, "running")
    return store


def test_a_silent_host_loses_its_sandboxes_and_their_waits_end() -> None:
    r = fakeredis.FakeRedis()
    store = _host_with_a_sandbox(r, "h1", "sb1")
    plog = ProcessLog(r)
    plog.register("sb1", "p1", "sleep 600", "t1")
    settings = Settings(host_dead_after=30)
    r.delete(keys.host("h1"))  # the heartbeat expired
    assert reaper.lose_dead_hosts(r, settings) == []  # heard from a moment ago
    r.hset(keys.hosts_seen(), "h1", 1.0)  # ... long ago
    assert reaper.lose_dead_hosts(r, settings) == ["sb1"]
    assert store.raw_sandbox("sb1")["status"] == "lost"
    assert "heartbeat" in store.raw_sandbox("sb1")["lost_reason"]
    assert store.host_sandbox_ids("h1") == [] and store.tenant_sandbox_ids("t1") == []
    assert plog.info("sb1", "p1")["status"] not in ("starting", "running")
    assert reaper.lose_dead_hosts(r, settings) == []  # once


def test_a_live_host_or_one_without_sandboxes_is_left_alone() -> None:
    r = fakeredis.FakeRedis()
    store = _host_with_a_sandbox(r, "h1", "sb1")
    r.hset(keys.hosts_seen(), "h1", 1.0)  # an old last-seen, but the heartbeat is live
    assert reaper.lose_dead_hosts(r, Settings(host_dead_after=30)) == []
    assert store.raw_sandbox("sb1")["status"] == "running"


def test_an_unreadable_last_seen_counts_as_now_and_is_mended() -> None:
    r = fakeredis.FakeRedis()
    store = _host_with_a_sandbox(r, "h1", "sb1")
    r.delete(keys.host("h1"))
    r.hset(keys.hosts_seen(), "h1", "garbage")
    assert store.silent_hosts(since=1e12) == []  # not a crash, not lost on garbage
    assert float(r.hget(keys.hosts_seen(), "h1") or 0) > 1.0  # rewritten: lost in due time
    assert store.silent_hosts(since=1e12) == ["h1"]


def test_a_dead_hosts_warm_sandboxes_leave_their_pools_and_are_purged() -> None:
    r = fakeredis.FakeRedis()
    store = _host_with_a_sandbox(r, "h1", "sb1")
    pools = Pools(r)
    assert pools.reserve("h1", 10, "Bash", "internet", "w1")
    assert pools.ready("h1", "Bash", "internet", "w1")
    assert pools.reserve("h1", 10, "Bash", "internet", "w2")  # still warming
    r.delete(keys.host("h1"))
    r.hset(keys.hosts_seen(), "h1", 1.0)
    assert reaper.lose_dead_hosts(r, Settings(host_dead_after=30)) == ["sb1"]  # not warm ones
    assert pools.all_ready("h1") == set() and pools.ready_ids("h1", "Bash", "internet") == set()
    assert not r.exists(keys.warm("h1"), keys.warm_kind("h1", "Bash", "internet"))
    assert {store.raw_sandbox(w)["status"] for w in ("w1", "w2")} == {"deleting"}
    reaper.reap(Celery(broker="memory://"), r, Settings(host_dead_after=30))  # host not alive
    assert store.raw_sandbox("w1") == {} and store.raw_sandbox("w2") == {}
    assert store.host_sandbox_ids("h1") == []  # no slot left held, no key left
