"""E2B sandbox routes (``/sessions`` on the wire), validation, 404s, ports, health and the
OpenAPI document."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from devstack.stack import Stack
from shared import keys
from tests.integration.client import Client


def test_create_get_delete(api: Client) -> None:
    r = api.req("POST", "/sessions", json={"envID": "Python3"})
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"id", "ports"} and body["ports"] == []
    sid = body["id"]
    assert re.fullmatch(r"[a-z0-9]{8}-[0-9a-f]{8}", sid)
    r = api.req("GET", f"/sessions/{sid}")
    assert r.status_code == 200 and r.json() == {"id": sid, "ports": []}
    names = [c.name for c in api.stack.containers()]
    assert any(sid in n for n in names)
    r = api.req("DELETE", f"/sessions/{sid}")
    assert r.status_code == 204 and r.content == b""
    assert api.req("GET", f"/sessions/{sid}").status_code == 404
    assert not any(sid in c.name for c in api.stack.containers())
    assert not api.stack.redis.exists(keys.sandbox(sid))
    assert api.req("DELETE", f"/sessions/{sid}").status_code == 404


def test_ports_lists_listening_tcp(api: Client) -> None:
    sid = api.sandbox("Python3")
    pid = api.req(
        "POST",
        f"/sessions/{sid}/processes",
        json={"cmd": "exec python3 -m http.server 8123 --bind 0.0.0.0"},
    ).json()["processID"]
    deadline = time.monotonic() + 20
    ports: list = []
    while time.monotonic() < deadline and not ports:
        ports = api.req("GET", f"/sessions/{sid}").json()["ports"]
        time.sleep(0.2)
    assert {"State": "LISTEN", "Ip": "0.0.0.0", "Port": 8123} in ports
    api.req("DELETE", f"/sessions/{sid}/processes/{pid}")
    api.req("DELETE", f"/sessions/{sid}")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{", "body"),
        (b"null", "body"),
        (b"", "body"),
        (b"{}", "body.envID"),
        (b'{"envID": 7}', "body.envID"),
        (b'{"envID": ""}', "body.envID"),
        (b'{"envID": "Cobol"}', "body.envID"),
        (b'{"envID": "Bash", "size": "xl"}', "body.size"),
    ],
)
def test_bad_create_is_422_and_creates_nothing(api: Client, body: bytes, field: str) -> None:
    before = {c.id for c in api.stack.containers()}
    keys_before = len(api.stack.redis.keys(keys.sandbox("*")))
    r = api.req("POST", "/sessions", data=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["message"] == "Validation Failed"
    assert set(r.json()["details"][field]) == {"message"}
    assert {c.id for c in api.stack.containers()} == before
    assert len(api.stack.redis.keys(keys.sandbox("*"))) == keys_before


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", ""),
        ("DELETE", ""),
        ("GET", "/filesystem/dir?path=/"),
        ("GET", "/filesystem/dirs?path=/"),
        ("PUT", "/filesystem/dir?path=/tmp/x"),
        ("DELETE", "/filesystem?path=/tmp"),
        ("GET", "/filesystem/file?path=/etc/hostname"),
        ("PUT", "/filesystem/files?path=/tmp/x"),
        ("POST", "/processes"),
        ("GET", "/processes/AAAAAAAAAAAA"),
        ("DELETE", "/processes/AAAAAAAAAAAA"),
        ("POST", "/processes/AAAAAAAAAAAA/stdin"),
    ],
)
def test_unknown_session_is_404_everywhere(api: Client, method: str, path: str) -> None:
    body = {"content": "x", "cmd": "true", "stdin": "x"}
    if path.endswith("processes"):
        body = {"cmd": "true"}
    elif "file" in path:
        body = {"content": "x"}
    elif path.endswith("stdin"):
        body = {"stdin": "x"}
    r = api.req(method, f"/sessions/nosuch00-00000000{path}", json=body)
    assert r.status_code == 404
    assert r.json() == {"message": "Session not found"}


def test_health_and_openapi(api: Client) -> None:
    r = api.req("GET", "/health")
    assert r.status_code == 200 and r.text == "OK"
    doc = api.req("GET", "/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    for p in (
        "/sessions",
        "/sessions/{sessionID}/filesystem/dir",
        "/sessions/{sessionID}/filesystem/files",
        "/sessions/{sessionID}/processes/{processID}/stdin",
    ):
        assert p in doc["paths"]


def test_unknown_route_uses_the_error_shape(api: Client) -> None:
    r = api.req("GET", "/nope")
    assert r.status_code == 404 and r.json() == {"message": "Not Found"}
    r = api.req("PATCH", "/sessions")
    assert r.status_code == 405 and r.json() == {"message": "Method Not Allowed"}


def test_no_live_host_answers_503_quickly(tmp_path: Path) -> None:
    with Stack(tmp_path, hosts=()) as st:
        a = Client(st)
        t0 = time.monotonic()
        r = a.req("POST", "/sessions", json={"envID": "Bash"})
        assert time.monotonic() - t0 < 10
        assert r.status_code == 503
        assert "No sandbox host is alive" in r.json()["message"]
        assert st.redis.keys(keys.sandbox("*")) == []
