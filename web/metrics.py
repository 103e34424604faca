"""Prometheus ``/metrics`` of the web tier.

Two kinds of figures, one page:

- **this tier's own** (every request's route, method, status and latency; open long-polls and
  WebSockets): module-level prometheus_client metrics. Under gunicorn they are kept in
  prometheus_client's multiprocess files (``PROMETHEUS_MULTIPROC_DIR``, set up per web instance
  by web/gunicorn_conf.py before any worker starts), so a scrape answered by either worker
  shows the sum of all of them; gauges count live workers only (``livesum``). Without that
  variable (the Flask dev server, unit tests) they are plain in-process metrics.
- **the cluster's** (sandboxes by host, template and state; host capacity; Celery queue
  depths, from the broker's Redis when PADDOCK_BROKER_URL gives it one): read from Redis when
  scraped (`ClusterCollector`), at most once a second per web process, so scrapes cannot
  hammer Redis. Each host worker serves its own counters (workers/host/metrics.py).

Labels never carry tenant data: a route is its URL *template* (``/sessions/<session_id>``),
never the path asked (a client sending random paths adds no label value: they are all
``<unmatched>``), methods outside the usual few are ``OTHER``, and no sandbox, process or
tenant id, key or metadata appears anywhere.
"""

from __future__ import annotations

import hmac
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import redis
from flask import Blueprint, Flask, Response, current_app, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from shared import keys
from shared.errors import PaddockError, Unauthorized
from shared.redisio import text
from shared.settings import Settings
from shared.tasks import CONTROL_QUEUE, host_queue
from web.auth import bearer
from web.services import current_services

logger = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
UNMATCHED = "<unmatched>"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Up to the longest wait (PADDOCK_WAIT_TIMEOUT) a request may legitimately take.
LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600,
)  # fmt: skip
# Cluster figures are read from Redis at most this often per web process.
CLUSTER_TTL = 1.0
# Label values that come from Redis: the operator's names (hosts, templates). Anything else
# (a corrupt record) is one value, so it cannot add series.
_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
STATES = frozenset({"creating", "running", "deleting", "lost"})
# kombu keeps a queue's messages with priority 3, 6, 9 on lists of their own.
_PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")
_LOOPBACK = frozenset({"127.0.0.1", "::1", "::ffff:127.0.0.1"})
_PROXY_HEADERS = ("X-Forwarded-For", "Forwarded", "X-Real-Ip")

# Single-process mode reads these alone (the default registry would add this process's own
# figures, meaningless when gunicorn runs several); multiprocess mode reads the files.
_LOCAL = CollectorRegistry(auto_describe=True)
REQUESTS = Counter(
    "paddock_http_requests",
    "HTTP requests answered, by route template, method and status",
    ["route", "method", "status"],
    registry=_LOCAL,
)
LATENCY = Histogram(
    "paddock_http_request_duration_seconds",
    "Seconds from a request's arrival until its answer starts (a long-poll's wait included; "
    "not a WebSocket's life)",
    ["route", "method", "status"],
    buckets=LATENCY_BUCKETS,
    registry=_LOCAL,
)
OPEN_WAITS = Gauge(
    "paddock_http_open_waits",
    "wait=true requests waiting for their process now",
    multiprocess_mode="livesum",
    registry=_LOCAL,
)
OPEN_SOCKETS = Gauge(
    "paddock_http_open_websockets",
    "Session WebSockets open now",
    multiprocess_mode="livesum",
    registry=_LOCAL,
)

bp = Blueprint("metrics", __name__)


class MetricsForbidden(PaddockError):
    status = 403
    code = "metrics_forbidden"
    message = (
        "/metrics answers loopback clients only while API keys are on; set "
        "PADDOCK_METRICS_TOKEN and scrape with Authorization: Bearer"
    )


def route_label() -> str:
    """The matched route's template, or one value for every path no route matches."""
    rule = request.url_rule
    return rule.rule if rule is not None else UNMATCHED


def method_label(method: str) -> str:
    return method if method in METHODS else "OTHER"


def name_label(value: str) -> str:
    return value if _NAME.match(value) else "other"


def check_access(settings: Settings) -> None:
    """Who may read /metrics. A token set (PADDOCK_METRICS_TOKEN): whoever presents it. No
    token and keys off: anyone the API answers (it answers them everything else too). No token
    and keys on: direct loopback clients only — a request that came through a proxy (it names
    the client in a forwarding header) is refused, since a proxy on this machine makes every
    client look local.

    Raises Unauthorized (wrong or missing token) or MetricsForbidden."""
    if settings.metrics_token:
        given = bearer() or ""
        if not hmac.compare_digest(given.encode(), settings.metrics_token.encode()):
            raise Unauthorized("/metrics needs PADDOCK_METRICS_TOKEN (Authorization: Bearer)")
        return
    if not settings.auth:
        return
    direct = not any(h in request.headers for h in _PROXY_HEADERS)
    if not (direct and request.remote_addr in _LOOPBACK):
        raise MetricsForbidden()


class ClusterCollector(Collector):
    """Cluster gauges read from Redis at scrape time, cached CLUSTER_TTL seconds. A Redis
    error is a figure too (``paddock_redis_up 0``), not a failed scrape."""

    def __init__(
        self, r: redis.Redis, ttl: float = CLUSTER_TTL, broker: redis.Redis | None = None
    ) -> None:
        self.r = r
        self.broker = broker  # PADDOCK_BROKER_URL's Redis, when it has one of its own
        self.ttl = ttl
        self._lock = threading.Lock()
        self._cached: tuple[float, list[GaugeMetricFamily]] = (-1e9, [])

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:  # concurrent scrapes share one read
            at, families = self._cached
            if time.monotonic() - at >= self.ttl:
                families = self._read()
                self._cached = (time.monotonic(), families)
        yield from families

    def _read(self) -> list[GaugeMetricFamily]:
        up = GaugeMetricFamily("paddock_redis_up", "1 when the web could read Redis")
        try:
            families = read_cluster(self.r, self.broker)
        except redis.RedisError as exc:
            logger.warning("metrics: cluster figures not read: %s", exc)
            up.add_metric([], 0)
            return [up]
        up.add_metric([], 1)
        return [up, *families]


def read_cluster(r: redis.Redis, broker: redis.Redis | None = None) -> list[GaugeMetricFamily]:
    """Sandboxes by host, template and state; each known host's liveness and capacity; the
    length of every host queue and the control queue, read from ``broker`` (Celery's own
    Redis, PADDOCK_BROKER_URL) or else from ``r``. Three round trips, whatever the size (a
    fourth with a broker of its own).

    Raises redis.RedisError for ``r``; a ``broker`` that fails only leaves the queue lengths
    out (``paddock_broker_up 0``)."""
    own_broker = broker is not None and broker is not r
    host_ids = sorted(text(h) for h in r.smembers(keys.hosts()))
    pipe = r.pipeline(transaction=False)
    for hid in host_ids:
        pipe.hget(keys.host(hid), "capacity")
        pipe.smembers(keys.host_sandboxes(hid))
    queues = [CONTROL_QUEUE, *(host_queue(h) for h in host_ids)]
    if not own_broker:
        _queue_lengths(pipe, queues)
    replies: list[Any] = pipe.execute()
    n = len(host_ids)
    capacities, members = replies[0 : 2 * n : 2], replies[1 : 2 * n : 2]
    lengths: list[Any] | None = replies[2 * n :]
    if broker is not None and own_broker:
        try:
            lengths = _queue_lengths(broker.pipeline(transaction=False), queues).execute()
        except redis.RedisError as exc:
            logger.warning("metrics: queue lengths not read (broker): %s", exc)
            lengths = None

    alive = GaugeMetricFamily(
        "paddock_host_alive", "1 while the host's heartbeat is fresh", labels=["host"]
    )
    capacity = GaugeMetricFamily(
        "paddock_host_capacity", "Sandboxes the host announces it can hold", labels=["host"]
    )
    placed: list[tuple[str, str]] = []
    for hid, cap, ids in zip(host_ids, capacities, members, strict=True):
        label = name_label(hid)
        alive.add_metric([label], 1 if cap is not None else 0)
        if cap is not None:
            capacity.add_metric([label], float(text(cap)))
        placed += [(label, text(sid)) for sid in ids]

    pipe = r.pipeline(transaction=False)
    for _, sid in placed:
        pipe.hmget(keys.sandbox(sid), ["template", "status"])
    counts: dict[tuple[str, str, str], int] = {}
    for (hid, _), (template, status) in zip(placed, pipe.execute(), strict=True):
        if status is None:
            continue  # purged between the two reads
        state = text(status)
        key = (hid, name_label(text(template or b"")), state if state in STATES else "other")
        counts[key] = counts.get(key, 0) + 1
    sandboxes = GaugeMetricFamily(
        "paddock_sandboxes",
        "Sandboxes placed on each host, by template and state (lost ones leave their host "
        "at once: see paddock_reconcile_lost_total)",
        labels=["host", "template", "state"],
    )
    for key, count in sorted(counts.items()):
        sandboxes.add_metric(list(key), count)

    broker_up = GaugeMetricFamily(
        "paddock_broker_up", "1 when the web could read the Celery broker's queue lengths"
    )
    broker_up.add_metric([], 0 if lengths is None else 1)
    if lengths is None:
        return [alive, capacity, sandboxes, broker_up]
    depth = GaugeMetricFamily(
        "paddock_queue_length", "Celery messages waiting in each queue", labels=["queue"]
    )
    per = len(_PRIORITY_SUFFIXES)
    for i, queue in enumerate(queues):
        depth.add_metric([name_label(queue)], sum(int(x) for x in lengths[i * per : i * per + per]))
    return [alive, capacity, sandboxes, broker_up, depth]


def _queue_lengths(pipe: Any, queues: list[str]) -> Any:
    for queue in queues:
        for suffix in _PRIORITY_SUFFIXES:
            pipe.llen(queue + suffix)
    return pipe


def multiproc_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def exposition(cluster: Collector) -> bytes:
    """This tier's metrics (every gunicorn worker's, in multiprocess mode) and the cluster's."""
    own = CollectorRegistry(auto_describe=False)
    path = multiproc_dir()
    if path:
        MultiProcessCollector(own, path=path)
        page = generate_latest(own)
    else:
        page = generate_latest(_LOCAL)
    extra = CollectorRegistry(auto_describe=False)
    extra.register(cluster)
    return page + generate_latest(extra)


@bp.get("/metrics")
def metrics() -> Response:
    """The page Prometheus scrapes. Raises Unauthorized or MetricsForbidden (check_access)."""
    check_access(current_services().settings)
    return Response(
        exposition(current_app.extensions["paddock.metrics"]),
        headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"},
    )


def register(app: Flask, r: redis.Redis, broker: redis.Redis | None = None) -> None:
    """Serve /metrics and time every request. Call before other before_request hooks, so a
    request a guard refuses is timed too. ``broker``: where the queue lengths are read (the
    Redis of PADDOCK_BROKER_URL; default ``r``)."""
    app.extensions["paddock.metrics"] = ClusterCollector(r, broker=broker)
    app.register_blueprint(bp)

    @app.before_request
    def start_timer() -> None:
        g.metrics_started = time.perf_counter()

    @app.after_request
    def count(resp: Response) -> Response:
        route, method = route_label(), method_label(request.method)
        status = str(resp.status_code)
        REQUESTS.labels(route, method, status).inc()
        started = g.get("metrics_started")
        websocket = request.url_rule is not None and request.url_rule.websocket
        if started is not None and not websocket:
            LATENCY.labels(route, method, status).observe(time.perf_counter() - started)
        return resp
