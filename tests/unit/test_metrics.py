"""Metrics logic without a stack: who may read /metrics, which labels a request gets, the
cluster figures read from Redis (fakeredis), and the host endpoint's token."""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import fakeredis
import pytest
import redis
import requests
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families
from redis.backoff import NoBackoff
from redis.retry import Retry

from shared import keys
from shared.crypto import new_fernet_key
from shared.settings import Settings
from web import gunicorn_conf
from web import metrics as web_metrics
from web.app import create_app
from workers.host import metrics as host_metrics

SECRET = "s" * 40
ROOT = Path(__file__).resolve().parents[2]


def _app(**settings: Any) -> Flask:
    s = Settings(jwt_secret=SECRET, secret_key=new_fernet_key(), **settings)
    return create_app(s, redis_client=fakeredis.FakeRedis())


def _samples(page: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(page)
        for s in family.samples
    }


def _count(route: str, method: str, status: str) -> float:
    value = web_metrics.REQUESTS.labels(route, method, status)._value.get()
    return float(value)


@pytest.mark.parametrize(
    ("settings", "environ", "headers", "status"),
    [
        # Keys off, no token: as open as the rest of the API.
        ({"auth": False}, {"REMOTE_ADDR": "10.0.0.9"}, {}, 200),
        # Keys on, no token: direct loopback clients only.
        ({"auth": True}, {"REMOTE_ADDR": "127.0.0.1"}, {}, 200),
        ({"auth": True}, {"REMOTE_ADDR": "::1"}, {}, 200),
        ({"auth": True}, {"REMOTE_ADDR": "10.0.0.9"}, {}, 403),
        # A proxy on this machine makes everyone look local: forwarded requests are refused.
        ({"auth": True}, {"REMOTE_ADDR": "127.0.0.1"}, {"X-Forwarded-For": "203.0.113.5"}, 403),
        ({"auth": True}, {"REMOTE_ADDR": "127.0.0.1"}, {"Forwarded": "for=203.0.113.5"}, 403),
        # A token: it alone decides, from anywhere, keys on or off.
        ({"metrics_token": "tok"}, {"REMOTE_ADDR": "127.0.0.1"}, {}, 401),
        (
            {"metrics_token": "tok", "auth": False},
            {"REMOTE_ADDR": "127.0.0.1"},
            {"Authorization": "Bearer nope"},
            401,
        ),
        (
            {"metrics_token": "tok"},
            {"REMOTE_ADDR": "10.0.0.9"},
            {"Authorization": "Bearer tok"},
            200,
        ),
    ],
)
def test_who_may_read_metrics(
    settings: dict[str, Any], environ: dict[str, str], headers: dict[str, str], status: int
) -> None:
    app = _app(**settings)
    r = app.test_client().get("/metrics", environ_base=environ, headers=headers)
    assert r.status_code == status, r.get_data(as_text=True)
    if status == 200:
        assert "paddock_http_requests_total" in r.get_data(as_text=True)
    else:
        assert "paddock_" not in r.get_data(as_text=True)


def test_requests_are_labelled_by_route_template_never_path() -> None:
    app = _app(auth=False)
    client = app.test_client()
    before = _count("<unmatched>", "GET", "404")
    health = _count("/health", "GET", "200")
    for i in range(5):
        assert client.get(f"/random-{i}/path").status_code == 404
    assert client.get("/health").status_code == 200
    other = _count("<unmatched>", "OTHER", "405")
    assert client.open("/health", method="BREW").status_code == 405
    assert _count("<unmatched>", "GET", "404") == before + 5
    assert _count("/health", "GET", "200") == health + 1
    assert _count("<unmatched>", "OTHER", "405") == other + 1
    page = client.get("/metrics").get_data(as_text=True)
    assert "random-" not in page and "BREW" not in page
    # A route with an id in its path is its template.
    assert client.get("/sessions/abc123").status_code in (401, 404)
    assert 'route="/sessions/<session_id>"' in client.get("/metrics").get_data(as_text=True)


def _host(r: fakeredis.FakeRedis, host_id: str, alive: bool, sandboxes: dict[str, tuple]) -> None:
    r.sadd(keys.hosts(), host_id)
    if alive:
        r.hset(keys.host(host_id), mapping={"capacity": 32})
    for sid, (template, status) in sandboxes.items():
        r.sadd(keys.host_sandboxes(host_id), sid)
        if status is not None:
            fields: dict[str | bytes, str] = {
                "template": template,
                "status": status,
                "tenant": "tenant-secret",
            }
            r.hset(keys.sandbox(sid), mapping=fields)


def test_cluster_figures_from_redis() -> None:
    r = fakeredis.FakeRedis()
    _host(
        r,
        "host-a",
        True,
        {
            "sb1": ("Bash", "running"),
            "sb2": ("Bash", "running"),
            "sb3": ("Python3", "creating"),
            "sb4": ('Bash{evil="1"}', "weird"),  # a corrupt record: bounded labels
            "sb5": ("Bash", None),  # purged between the reads
        },
    )
    _host(r, "host-b", False, {"sb6": ("Bash", "deleting")})
    r.rpush("host.host-a", b"m1", b"m2")
    r.rpush("host.host-a\x06\x169", b"m3")  # kombu's list for priority 9
    r.rpush("control", b"m4")
    fams = {f.name: f for f in web_metrics.read_cluster(r)}
    got = {
        (f.name, tuple(sorted(s.labels.items()))): s.value for f in fams.values() for s in f.samples
    }

    def sb(host: str, template: str, state: str) -> float:
        labels = (("host", host), ("state", state), ("template", template))
        return got.get(("paddock_sandboxes", labels), 0)

    assert sb("host-a", "Bash", "running") == 2
    assert sb("host-a", "Python3", "creating") == 1
    assert sb("host-a", "other", "other") == 1
    assert sb("host-b", "Bash", "deleting") == 1
    assert sum(v for (name, _), v in got.items() if name == "paddock_sandboxes") == 5
    assert got[("paddock_host_alive", (("host", "host-a"),))] == 1
    assert got[("paddock_host_alive", (("host", "host-b"),))] == 0
    assert got[("paddock_host_capacity", (("host", "host-a"),))] == 32
    assert got[("paddock_queue_length", (("queue", "host.host-a"),))] == 3
    assert got[("paddock_queue_length", (("queue", "host.host-b"),))] == 0
    assert got[("paddock_queue_length", (("queue", "control"),))] == 1
    shown = repr(got)
    assert "sb1" not in shown and "tenant-secret" not in shown


def test_queue_lengths_come_from_the_broker_when_it_has_its_own_redis() -> None:
    state = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    broker = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    _host(state, "host-a", True, {"sb1": ("Bash", "running")})
    broker.rpush("host.host-a", b"m1", b"m2")
    state.rpush("host.host-a", b"stale")  # nobody reads Celery's queues from the state Redis

    def figures(b: redis.Redis) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        fams = web_metrics.read_cluster(state, b)
        return {(f.name, tuple(sorted(s.labels.items()))): s.value for f in fams for s in f.samples}

    got = figures(broker)
    assert got[("paddock_queue_length", (("queue", "host.host-a"),))] == 2
    assert got[("paddock_broker_up", ())] == 1
    # The broker down: the state's figures stay, the queue lengths go, and it says so.
    dead = redis.Redis(port=_closed_port(), socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
    got = figures(dead)
    assert got[("paddock_broker_up", ())] == 0
    assert got[("paddock_host_alive", (("host", "host-a"),))] == 1
    assert not [k for k in got if k[0] == "paddock_queue_length"]


class _CountingRedis(fakeredis.FakeRedis):
    reads = 0

    def smembers(self, name: Any) -> Any:
        type(self).reads += 1
        return super().smembers(name)


def test_cluster_figures_are_cached_and_survive_redis_errors() -> None:
    r = _CountingRedis()
    collector = web_metrics.ClusterCollector(r, ttl=60)
    list(collector.collect())
    list(collector.collect())
    assert _CountingRedis.reads == 1, "a second scrape within the TTL reads Redis again"

    dead = redis.Redis(port=_closed_port(), socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
    fams = list(web_metrics.ClusterCollector(dead).collect())
    assert [(f.name, f.samples[0].value) for f in fams] == [("paddock_redis_up", 0)]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_reconcile_findings_are_counted() -> None:
    def lost() -> float:
        return float(host_metrics.RECONCILE_LOST.labels("h-unit")._value.get())

    before = lost()
    host_metrics.record_reconcile("h-unit", False, lost=2, containers=1, storage=0)
    host_metrics.record_reconcile("h-unit", True, 0, 0, 0)
    assert lost() == before + 2
    removed = host_metrics.RECONCILE_REMOVED.labels("h-unit", "container")._value.get()
    assert removed >= 1
    passes = host_metrics.RECONCILE_PASSES.labels("h-unit", "engine_down")._value.get()
    assert passes >= 1


def test_host_endpoint_off_by_port_zero_and_guarded_by_token() -> None:
    assert host_metrics.serve(Settings(metrics_port=0)) is None
    port = _closed_port()
    settings = Settings(host_id="h-unit", metrics_port=port, metrics_token="tok")
    collector = host_metrics.PumpCollector("h-unit", lambda: 3, lambda: 7)
    httpd = host_metrics.serve(settings, collector)
    assert httpd is not None
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        assert requests.get(url, timeout=10).status_code == 401
        bad = {"Authorization": "Bearer nope"}
        assert requests.get(url, headers=bad, timeout=10).status_code == 401
        r = requests.get(url, headers={"Authorization": "Bearer tok"}, timeout=10)
        assert r.status_code == 200
        got = _samples(r.text)
        assert got[("paddock_host_processes", frozenset({("host", "h-unit")}))] == 3
        assert got[("paddock_host_pending_output_bytes", frozenset({("host", "h-unit")}))] == 7
        # A second worker on the same port is told, not crashed.
        assert host_metrics.serve(settings) is None
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_the_grafana_dashboard_uses_only_metrics_paddock_exposes() -> None:
    r = fakeredis.FakeRedis()
    _host(r, "host-a", True, {"sb1": ("Bash", "running")})
    families = [
        *web_metrics._LOCAL.collect(),
        *host_metrics.REGISTRY.collect(),
        *web_metrics.ClusterCollector(r).collect(),
        *host_metrics.PumpCollector("h", lambda: 0, lambda: 0).collect(),
    ]
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}
    exposed = {f.name + s for f in families for s in suffixes.get(f.type, [""])}
    dashboard = json.loads((ROOT / "deploy/grafana/paddock.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", []) if "expr" in t]
    used = {name for e in exprs for name in re.findall(r"\bpaddock_[a-z_]+", e)}
    assert len(exprs) > 20 and used
    assert used <= exposed, used - exposed


def test_gunicorn_sets_up_one_clean_metrics_dir_per_instance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # setenv first, so that monkeypatch removes what on_starting sets (a delenv of an absent
    # variable records nothing): left behind, it would be inherited by every later stack.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "")
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    monkeypatch.setenv("PADDOCK_DATA_DIR", str(tmp_path))
    server = SimpleNamespace(cfg=SimpleNamespace(bind=["127.0.0.1:3000"]), log=None)
    stale = tmp_path / "metrics" / "web-127.0.0.1_3000" / "counter_123.db"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    gunicorn_conf.on_starting(server)
    assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(stale.parent)
    assert not stale.exists(), "counters start from zero with the instance"
    # Another instance (another bind) gets its own directory.
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    server.cfg.bind = ["127.0.0.1:3001"]
    gunicorn_conf.on_starting(server)
    assert os.environ["PROMETHEUS_MULTIPROC_DIR"].endswith("web-127.0.0.1_3001")
