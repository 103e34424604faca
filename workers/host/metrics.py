"""Prometheus metrics of one host worker, served by the worker itself.

Hosts are separate processes, often on other machines, so each serves its own counters on
``PADDOCK_METRICS_ADDR:PADDOCK_METRICS_PORT`` (loopback by default; port 0: not served), and
the web's /metrics adds the cluster-wide figures it reads from Redis (web/metrics.py). A
Celery host worker is one process (thread pool), so no multiprocess mode here.

What is measured, honestly:

- process starts, and their **start latency on the host**: from the moment the worker takes
  the start command until the process runs (its output record, the engine's exec create,
  start and attach). The queue wait before that is not in it (the Celery message carries no
  send time); the web's ``paddock_http_request_duration_seconds`` for
  ``POST /sessions/<session_id>/processes`` gives the end-to-end figure;
- output bytes the processes printed, as read from their exec streams (kept or later cut by
  a budget alike);
- reconcile passes and what they found: sandboxes found lost, leftover containers removed,
  leftover storage freed;
- processes whose output is being pumped now, and output bytes held while Redis is away.

Every series carries the ``host`` label (the host id) and nothing about tenants.
"""

from __future__ import annotations

import hmac
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, Counter, Histogram, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

from shared.output import STDERR, STDOUT
from shared.settings import Settings

logger = logging.getLogger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)
START_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

PROCESS_STARTS = Counter(
    "paddock_process_starts",
    "Process start commands handled by the host: started, or failed (refused or not spawned)",
    ["host", "result"],
    registry=REGISTRY,
)
PROCESS_START_SECONDS = Histogram(
    "paddock_process_start_seconds",
    "Seconds from the host taking a process start command until the process runs (docker "
    "exec create + start + attach, and its record)",
    ["host"],
    buckets=START_BUCKETS,
    registry=REGISTRY,
)
OUTPUT_BYTES = Counter(
    "paddock_process_output_bytes",
    "Bytes processes printed, as read from their exec streams",
    ["host", "stream"],
    registry=REGISTRY,
)
RECONCILE_PASSES = Counter(
    "paddock_reconcile_passes",
    "Passes comparing the host's records with its engine (engine_down: nothing judged)",
    ["host", "result"],
    registry=REGISTRY,
)
RECONCILE_LOST = Counter(
    "paddock_reconcile_lost",
    "Sandboxes found lost: their container stopped behind Paddock's back",
    ["host"],
    registry=REGISTRY,
)
RECONCILE_REMOVED = Counter(
    "paddock_reconcile_removed",
    "Leftovers removed by a reconcile pass: containers with no live record, or storage "
    "with no container",
    ["host", "kind"],
    registry=REGISTRY,
)


@contextmanager
def process_start(host: str) -> Iterator[None]:
    """Count one process start of ``host``, failed if the block raises, and time it if not."""
    began = time.perf_counter()
    try:
        yield
    except Exception:
        PROCESS_STARTS.labels(host, "failed").inc()
        raise
    PROCESS_STARTS.labels(host, "started").inc()
    PROCESS_START_SECONDS.labels(host).observe(time.perf_counter() - began)


def output_counters(host: str) -> dict[str, Any]:
    """OUTPUT_BYTES of ``host`` by shared.output stream kind (looked up once per pump, not
    per read)."""
    return {
        STDOUT: OUTPUT_BYTES.labels(host, "stdout"),
        STDERR: OUTPUT_BYTES.labels(host, "stderr"),
    }


def record_reconcile(
    host: str, engine_down: bool, lost: int, containers: int, storage: int
) -> None:
    """Count one reconcile pass and what it found."""
    RECONCILE_PASSES.labels(host, "engine_down" if engine_down else "ok").inc()
    if lost:
        RECONCILE_LOST.labels(host).inc(lost)
    if containers:
        RECONCILE_REMOVED.labels(host, "container").inc(containers)
    if storage:
        RECONCILE_REMOVED.labels(host, "storage").inc(storage)


class PumpCollector(Collector):
    """Gauges read from the process manager when scraped: ``running()`` (processes whose
    output is pumped now) and ``pending()`` (output bytes held while Redis is away)."""

    def __init__(self, host: str, running: Callable[[], int], pending: Callable[[], int]) -> None:
        self.host = host
        self.running = running
        self.pending = pending

    def collect(self) -> Iterator[GaugeMetricFamily]:
        pumps = GaugeMetricFamily(
            "paddock_host_processes", "Processes whose output the host pumps now", labels=["host"]
        )
        pumps.add_metric([self.host], self.running())
        held = GaugeMetricFamily(
            "paddock_host_pending_output_bytes",
            "Output bytes held by the host while Redis does not answer",
            labels=["host"],
        )
        held.add_metric([self.host], self.pending())
        yield pumps
        yield held


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # a scrape every few seconds is not news


def guarded(app: Callable[..., Iterable[bytes]], token: str) -> Callable[..., Iterable[bytes]]:
    """``app`` behind ``Authorization: Bearer <token>`` when ``token`` is set (else as is)."""
    if not token:
        return app

    def check(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        given = environ.get("HTTP_AUTHORIZATION", "")
        ok = given[:7].lower() == "bearer " and hmac.compare_digest(
            given[7:].strip().encode(), token.encode()
        )
        if not ok:
            start_response(
                "401 Unauthorized",
                [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer")],
            )
            return [b"/metrics needs PADDOCK_METRICS_TOKEN (Authorization: Bearer)\n"]
        return app(environ, start_response)

    return check


def serve(settings: Settings, extra: Collector | None = None) -> ThreadingWSGIServer | None:
    """Serve REGISTRY (and ``extra``) on the configured address in a daemon thread. None when
    the port is 0 or cannot be bound: metrics are not worth a worker that will not start (the
    reason is logged)."""
    if not settings.metrics_port:
        return None
    registry = REGISTRY
    if extra is not None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Both(REGISTRY, extra))
    app = guarded(make_wsgi_app(registry), settings.metrics_token)
    addr, port = settings.metrics_addr, settings.metrics_port

    class Server(ThreadingWSGIServer):
        address_family = socket.AF_INET6 if ":" in addr else socket.AF_INET

    try:
        httpd = make_server(addr, port, app, Server, handler_class=_Quiet)
    except OSError as exc:
        logger.error(
            "host %s: metrics not served, %s:%d cannot be bound (%s); set PADDOCK_METRICS_PORT",
            settings.host_id,
            addr,
            port,
            exc,
        )
        return None
    threading.Thread(target=httpd.serve_forever, name="metrics", daemon=True).start()
    if not settings.metrics_token and addr not in ("127.0.0.1", "::1", "localhost"):
        logger.warning(
            "host %s: metrics on %s:%d without PADDOCK_METRICS_TOKEN: anyone who reaches it "
            "reads them",
            settings.host_id,
            addr,
            port,
        )
    logger.info("host %s: metrics on http://%s:%d/metrics", settings.host_id, addr, port)
    return httpd


class _Both(Collector):
    def __init__(self, registry: CollectorRegistry, extra: Collector) -> None:
        self.registry = registry
        self.extra = extra

    def collect(self) -> Iterator[Any]:
        yield from self.registry.collect()
        yield from self.extra.collect()
