"""Warm pools in Redis (shared/pools.py) and placement's claim (shared/store.py _PLACE), on
fakeredis: a claim pops exactly one warm sandbox of the template and mode, never twice; a
host with one wins; a full host gives one back to a cold create; a warm sandbox is nobody's."""

from __future__ import annotations

import fakeredis
import pytest

from shared import keys
from shared.egress import NetworkPolicy
from shared.errors import ConfigError, NoCapacity, SandboxNotFound
from shared.pools import Pools, parse_pool_sizes
from shared.settings import Settings
from shared.store import Store

pytest.importorskip("lupa", reason="fakeredis runs Lua scripts only with lupa installed")

INTERNET = NetworkPolicy(mode="internet")
NONE = NetworkPolicy(mode="none")


def _warm(r: fakeredis.FakeRedis, host: str, template: str, sandbox_id: str, cap: int = 10) -> None:
    pools = Pools(r)
    assert pools.reserve(host, cap, template, "internet", sandbox_id)
    assert pools.ready(host, template, "internet", sandbox_id)


def _store(r: fakeredis.FakeRedis, *hosts: tuple[str, int]) -> Store:
    store = Store(r)
    for host, cap in hosts:
        store.heartbeat(host, cap, ["Bash", "Python3"], ttl=60)
    return store


def test_pool_sizes_parse_and_refuse_bad_values() -> None:
    assert parse_pool_sizes("Bash=2, Python3=1,Nodejs=0") == {"Bash": 2, "Python3": 1}
    assert parse_pool_sizes("") == parse_pool_sizes("0") == parse_pool_sizes("off") == {}
    for bad in ("Bash", "Bash=-1", "Bash=x", "=2", "Bash=1,Bash=2", "Bash=1000", "a b=1"):
        with pytest.raises(ConfigError, match="PADDOCK_POOL_SIZES"):
            parse_pool_sizes(bad)
    with pytest.raises(ConfigError):
        Settings(pool_sizes="Bash=two")
    assert Settings().pool_sizes  # a small default


def test_a_create_claims_each_warm_sandbox_once_then_starts_cold() -> None:
    r = fakeredis.FakeRedis()
    store = _store(r, ("h1", 10))
    _warm(r, "h1", "Bash", "w1")
    _warm(r, "h1", "Bash", "w2")
    got = [store.place_claim(f"new{i}", "t1", "Bash", 10, 3600, INTERNET) for i in range(3)]
    claimed = sorted(p.sandbox.sandbox_id for p in got if p.warm)
    assert claimed == ["w1", "w2"]  # each once
    cold = [p for p in got if not p.warm]
    assert len(cold) == 1 and cold[0].sandbox.sandbox_id.startswith("new")
    assert Pools(r).all_ready("h1") == set()
    # The claimed record is the tenant's now, in its set, and still holds its host slot.
    sandbox = store.get_sandbox("t1", "w1")
    assert sandbox.status == "creating" and sandbox.network == INTERNET
    assert "pool" not in store.raw_sandbox("w1")
    assert set(store.tenant_sandbox_ids("t1")) == {"w1", "w2", cold[0].sandbox.sandbox_id}
    assert len(store.host_sandbox_ids("h1")) == 3


def test_only_the_same_template_and_mode_is_claimed() -> None:
    r = fakeredis.FakeRedis()
    store = _store(r, ("h1", 10))
    _warm(r, "h1", "Bash", "w1")
    assert not store.place_claim("a", "t1", "Python3", 10, 3600, INTERNET).warm
    assert not store.place_claim("b", "t1", "Bash", 10, 3600, NONE).warm  # another mode
    assert not store.place("c", "t1", "Bash", 10, 3600, INTERNET).sandbox_id.startswith("w")
    assert Pools(r).all_ready("h1") == {"w1"}


def test_a_warm_sandbox_is_nobodys_and_counts_on_its_host_only() -> None:
    r = fakeredis.FakeRedis()
    store = _store(r, ("h1", 10))
    _warm(r, "h1", "Bash", "w1")
    for tenant in ("t1", ""):
        with pytest.raises(SandboxNotFound):
            store.get_sandbox(tenant, "w1")
    assert store.tenant_sandbox_ids("t1") == []
    assert store.host_sandbox_ids("h1") == ["w1"]
    # A tenant's quota of 1 is not used by it: the tenant still gets its one sandbox.
    assert store.place_claim("a", "t1", "Bash", 1, 3600, INTERNET).sandbox.sandbox_id == "w1"


def test_a_host_with_a_warm_sandbox_wins_over_a_freer_one() -> None:
    r = fakeredis.FakeRedis()
    store = _store(r, ("h1", 4), ("h2", 30))
    _warm(r, "h1", "Bash", "w1")
    placed = store.place_claim("a", "t1", "Bash", 10, 3600, INTERNET)
    assert placed.warm and placed.sandbox.host_id == "h1"
    assert store.place_claim("b", "t1", "Bash", 10, 3600, INTERNET).sandbox.host_id == "h2"


def test_a_full_host_gives_a_warm_sandbox_back_for_a_cold_create() -> None:
    r = fakeredis.FakeRedis()
    store = _store(r, ("h1", 2))
    _warm(r, "h1", "Python3", "w1")
    _warm(r, "h1", "Python3", "w2")
    assert not Pools(r).reserve("h1", 2, "Bash", "internet", "w3")  # full: no third
    placed = store.place_claim("a", "t1", "Bash", 10, 3600, INTERNET)
    assert not placed.warm and placed.evict in ("w1", "w2")
    assert store.raw_sandbox(placed.evict)["status"] == "deleting"
    assert r.zscore(keys.expiry_index(), placed.evict) is not None  # the reaper retries
    assert sorted(store.host_sandbox_ids("h1")) == sorted(
        ["a", ({"w1", "w2"} - {placed.evict}).pop()]
    )
    # Taken out already: the pool's own removal leaves it to the eviction.
    assert not Pools(r).take("h1", "Python3", "internet", placed.evict)
    # Full of tenants' sandboxes: nothing to give back.
    store.place_claim("b", "t1", "Bash", 10, 3600, INTERNET)
    with pytest.raises(NoCapacity):
        store.place_claim("c", "t1", "Bash", 10, 3600, INTERNET)


def test_a_claimed_sandbox_is_not_taken_by_the_pool_and_a_taken_one_not_claimed() -> None:
    r = fakeredis.FakeRedis()
    store = _store(r, ("h1", 10))
    pools = Pools(r)
    _warm(r, "h1", "Bash", "w1")
    _warm(r, "h1", "Bash", "w2")
    assert store.place_claim("a", "t1", "Bash", 10, 3600, INTERNET).sandbox.sandbox_id in (
        "w1",
        "w2",
    )
    claimed = store.tenant_sandbox_ids("t1")[0]
    other = ({"w1", "w2"} - {claimed}).pop()
    assert not pools.take("h1", "Bash", "internet", claimed)  # a tenant's now
    assert not pools.ready("h1", "Bash", "internet", claimed)
    assert pools.take("h1", "Bash", "internet", other)
    assert not store.place_claim("b", "t1", "Bash", 10, 3600, INTERNET).warm
