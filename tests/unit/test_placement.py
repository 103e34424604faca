"""The placement index (shared/placement.py) on fakeredis: every script that changes a host's
slots leaves its entry equal to its true free count; a drifted entry is mended by placement
and by the next heartbeat; a dead host drops out and comes back with its heartbeat; two
creates cannot take one last slot; and a placement's Redis work does not grow with hosts."""

from __future__ import annotations

import threading

import fakeredis
import pytest
from celery import Celery

from shared import keys, placement
from shared.egress import NetworkPolicy
from shared.errors import EgressUnavailable, NoCapacity, ValidationFailed
from shared.pools import Pools
from shared.redisio import text
from shared.settings import Settings
from shared.store import Store
from web.sandboxes import Sandboxes

pytest.importorskip("lupa", reason="fakeredis runs Lua scripts only with lupa installed")

INTERNET = NetworkPolicy(mode="internet")
NONE = NetworkPolicy(mode="none")


def _score(r: fakeredis.FakeRedis, host: str) -> float | None:
    """The host's entry in the index (None: not in it)."""
    gid = r.hget(keys.hosts_group(), host)
    return None if gid is None else r.zscore(keys.place_group(text(gid)), host)


def _true_free(r: fakeredis.FakeRedis, host: str) -> int:
    cap = int(r.hget(keys.host(host), "capacity") or 0)
    return cap - int(r.scard(keys.host_sandboxes(host))) + int(r.scard(keys.warm(host)))


def _exact(r: fakeredis.FakeRedis, *hosts: str) -> None:
    for host in hosts:
        assert _score(r, host) == _true_free(r, host), host


def _store(r: fakeredis.FakeRedis, *hosts: tuple[str, int]) -> Store:
    store = Store(r)
    for host, cap in hosts:
        store.heartbeat(host, cap, ["Bash", "Python3"], ttl=60)
    return store


def test_the_prefixes_the_scripts_build_are_the_keys() -> None:
    assert keys.host_sandboxes("h") == keys.host("h") + ":sandboxes"
    assert keys.warm_kind("h", "Bash", "none") == keys.warm("h") + ":Bash:none"
    assert keys.place_warm("Bash:none") == keys.place_warm("") + "Bash:none"


def test_every_slot_change_keeps_the_entry_exact() -> None:
    r = fakeredis.FakeRedis()
    store = _store(r, ("h1", 5), ("h2", 3))
    _exact(r, "h1", "h2")
    assert _score(r, "h1") == 5
    for i in range(4):
        freest = max(_true_free(r, "h1"), _true_free(r, "h2"))
        assert _true_free(r, store.place(f"s{i}", "t1", "Bash", 10, 3600).host_id) == freest - 1
        _exact(r, "h1", "h2")
    store.set_sandbox_status("s0", "running")
    assert store.mark_lost("s0", "gone", 60)
    _exact(r, "h1", "h2")
    store.purge_sandbox("s1")
    _exact(r, "h1", "h2")
    pools = Pools(r)
    assert pools.reserve("h2", 3, "Bash", "none", "w1")
    _exact(r, "h2")
    assert pools.ready("h2", "Bash", "none", "w1")
    _exact(r, "h2")
    assert pools.take("h2", "Bash", "none", "w1")
    _exact(r, "h2")
    store.purge_sandbox("w1")
    _exact(r, "h1", "h2")


def test_a_drifted_entry_is_mended_by_placement_and_by_the_heartbeat() -> None:
    r = fakeredis.FakeRedis()
    store = _store(r, ("h1", 4), ("h2", 6))
    # Sandboxes written behind the scripts' back (a crash between two writes, say): h2 is
    # full in truth, its entry still says 6 free.
    r.sadd(keys.host_sandboxes("h2"), *[f"x{i}" for i in range(6)])
    assert _score(r, "h2") == 6
    # Placement reads h2 first, finds it full, mends it and takes h1.
    assert store.place("a", "t1", "Bash", 10, 3600).host_id == "h1"
    assert _score(r, "h2") == 0
    _exact(r, "h1", "h2")
    # The other way: slots freed behind its back leave h2's entry too low; its heartbeat
    # rewrites it from its sets.
    r.delete(keys.host_sandboxes("h2"))
    assert _score(r, "h2") == 0
    store.heartbeat("h2", 6, ["Bash", "Python3"], ttl=60)
    assert _score(r, "h2") == 6
    assert store.place("b", "t1", "Bash", 10, 3600).host_id == "h2"


def test_a_dead_host_drops_out_and_comes_back_with_its_heartbeat() -> None:
    r = fakeredis.FakeRedis()
    store = _store(r, ("h1", 2), ("h2", 9))
    r.delete(keys.host("h2"))  # its heartbeat expired
    assert store.place("a", "t1", "Bash", 10, 3600).host_id == "h1"
    assert _score(r, "h2") is None  # pruned by the placement that read it
    store.place("b", "t1", "Bash", 10, 3600)
    with pytest.raises(NoCapacity):
        store.place("c", "t1", "Bash", 10, 3600)
    store.heartbeat("h2", 9, ["Bash", "Python3"], ttl=60)
    assert store.place("c", "t1", "Bash", 10, 3600).host_id == "h2"
    # A host that stops leaves at once; a full dead one leaves when its sandboxes are lost.
    store.host_down("h2")
    assert _score(r, "h2") is None
    r.delete(keys.host("h1"))
    store.set_sandbox_status("a", "running")
    assert store.mark_lost("a", "its host died", 60)
    assert _score(r, "h1") is None
    with pytest.raises(NoCapacity):
        store.place("d", "t1", "Bash", 10, 3600)


def test_a_host_that_changes_its_templates_or_egress_moves_group() -> None:
    r = fakeredis.FakeRedis()
    store = _store(r, ("h1", 4))
    store.heartbeat("h1", 4, ["Python3"], ttl=60)  # Bash removed there
    with pytest.raises(NoCapacity):
        store.place("a", "t1", "Bash", 10, 3600)
    assert not store.offered("Bash")  # its old group, empty, was pruned by that placement
    assert store.place("a", "t1", "Python3", 10, 3600).host_id == "h1"
    store.heartbeat("h1", 4, ["Python3"], ttl=60, egress="no iptables")
    with pytest.raises(EgressUnavailable, match="h1: no iptables"):
        store.place("b", "t1", "Python3", 10, 3600, INTERNET)
    assert store.place("b", "t1", "Python3", 10, 3600, NONE).host_id == "h1"
    store.heartbeat("h1", 4, ["Python3"], ttl=60)
    assert store.place("c", "t1", "Python3", 10, 3600, INTERNET).host_id == "h1"
    assert r.hget(keys.hosts_group(), "h1") == placement.group_id(["Python3"], "ok").encode()


def test_two_creates_cannot_both_take_the_last_slot() -> None:
    server = fakeredis.FakeServer()
    _store(fakeredis.FakeRedis(server=server), ("h1", 3))
    Store(fakeredis.FakeRedis(server=server)).place("first", "t0", "Bash", 10, 3600)
    Store(fakeredis.FakeRedis(server=server)).place("second", "t0", "Bash", 10, 3600)
    barrier = threading.Barrier(2)
    results: dict[str, str] = {}

    def create(name: str) -> None:
        store = Store(fakeredis.FakeRedis(server=server))
        barrier.wait()
        try:
            results[name] = store.place(name, "t" + name, "Bash", 10, 3600).host_id
        except NoCapacity:
            results[name] = "full"

    threads = [threading.Thread(target=create, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(results.values()) == ["full", "h1"]
    r = fakeredis.FakeRedis(server=server)
    assert r.scard(keys.host_sandboxes("h1")) == 3
    _exact(r, "h1")


def test_warm_hosts_are_found_from_the_kinds_set_and_leave_it_with_their_last() -> None:
    r = fakeredis.FakeRedis()
    store = _store(r, ("h1", 4), ("h2", 30))
    pools = Pools(r)
    kind = keys.place_warm("Bash:internet")
    for w in ("w1", "w2"):
        assert pools.reserve("h1", 4, "Bash", "internet", w)
        assert pools.ready("h1", "Bash", "internet", w)
    assert r.smembers(kind) == {b"h1"}
    # h1 wins over the freer h2: it has a warm one.
    assert store.place_claim("a", "t1", "Bash", 10, 3600, INTERNET).sandbox.sandbox_id in (
        "w1",
        "w2",
    )
    assert r.smembers(kind) == {b"h1"}  # one left
    assert store.place_claim("b", "t1", "Bash", 10, 3600, INTERNET).warm
    assert r.smembers(kind) == set()
    assert store.place_claim("c", "t1", "Bash", 10, 3600, INTERNET).sandbox.host_id == "h2"
    _exact(r, "h1", "h2")
    # A pool's own removal of its last one empties the kind's set too.
    assert pools.reserve("h2", 30, "Bash", "internet", "w3")
    assert pools.ready("h2", "Bash", "internet", "w3")
    assert pools.take("h2", "Bash", "internet", "w3")
    assert r.smembers(kind) == set()
    _exact(r, "h1", "h2")


def _counted(script: str) -> str:
    """``script`` returning how many Redis commands it ran (its own result dropped)."""
    return (
        "local n = 0\nlocal call = redis.call\n"
        "redis.call = function(...) n = n + 1 return call(...) end\n"
        "local function body()\n" + script + "\nend\nbody()\nredis.call = call\nreturn n\n"
    )


@pytest.mark.parametrize("warm", [False, True])
def test_a_placement_costs_the_same_redis_work_with_10_or_300_hosts(warm: bool) -> None:
    counts = []
    for n in (10, 300):  # (past WARM_CANDIDATES: as many warm hosts checked)
        r = fakeredis.FakeRedis()
        _store(r, *[(f"h{i:03}", 10) for i in range(n)])
        if warm:
            for i in range(n):
                assert Pools(r).reserve(f"h{i:03}", 10, "Bash", "none", f"w{i}")
                assert Pools(r).ready(f"h{i:03}", "Bash", "none", f"w{i}")
        place = r.register_script(_counted(placement.PLACE))
        kind = "Bash:none" if warm else ""
        counts.append(
            place(
                keys=[
                    keys.tenant_sandboxes("t1"),
                    keys.sandbox("new"),
                    keys.idle_index(),
                    keys.expiry_index(),
                    keys.place_template("Bash"),
                    keys.place_warm(kind),
                ],
                args=["Bash", "new", "t1", 10, 1.0, 60, keys.sandbox(""), "{}", "0", kind, 4],
            )
        )
        assert r.scard(keys.tenant_sandboxes("t1")) == 1  # it did place
    assert counts[0] == counts[1], counts
    assert counts[1] < 40


def test_the_web_refuses_without_reading_hosts_per_create() -> None:
    r = fakeredis.FakeRedis()
    celery = Celery("web", set_as_current=False)
    with pytest.raises(NoCapacity, match="No sandbox host is alive"):
        Sandboxes(Settings(), r, celery).create("t1", "Bash")
    _store(r, ("h1", 1))
    web = Sandboxes(Settings(), r, celery)  # (a web process reads the hosts once a second)
    with pytest.raises(ValidationFailed) as exc:
        web.create("t1", "Cobol")
    assert exc.value.fields == {"body.envID": "unknown environment 'Cobol'"}
    # Offered but full: the placement says so (the hosts are read only to word a refusal).
    Store(r).place("a", "t1", "Bash", 10, 3600)
    with pytest.raises(NoCapacity, match="free capacity"):
        web.create("t1", "Bash")
