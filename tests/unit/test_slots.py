"""Per-tenant concurrency slots (shared/slots.py) on fakeredis, which runs their Lua through
lupa (the fakeredis[lua] extra)."""

from __future__ import annotations

import time

import fakeredis
import pytest

from shared import keys
from shared.slots import SOCKETS, WAITS, Slots

pytest.importorskip("lupa", reason="fakeredis runs Lua scripts only with lupa installed")


@pytest.fixture
def r() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


def test_acquire_up_to_the_limit_then_none(r: fakeredis.FakeRedis) -> None:
    slots = Slots(r)
    tokens = [slots.acquire(WAITS, "t1", 3, 60) for _ in range(3)]
    assert all(tokens) and len(set(tokens)) == 3
    assert slots.acquire(WAITS, "t1", 3, 60) is None
    assert slots.count(WAITS, "t1") == 3


def test_tenants_and_kinds_are_counted_apart(r: fakeredis.FakeRedis) -> None:
    slots = Slots(r)
    assert slots.acquire(WAITS, "t1", 1, 60)
    assert slots.acquire(WAITS, "t1", 1, 60) is None
    assert slots.acquire(WAITS, "t2", 1, 60), "another tenant is untouched"
    assert slots.acquire(SOCKETS, "t1", 1, 60), "another kind is untouched"


def test_release_frees_a_slot(r: fakeredis.FakeRedis) -> None:
    slots = Slots(r)
    token = slots.acquire(SOCKETS, "t1", 1, 60)
    assert token
    slots.release(SOCKETS, "t1", token)
    assert slots.count(SOCKETS, "t1") == 0
    assert slots.acquire(SOCKETS, "t1", 1, 60)


def test_a_dead_holder_stops_counting_after_its_ttl(r: fakeredis.FakeRedis) -> None:
    slots = Slots(r)
    assert slots.acquire(WAITS, "t1", 1, 0.05)
    assert slots.acquire(WAITS, "t1", 1, 60) is None
    time.sleep(0.1)
    assert slots.count(WAITS, "t1") == 0
    assert slots.acquire(WAITS, "t1", 1, 60), "the expired slot no longer counts"
    assert r.zcard(keys.slots(WAITS, "t1")) == 1, "and it was dropped from the set"


def test_refresh_keeps_a_slot_alive(r: fakeredis.FakeRedis) -> None:
    slots = Slots(r)
    token = slots.acquire(WAITS, "t1", 1, 0.1)
    assert token
    slots.refresh(WAITS, "t1", token, 60)
    time.sleep(0.15)
    assert slots.count(WAITS, "t1") == 1
    assert slots.acquire(WAITS, "t1", 1, 60) is None


def test_refresh_does_not_bring_back_a_released_slot(r: fakeredis.FakeRedis) -> None:
    slots = Slots(r)
    token = slots.acquire(WAITS, "t1", 1, 60)
    assert token
    slots.release(WAITS, "t1", token)
    slots.refresh(WAITS, "t1", token, 60)
    assert slots.count(WAITS, "t1") == 0


def test_the_key_expires_with_its_longest_slot(r: fakeredis.FakeRedis) -> None:
    slots = Slots(r)
    key = keys.slots(SOCKETS, "t1")
    slots.acquire(SOCKETS, "t1", 5, 100)
    slots.acquire(SOCKETS, "t1", 5, 10)  # a shorter holder must not shorten the key's life
    assert 100 <= r.ttl(key) <= 101
    token = slots.acquire(SOCKETS, "t1", 5, 500)
    assert token
    assert 500 <= r.ttl(key) <= 501


def test_limit_zero_refuses_everything(r: fakeredis.FakeRedis) -> None:
    assert Slots(r).acquire(WAITS, "t1", 0, 60) is None
