"""Secret bundles, tenant isolation across every route, and secrets kept out of Redis and logs."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest

from devstack.stack import Stack
from shared import keys
from tests.integration.accounts_helpers import Inbox, error_of
from tests.integration.client import Client


@pytest.fixture(scope="module")
def v1(tmp_path_factory: pytest.TempPathFactory, smtp: tuple[str, Inbox]) -> Iterator[Client]:
    url, inbox = smtp
    with Stack(
        tmp_path_factory.mktemp("tenancy"), env={"PADDOCK_AUTH": "on", "PADDOCK_SMTP_URL": url}
    ) as st:
        yield Client(st, inbox=inbox)


@pytest.fixture(autouse=True)
def fresh_ip_limits(v1: Client) -> None:
    for key in v1.stack.redis.scan_iter(keys.rate("*", "*", "*")):
        v1.stack.redis.delete(key)


SECRETS = "/v1/tenants/me/secrets"


def test_secret_bundle_lifecycle(v1: Client) -> None:
    _, key = v1.tenant("bundles@example.com")
    r = v1.req(
        "POST",
        SECRETS,
        token=key,
        json={"name": "my-llm-keys", "values": {"LLM_API_KEY": "sk-ant-123", "B": "2"}},
    )
    assert r.status_code == 201
    b = r.json()
    assert set(b) == {"name", "keys", "version", "created_at", "updated_at"}
    assert b["keys"] == ["B", "LLM_API_KEY"] and b["version"] == 1
    assert "sk-ant-123" not in r.text
    r = v1.req("POST", SECRETS, token=key, json={"name": "my-llm-keys", "values": {"A": "x"}})
    assert r.status_code == 409 and error_of(r)["type"] == "conflict_error"
    got = v1.req("GET", f"{SECRETS}/my-llm-keys", token=key)
    assert got.json() == b and "sk-ant" not in got.text
    assert v1.req("GET", SECRETS, token=key).json() == {"secrets": [b]}
    # Rotation: full replace, version + 1, If-Match honoured.
    r = v1.req(
        "PUT",
        f"{SECRETS}/my-llm-keys",
        token=key,
        json={"values": {"LLM_API_KEY": "v2"}},
        headers={"If-Match": '"7"'},
    )
    assert r.status_code == 412
    r = v1.req(
        "PUT",
        f"{SECRETS}/my-llm-keys",
        token=key,
        json={"values": {"LLM_API_KEY": "v2"}},
        headers={"If-Match": '"1"'},
    )
    assert r.status_code == 200
    assert r.json()["version"] == 2 and r.json()["keys"] == ["LLM_API_KEY"]
    r = v1.req("PUT", f"{SECRETS}/my-llm-keys", token=key, json={"values": {"LLM_API_KEY": "v3"}})
    assert r.json()["version"] == 3
    # Delete: 409 while a running session uses it, unless force.
    v1.stack.redis.sadd(keys.secret_users(_tenant(v1, key), "my-llm-keys"), "ses_x")
    r = v1.req("DELETE", f"{SECRETS}/my-llm-keys", token=key)
    assert r.status_code == 409 and error_of(r)["code"] == "secret_in_use"
    r = v1.req("DELETE", f"{SECRETS}/my-llm-keys?force=true", token=key)
    assert r.status_code == 204
    assert v1.req("GET", f"{SECRETS}/my-llm-keys", token=key).status_code == 404
    assert v1.req("DELETE", f"{SECRETS}/my-llm-keys", token=key).status_code == 404


def _tenant(v1: Client, key: str) -> str:
    import hashlib

    digest = hashlib.sha256(key.encode()).hexdigest()
    return v1.stack.redis.hget(keys.api_key(digest), "tenant").decode()


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "param"),
    [
        ("POST", SECRETS, b"nope", 400, "body"),
        ("POST", SECRETS, b'{"values": {"A": "1"}}', 400, "name"),
        ("POST", SECRETS, b'{"name": "Bad_Name", "values": {"A": "1"}}', 400, "name"),
        ("POST", SECRETS, b'{"name": "-x", "values": {"A": "1"}}', 400, "name"),
        ("POST", SECRETS, b'{"name": "x", "values": {"lower": "1"}}', 400, "values"),
        ("POST", SECRETS, b'{"name": "x", "values": {}}', 400, "values"),
        ("POST", SECRETS, b'{"name": "x", "values": {"A": 1}}', 400, "values"),
        ("POST", SECRETS, b'{"name": "x", "values": ["A"]}', 400, "values"),
        ("POST", SECRETS, b'{"name": "x", "values": {"A": "1"}, "ttl": 5}', 400, "ttl"),
        ("PUT", SECRETS + "/base", b'{"values": {"A": "1"}, "name": "y"}', 400, "name"),
        ("PUT", SECRETS + "/base", b"{}", 400, "values"),
        ("PUT", SECRETS + "/base", b"[]", 400, "body"),
    ],
)
def test_bad_secret_input_changes_nothing(
    v1: Client, method: str, path: str, body: bytes, status: int, param: str
) -> None:
    _, key = v1.tenant(f"bad-{abs(hash(body)) % 10**8}@example.com")
    assert (
        v1.req("POST", SECRETS, token=key, json={"name": "base", "values": {"K": "v"}}).status_code
        == 201
    )
    r = v1.req(method, path, token=key, data=body, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    err = error_of(r)
    assert err["type"] == "invalid_request_error" and err["param"].startswith(param)
    listed = v1.req("GET", SECRETS, token=key).json()["secrets"]
    assert [(b["name"], b["keys"], b["version"]) for b in listed] == [("base", ["K"], 1)]


def test_secret_limits(v1: Client) -> None:
    _, key = v1.tenant("limits-secrets@example.com")
    too_big = {"A": "x" * (64 * 1024 + 1)}
    r = v1.req("POST", SECRETS, token=key, json={"name": "big", "values": too_big})
    assert r.status_code == 400 and "65536 bytes" in error_of(r)["message"]
    r = v1.req(
        "POST",
        SECRETS,
        token=key,
        json={"name": "wide", "values": {f"K{i}": "v" for i in range(51)}},
    )
    assert r.status_code == 400
    ok = v1.req(
        "POST",
        SECRETS,
        token=key,
        json={
            "name": "edge",
            "values": {**{f"K{i}": "v" for i in range(49)}, "BIG": "x" * 64 * 1024},
        },
    )
    assert ok.status_code == 201
    for i in range(49):
        assert (
            v1.req(
                "POST", SECRETS, token=key, json={"name": f"b{i}", "values": {"A": "1"}}
            ).status_code
            == 201
        )
    r = v1.req("POST", SECRETS, token=key, json={"name": "fifty-one", "values": {"A": "1"}})
    assert r.status_code == 400 and error_of(r)["code"] == "limit_exceeded"
    assert len(v1.req("GET", SECRETS, token=key).json()["secrets"]) == 50


def test_cross_tenant_matrix(v1: Client) -> None:
    jwt_a, key_a = v1.tenant("alice@example.com")
    jwt_b, key_b = v1.tenant("bob@example.com")
    sid = v1.req("POST", "/sessions", token=key_a, json={"envID": "Bash"}).json()["id"]
    pid = v1.req(
        "POST", f"/sessions/{sid}/processes", token=key_a, json={"cmd": "sleep 60"}
    ).json()["processID"]
    v1.req("POST", SECRETS, token=key_a, json={"name": "alice-keys", "values": {"A": "1"}})
    a_key_id = v1.req("GET", "/v1/api-keys", token=jwt_a).json()["api_keys"][0]["key_id"]

    routes = [
        ("GET", f"/sessions/{sid}", None),
        ("DELETE", f"/sessions/{sid}", None),
        ("GET", f"/sessions/{sid}/filesystem/dir?path=/", None),
        ("GET", f"/sessions/{sid}/filesystem/dirs?path=/", None),
        ("PUT", f"/sessions/{sid}/filesystem/dir?path=/tmp/x", None),
        ("DELETE", f"/sessions/{sid}/filesystem?path=/tmp", None),
        ("GET", f"/sessions/{sid}/filesystem/file?path=/etc/hostname", None),
        ("PUT", f"/sessions/{sid}/filesystem/files?path=/tmp/x", {"content": "x"}),
        ("POST", f"/sessions/{sid}/processes", {"cmd": "true"}),
        ("GET", f"/sessions/{sid}/processes/{pid}", None),
        ("DELETE", f"/sessions/{sid}/processes/{pid}?results=true", None),
        ("POST", f"/sessions/{sid}/processes/{pid}/stdin", {"stdin": "x"}),
        ("GET", f"/v1/sandboxes/{sid}", None),
        ("DELETE", f"/v1/sandboxes/{sid}", None),
        ("GET", f"{SECRETS}/alice-keys", None),
        ("PUT", f"{SECRETS}/alice-keys", {"values": {"A": "stolen"}}),
        ("DELETE", f"{SECRETS}/alice-keys?force=true", None),
    ]
    for method, path, body in routes:
        r = v1.req(method, path, token=key_b, json=body)
        assert r.status_code == 404, (method, path, r.status_code, r.text)
    r = v1.req("DELETE", f"/v1/api-keys/{a_key_id}", token=jwt_b)
    assert r.status_code == 404
    # Another tenant's path segment is nobody's.
    assert v1.req("GET", "/v1/tenants/usr_someone/secrets", token=key_b).status_code == 404
    # Nothing of A in any list of B ...
    assert v1.req("GET", "/v1/sandboxes", token=key_b).json() == {"sandboxes": []}
    assert v1.req("GET", SECRETS, token=key_b).json() == {"secrets": []}
    assert [k["key_id"] for k in v1.req("GET", "/v1/api-keys", token=jwt_b).json()["api_keys"]] != [
        a_key_id
    ]
    # ... and A's things are untouched and still A's.
    r = v1.req("GET", f"/sessions/{sid}/processes/{pid}", token=key_a)
    assert r.status_code == 200 and r.json()["finished"] is False
    assert v1.req("GET", f"{SECRETS}/alice-keys", token=key_a).json()["version"] == 1
    assert v1.req("GET", "/v1/api-keys", token=jwt_a).json()["api_keys"][0]["revoked"] is False
    assert [
        s["sandbox_id"] for s in v1.req("GET", "/v1/sandboxes", token=key_a).json()["sandboxes"]
    ] == [sid]
    v1.req("DELETE", f"/sessions/{sid}", token=key_a)


def _dump_redis(v1: Client) -> str:
    """Every key and every value in Redis, as text."""
    r = v1.stack.redis
    parts: list[str] = []
    for key in r.scan_iter("*"):
        kind = r.type(key).decode()
        parts.append(key.decode(errors="replace"))
        if kind == "string":
            parts.append(str(r.get(key)))
        elif kind == "hash":
            parts.append(str(r.hgetall(key)))
        elif kind == "list":
            parts.append(str(r.lrange(key, 0, -1)))
        elif kind == "set":
            parts.append(str(r.smembers(key)))
        elif kind == "zset":
            parts.append(str(r.zrange(key, 0, -1)))
        elif kind == "stream":
            parts.append(str(r.xrange(key)))
    return "\n".join(parts)


def test_no_key_code_or_secret_in_redis_or_logs(v1: Client) -> None:
    email = "leaks@example.com"
    captured: list[str] = []
    # Watch Redis while the flow runs: the mail task's message must not carry the code either.
    r = v1.req("POST", "/v1/auth/login", json={"email": email})
    code = v1.inbox.wait_code(email)  # type: ignore[union-attr]
    captured.append(_dump_redis(v1))
    token = v1.req("POST", "/v1/auth/verify-otp", json={"email": email, "code": code}).json()[
        "token"
    ]
    key = v1.api_key(token, "leak-test")
    secret = "sk-live-SUPERSECRET-" + "9" * 20
    v1.req("POST", SECRETS, token=key, json={"name": "leaky", "values": {"LLM_API_KEY": secret}})
    v1.req("PUT", f"{SECRETS}/leaky", token=key, json={"values": {"LLM_API_KEY": secret + "2"}})
    v1.req("GET", "/v1/sandboxes", token=key)
    v1.req("POST", "/sessions", json={"envID": "Bash"}, headers={"X-API-Key": key})
    captured.append(_dump_redis(v1))
    everything = "\n".join(captured)
    logs = "\n".join(v1.stack.log(n) for n in ("web", "control", "worker-host-a"))
    for needle in (key, key[12:], secret, token):
        assert needle not in everything, needle[:6]
        assert needle not in logs, needle[:6]
    # Six digits can occur inside timestamps by chance; the code never stands alone.
    alone = re.compile(rf"(?<![\d.]){code}(?![\d.])")
    assert not alone.search(everything) and not alone.search(logs)
    # The bundle is there, encrypted (a Fernet token), with its key names in clear.
    tenant = _tenant(v1, key)
    bundle = keys.secret_bundle(tenant, "leaky")
    blob = v1.stack.redis.hget(bundle, "blob")
    assert blob and blob.startswith(b"gAAAAA")
    assert json.loads(v1.stack.redis.hget(bundle, "keys")) == ["LLM_API_KEY"]
    assert r.status_code == 200


def test_openapi_and_docs(v1: Client) -> None:
    doc = v1.req("GET", "/v1/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    for path in (
        "/v1/auth/login",
        "/v1/auth/verify-otp",
        "/v1/api-keys",
        "/v1/api-keys/{key_id}",
        "/v1/tenants/me/secrets",
        "/v1/tenants/me/secrets/{name}",
        "/v1/sandboxes",
        "/v1/sessions",
        "/v1/sessions/{session_id}/events",
        "/v1/sessions/{session_id}/ws",
    ):
        assert path in doc["paths"], path
    props = doc["components"]["schemas"]["CreateSecretRequest"]["properties"]
    assert set(props) == {"name", "values"}
    assert doc["components"]["schemas"]["VerifyOtpRequest"]["properties"]["code"]["pattern"]
    page = v1.req("GET", "/docs")
    assert page.status_code == 200 and "text/html" in page.headers["Content-Type"]
    assert "/v1/tenants/me/secrets" in page.text
    # Swagger UI from this server's own files (tests/integration/test_docs_browser.py runs it).
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "docs.js"):
        assert f'"/docs/assets/{asset}"' in page.text
        assert v1.req("GET", f"/docs/assets/{asset}").status_code == 200
    assert v1.req("GET", "/docs/assets/swagger-ui-bundle.js.map").status_code == 404
