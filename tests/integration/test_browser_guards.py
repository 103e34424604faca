"""A web page must not be able to drive a keyless Paddock: bodies must be JSON, the Host must
be this server's, and another site's Origin is refused (issue 9, browser-origin defences)."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from devstack.stack import Stack
from shared import keys
from tests.integration.client import Client
from tests.integration.session_helpers import new_tenant


def sandbox_count(stack: Stack) -> int:
    return sum(
        1 for _ in stack.redis.scan_iter(keys.sandbox("*"), count=1000) if _.count(b":") == 2
    )


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
def test_a_body_that_is_not_json_is_415_and_creates_nothing(
    api: Client, stack: Stack, content_type: str
) -> None:
    before = sandbox_count(stack)
    r = api.req(
        "POST",
        "/sessions",
        data=json.dumps({"envID": "Bash"}),
        headers={"Content-Type": content_type},
    )
    assert r.status_code == 415, r.text
    assert "application/json" in r.json()["message"]
    r = api.req("POST", "/sessions", data=b'{"envID": "Bash"}', headers={"Content-Type": ""})
    assert r.status_code == 415
    assert sandbox_count(stack) == before


def test_a_process_start_from_a_form_is_415_and_runs_nothing(api: Client, sid: str) -> None:
    marker = f"/home/user/csrf-{secrets.token_hex(4)}"
    r = api.req(
        "POST",
        f"/sessions/{sid}/processes",
        data=json.dumps({"cmd": f"touch {marker}"}),
        headers={"Content-Type": "text/plain;charset=UTF-8"},
    )
    assert r.status_code == 415
    out = api.run(sid, f"test -e {marker} && echo made || echo none")
    assert [x["line"] for x in out["stdout"]] == ["none"]


def test_a_foreign_origin_is_403_and_same_origin_or_none_works(api: Client, stack: Stack) -> None:
    r = api.req(
        "POST", "/sessions", json={"envID": "Bash"}, headers={"Origin": "https://evil.example"}
    )
    assert r.status_code == 403 and "PADDOCK_CORS_ORIGINS" in r.json()["message"]
    assert "Access-Control-Allow-Origin" not in r.headers
    r = api.req("GET", "/health", headers={"Origin": "http://localhost:1"})
    assert r.status_code == 403
    r = api.req("GET", "/health", headers={"Origin": stack.url})
    assert r.status_code == 200
    assert api.req("GET", "/health").status_code == 200
    # The v1 API answers in its own envelope.
    r = api.req("GET", "/v1/templates", headers={"Origin": "https://evil.example"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "foreign_origin"


def test_a_rebound_host_name_is_refused_in_keyless_mode(api: Client, stack: Stack) -> None:
    before = sandbox_count(stack)
    r = api.req("POST", "/sessions", json={"envID": "Bash"}, headers={"Host": "attacker.example"})
    assert r.status_code == 421, r.text
    assert "PADDOCK_ALLOWED_HOSTS" in r.json()["message"]
    assert sandbox_count(stack) == before
    for host in (f"localhost:{stack.port}", f"127.0.0.1:{stack.port}"):
        assert api.req("GET", "/health", headers={"Host": host}).status_code == 200


def test_a_websocket_from_another_site_is_refused(stack: Stack) -> None:
    client = Client(stack, new_tenant(stack, "ws-origin"), bearer=True)
    s = client.agent_session()
    url = s["connect_url"]
    with pytest.raises(InvalidStatus) as refused:
        connect(url, additional_headers={"Authorization": f"Bearer {s['jwt']}"},
                origin="https://evil.example", proxy=None, open_timeout=10)  # type: ignore[arg-type]  # fmt: skip
    assert refused.value.response.status_code == 403
    with connect(
        url, additional_headers={"Authorization": f"Bearer {s['jwt']}"}, proxy=None, open_timeout=10
    ) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "ready"
    client.req("DELETE", f"/v1/sessions/{s['chat_session_id']}")


@pytest.fixture(scope="module")
def cors_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"PADDOCK_AUTH": "on", "PADDOCK_CORS_ORIGINS": "https://console.example"}
    with Stack(tmp_path_factory.mktemp("cors"), env=env) as s:
        yield s


def test_listed_origins_get_cors_and_keys_on_skips_the_host_check(cors_stack: Stack) -> None:
    api = Client(cors_stack, new_tenant(cors_stack, "cors"))
    r = api.req(
        "OPTIONS",
        "/v1/sandboxes",
        headers={
            "Origin": "https://console.example",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert r.status_code == 204
    assert r.headers["Access-Control-Allow-Origin"] == "https://console.example"
    assert "Authorization" in r.headers["Access-Control-Allow-Headers"]
    r = api.req("GET", "/v1/sandboxes", headers={"Origin": "https://console.example"})
    assert r.status_code == 200
    assert r.headers["Access-Control-Allow-Origin"] == "https://console.example"
    r = api.req("GET", "/v1/sandboxes", headers={"Origin": "https://other.example"})
    assert r.status_code == 403 and "Access-Control-Allow-Origin" not in r.headers
    # Keys on: any Host name (a load balancer's) is served.
    r = api.req("GET", "/v1/sandboxes", headers={"Host": "paddock.internal"})
    assert r.status_code == 200
