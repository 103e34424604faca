"""The arithmetic and tables of the scale harness (bench/scale): per-operation costs from two
readings, routes, the knee, the tables and the plot, on made-up figures."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

from bench.scale import report
from bench.scale.costs import _ID_PATTERNS, _name_and_key
from bench.scale.load import Recorded, _route
from bench.scale.measure import (
    RedisReading,
    Samples,
    calls_between,
    cpu_seconds,
    machine_busy_seconds,
    per_operation,
    sent_between,
)
from bench.scale.steps import Step, Window


def _reading(at: float, processed: int, **calls: int) -> RedisReading:
    return RedisReading(at, processed, calls, 1 << 20, 0.0)


def test_calls_and_sent_leave_the_harness_own_commands_out() -> None:
    a = _reading(0.0, 100, get=10, info=3, evalsha=1)
    b = _reading(2.0, 130, get=25, info=4, evalsha=2, hset=5)
    assert calls_between(a, b) == Counter(get=15, evalsha=1, hset=5)
    assert sent_between(a, b) == 29  # 30 processed, one of them our INFO


def test_per_operation_subtracts_the_idle_rate() -> None:
    # 10 ops in 2 s made 50 gets and 4 brpops; idle, 1 brpop/s and 1 get every 10 s.
    busy = Counter(get=50, brpop=4)
    idle = Counter(get=1, brpop=10)
    costs = per_operation(busy, 2.0, idle, 10.0, 10)
    assert costs == {"get": pytest.approx(4.98), "brpop": pytest.approx(0.2)}
    assert per_operation(Counter(brpop=2), 2.0, idle, 10.0, 10) == {}  # background only
    with pytest.raises(ValueError):
        per_operation(busy, 2.0, idle, 0.0, 10)


def test_cpu_readings_come_from_proc() -> None:
    assert cpu_seconds([os.getpid()]) > 0
    assert cpu_seconds([2**22 + 1]) == 0  # no such process
    assert machine_busy_seconds() > 0


def test_routes_and_trace_keys_hide_ids() -> None:
    assert _route("/sessions/abc/processes/pid?wait=true") == "/sessions/*/processes/*?wait=true"
    assert _route("/v1/sessions/ses_1") == "/v1/sessions/*"
    key = "pdk:proc:npazrby0-a50da462:vGNwtGbc26Ht pdk:reply:" + "ab" * 16
    for pattern, label in _ID_PATTERNS:
        key = pattern.sub(label, key)
    assert key == "pdk:proc:<sandbox>:<process> pdk:reply:<id>"
    assert _name_and_key(["EVALSHA", "f00", "2", "pdk:a", "pdk:b", "secret"]) == (
        "evalsha",
        "pdk:a",
    )
    assert _name_and_key(["HSET", "pdk:x", "field", "value"]) == ("hset", "pdk:x")


def _step(hosts: int, clients: int, ops: int, exec_ms: float) -> Step:
    rec = Recorded(seconds=10.0)
    rec.ops["exec"] = Samples([exec_ms / 1000] * ops)
    rec.web = Samples([0.01] * ops)
    cores = {"web": 0.2, "redis": 0.05, "hosts": 0.1, "control": 0.0, "driver": 0.1, "other": 0.5}
    load = Window(10.0, Counter(hset=ops * 30, lpush=ops), 5.0, cores, peak=dict(cores))
    idle = Window(5.0, Counter(brpop=5 * hosts), 4.0, cores)
    return Step(hosts, clients, 1.0, idle, load, rec, Samples([0.005]), Samples([0.001]))


def test_the_knee_is_where_clients_get_less_or_wait_longer() -> None:
    steps = [_step(1, 1, 10, 20), _step(10, 10, 95, 25), _step(50, 50, 300, 30)]
    at, why = report.knee(steps)
    assert at is steps[2] and "0.60 ops/s" in why
    slower = [_step(1, 1, 10, 20), _step(10, 10, 100, 50), _step(20, 20, 200, 90)]
    at, why = report.knee(slower)
    assert at is slower[2] and "p50 90 ms" in why  # more than 4x the first
    assert report.knee(steps[:2]) == (None, "no knee up to 10 hosts")


def test_tables_and_plot(tmp_path: Path) -> None:
    steps = [_step(1, 1, 10, 20), _step(10, 10, 95, 25)]
    assert report.load_table(steps).splitlines()[2].split()[:3] == ["1", "1", "1.00"]
    tiers = report.tier_table(steps).splitlines()
    assert tiers[3].split("|")[0].strip() == "10"
    idle = report.idle_table(steps).splitlines()[3].split()
    assert idle[:3] == ["10", "10.0", "1.00"]  # 5 brpop a host in 5 s: 1 call/s each
    text = report.bottleneck(steps, exec_sent=34.0, exec_calls=70.0)
    assert "one core carries" in text and "10,000 hosts = 10000 calls/s" in text
    assert report.plot(steps, tmp_path / "scale.png") is None
    assert (tmp_path / "scale.png").read_bytes()[:4] == b"\x89PNG"
