"""Prometheus metrics against the real stack: the web's /metrics (gunicorn workers in
multiprocess mode, plus cluster gauges read from Redis) and the host worker's own endpoint
move by exactly what was done, with bounded labels and no tenant data."""

from __future__ import annotations

import secrets
import threading
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

from devstack.stack import Stack
from tests.integration.client import Client, wait_until

Labels = frozenset[tuple[str, str]]
Samples = dict[tuple[str, Labels], float]


def _parse(page: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(page):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def web(stack: Stack) -> Samples:
    r = requests.get(stack.url + "/metrics", timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("text/plain")
    return _parse(r.text)


def host(stack: Stack, host_id: str = "host-a") -> Samples:
    port = stack.metrics_ports[host_id]
    r = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=30)
    assert r.status_code == 200, r.text
    return _parse(r.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


ROUTE = "/sessions/<session_id>/processes"


def test_requests_and_processes_are_counted(stack: Stack, api: Client) -> None:
    sid = api.sandbox("Bash")
    before_web, before_host = web(stack), host(stack)
    # Run a process that prints 3 bytes on stdout and 3 on stderr.
    out = api.run(sid, "printf abc; printf 'de\\n' >&2")
    assert [o["line"] for o in out["stdout"]] == ["abc"]
    # Random paths a hostile client sends: none becomes a label value; one connection each,
    # so both gunicorn workers answer some (multiprocess mode sums them).
    junk = [f"/x{secrets.token_hex(8)}/{secrets.token_hex(8)}" for _ in range(6)]
    for path in junk:
        r = requests.get(stack.url + path, headers={"Connection": "close"}, timeout=30)
        assert r.status_code == 404
    r = requests.request("BREW", stack.url + "/health", timeout=30)
    after_web, after_host = web(stack), host(stack)

    def moved(name: str, **labels: str) -> float:
        return value(after_web, name, **labels) - value(before_web, name, **labels)

    ok = {"route": ROUTE, "method": "POST", "status": "200"}
    assert moved("paddock_http_requests_total", **ok) == 1
    assert moved("paddock_http_request_duration_seconds_count", **ok) == 1
    assert moved("paddock_http_requests_total", route="/sessions", method="POST", status="200") == 0
    unmatched = {"route": "<unmatched>", "method": "GET", "status": "404"}
    assert moved("paddock_http_requests_total", **unmatched) == 6
    assert (
        moved("paddock_http_requests_total", route="<unmatched>", method="OTHER", status="405") == 1
    )
    # Labels are route templates and codes: no sandbox id, no raw path, no unknown method.
    values = {v for (_, labels) in after_web for _, v in labels}
    assert not any(sid in v or "BREW" in v or "/x" in v for v in values), values
    assert not [p for p in junk if any(p in v for v in values)]

    def grew(name: str, **labels: str) -> float:
        return value(after_host, name, **labels) - value(before_host, name, **labels)

    assert grew("paddock_process_starts_total", host="host-a", result="started") == 1
    assert grew("paddock_process_start_seconds_count", host="host-a") == 1
    assert 0 < grew("paddock_process_start_seconds_sum", host="host-a") < 60
    assert grew("paddock_process_output_bytes_total", host="host-a", stream="stdout") == 3
    assert grew("paddock_process_output_bytes_total", host="host-a", stream="stderr") == 3
    assert value(after_host, "paddock_host_processes", host="host-a") >= 0

    # Multiprocess mode really is on: the files live in the instance's own directory.
    files = list(Path(stack.workdir, "metrics").glob("web-*/*.db"))
    assert files, "no multiprocess files under <data_dir>/metrics"

    # Cluster gauges from Redis: this sandbox counted on its host, queues reported.
    running = {"host": "host-a", "template": "Bash", "state": "running"}
    assert value(after_web, "paddock_sandboxes", **running) >= 1
    assert value(after_web, "paddock_redis_up") == 1
    assert value(after_web, "paddock_host_alive", host="host-a") == 1
    assert ("paddock_queue_length", frozenset({("queue", "control")})) in after_web
    assert ("paddock_queue_length", frozenset({("queue", "host.host-a")})) in after_web
    assert api.req("DELETE", f"/sessions/{sid}").status_code == 204
    wait_until(
        lambda: (
            value(web(stack), "paddock_sandboxes", **running)
            == value(after_web, "paddock_sandboxes", **running) - 1
        ),
        "the deleted sandbox to leave the gauge",
    )


def test_open_long_polls_are_a_gauge(stack: Stack, api: Client) -> None:
    sid = api.sandbox("Bash")
    base = value(web(stack), "paddock_http_open_waits")
    done: list[bool] = []
    t = threading.Thread(target=lambda: done.append(api.run(sid, "sleep 4")["finished"]))
    t.start()
    wait_until(lambda: value(web(stack), "paddock_http_open_waits") == base + 1, "the wait")
    t.join(60)
    assert done == [True]
    wait_until(lambda: value(web(stack), "paddock_http_open_waits") == base, "the wait to end")
    api.req("DELETE", f"/sessions/{sid}")


def test_a_lost_sandbox_is_a_reconcile_finding(stack: Stack, api: Client) -> None:
    sid = api.sandbox("Bash")
    before = value(host(stack), "paddock_reconcile_lost_total", host="host-a")
    [container] = [c for c in stack.containers() if c.labels.get("paddock.sandbox") == sid]
    container.kill()
    wait_until(
        lambda: value(host(stack), "paddock_reconcile_lost_total", host="host-a") == before + 1,
        "the reconcile to find the sandbox lost",
    )
    samples = host(stack)
    assert value(samples, "paddock_reconcile_passes_total", host="host-a", result="ok") >= 1
    assert api.req("GET", f"/sessions/{sid}").status_code == 404
