"""Per-tenant sandbox and agent-session quotas on the real stack: a burst of creates by one
tenant gets exactly its quota and 429s (in each API's own error shape) for the rest, leaves
nothing behind, and never touches another tenant; the usage document follows along.

Small quotas (3 sandboxes, 2 sessions) keep the suite fast; the defaults are 10 and 5."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from devstack.stack import Stack
from shared import keys
from shared.accounts import Accounts
from tests.integration.client import Client
from tests.integration.session_helpers import new_tenant

MAX_SANDBOXES = 3
MAX_SESSIONS = 2
USAGE = "/v1/tenants/me/usage"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {
        "PADDOCK_AUTH": "on",
        "PADDOCK_TENANT_MAX_SANDBOXES": str(MAX_SANDBOXES),
        "PADDOCK_TENANT_MAX_SESSIONS": str(MAX_SESSIONS),
    }
    with Stack(tmp_path_factory.mktemp("quotas"), env=env) as st:
        yield st


def _tenant_id(stack: Stack, key: str) -> str:
    tenant = Accounts(stack.redis, "unused").authenticate(key)
    assert tenant
    return tenant


def _sandboxes_of(stack: Stack, tenant: str) -> set[str]:
    """The tenant's sandboxes as Docker sees them."""
    return {
        c.labels["paddock.sandbox"]
        for c in stack.containers()
        if c.labels.get("paddock.tenant") == tenant
    }


def _records(stack: Stack) -> set[str]:
    """Every sandbox record in Redis (``pdk:sbx:<id>`` hashes)."""
    return {
        k.decode().split(":")[2]
        for k in stack.redis.scan_iter(keys.sandbox("*"))
        if k.count(b":") == 2 and stack.redis.type(k) == b"hash"
    }


def _usage(c: Client) -> dict[str, Any]:
    r = c.req("GET", USAGE)
    assert r.status_code == 200, r.text
    quotas: dict[str, Any] = r.json()["quotas"]
    return quotas


def _e2b_create(c: Client, env: str = "Bash") -> requests.Response:
    return c.req("POST", "/sessions", json={"envID": env})


def _assert_e2b_quota_refusal(r: requests.Response) -> None:
    assert r.status_code == 429, r.text
    assert int(r.headers["Retry-After"]) > 0
    body = r.json()
    assert set(body) == {"message"}
    assert "sandbox quota" in body["message"]
    assert f"{MAX_SANDBOXES} sandboxes" in body["message"]
    assert "PADDOCK_TENANT_MAX_SANDBOXES" in body["message"]


def test_a_burst_gets_exactly_the_quota_and_leaves_others_alone(stack: Stack) -> None:
    a = Client(stack, new_tenant(stack, "burst-a"), bearer=True)
    b = Client(stack, new_tenant(stack, "burst-b"), bearer=True)
    tenant_a, tenant_b = _tenant_id(stack, a.key), _tenant_id(stack, b.key)
    records_before = _records(stack)
    # Twelve creates at once from A, and B's create among them.
    with ThreadPoolExecutor(13) as pool:
        burst = [pool.submit(_e2b_create, a) for _ in range(12)]
        victim = pool.submit(_e2b_create, b)
        answers = [f.result() for f in burst]
        b_create = victim.result()
    ok = [r for r in answers if r.status_code == 200]
    assert len(ok) == MAX_SANDBOXES, [(r.status_code, r.text) for r in answers]
    for r in answers:
        if r.status_code != 200:
            _assert_e2b_quota_refusal(r)
    # B was not refused, and its sandbox works at once.
    assert b_create.status_code == 200, b_create.text
    b_sid = b_create.json()["id"]
    started = time.monotonic()
    ran = b.req("POST", f"/sessions/{b_sid}/processes?wait=true", json={"cmd": "echo still-here"})
    assert ran.status_code == 200 and ran.json()["stdout"][0]["line"] == "still-here"
    assert time.monotonic() - started < 10
    # Nothing of the refused creates is left: no container, no record, no held slot.
    a_ids = {r.json()["id"] for r in ok}
    assert _sandboxes_of(stack, tenant_a) == a_ids
    assert _sandboxes_of(stack, tenant_b) == {b_sid}
    assert _records(stack) - records_before == a_ids | {b_sid}
    tenant_set = {x.decode() for x in stack.redis.smembers(keys.tenant_sandboxes(tenant_a))}
    assert tenant_set == a_ids
    host_set = {x.decode() for x in stack.redis.smembers(keys.host_sandboxes("host-a"))}
    assert a_ids | {b_sid} <= host_set and not (host_set - _records(stack))
    # The usage document says where each tenant stands.
    assert _usage(a)["sandboxes"] == {
        "used": MAX_SANDBOXES,
        "limit": MAX_SANDBOXES,
        "setting": "PADDOCK_TENANT_MAX_SANDBOXES",
        "per": "tenant",
    }
    assert _usage(b)["sandboxes"]["used"] == 1
    # Deleting one frees its slot (once, for one create).
    victim_id = sorted(a_ids)[0]
    assert a.req("DELETE", f"/sessions/{victim_id}").status_code == 204
    assert _usage(a)["sandboxes"]["used"] == MAX_SANDBOXES - 1
    again = _e2b_create(a)
    assert again.status_code == 200, again.text
    _assert_e2b_quota_refusal(_e2b_create(a))
    # So does the v1 delete, and the slots are shared by both APIs.
    assert a.req("DELETE", f"/v1/sandboxes/{again.json()['id']}").status_code == 204
    assert _e2b_create(a).status_code == 200
    for sid in _sandboxes_of(stack, tenant_a):
        a.req("DELETE", f"/sessions/{sid}")
    b.req("DELETE", f"/sessions/{b_sid}")
    assert _usage(a)["sandboxes"]["used"] == 0 == _usage(b)["sandboxes"]["used"]


def test_v1_session_create_over_the_sandbox_quota_is_a_v1_429(stack: Stack) -> None:
    c = Client(stack, new_tenant(stack, "v1-shape"), bearer=True)
    tenant = _tenant_id(stack, c.key)
    made = [_e2b_create(c) for _ in range(MAX_SANDBOXES)]
    assert [r.status_code for r in made] == [200] * MAX_SANDBOXES
    r = c.req("POST", "/v1/sessions", json={"agent": {"kind": "shell"}, "template": "standard"})
    assert r.status_code == 429, r.text
    assert int(r.headers["Retry-After"]) > 0
    err = r.json()["error"]
    assert err["type"] == "rate_limit_error" and err["code"] == "quota_exceeded"
    assert "PADDOCK_TENANT_MAX_SANDBOXES" in err["message"] and err["request_id"]
    # The refused session left nothing: no session, no sandbox, no held place.
    assert c.req("GET", "/v1/sessions").json() == {"sessions": []}
    assert len(_sandboxes_of(stack, tenant)) == MAX_SANDBOXES
    assert stack.redis.zcard(keys.slots("session-creates", tenant)) == 0
    assert _usage(c)["agent_sessions"]["used"] == 0
    for m in made:
        c.req("DELETE", f"/sessions/{m.json()['id']}")


def _v1_session(c: Client) -> requests.Response:
    return c.req("POST", "/v1/sessions", json={"agent": {"kind": "shell"}, "template": "standard"})


def test_session_quota(stack: Stack) -> None:
    c = Client(stack, new_tenant(stack, "sessions"), bearer=True)
    other = Client(stack, new_tenant(stack, "sessions-other"), bearer=True)
    tenant = _tenant_id(stack, c.key)
    with ThreadPoolExecutor(5) as pool:
        answers = list(pool.map(lambda _: _v1_session(c), range(5)))
    ok = [r for r in answers if r.status_code == 201]
    assert len(ok) == MAX_SESSIONS, [(r.status_code, r.text) for r in answers]
    for r in answers:
        if r.status_code == 201:
            continue
        assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
        err = r.json()["error"]
        assert err["type"] == "rate_limit_error" and err["code"] == "quota_exceeded"
        assert "agent session quota" in err["message"]
        assert "PADDOCK_TENANT_MAX_SESSIONS" in err["message"]
    # Checked before any sandbox is made: only the sessions' own sandboxes exist.
    assert len(_sandboxes_of(stack, tenant)) == MAX_SESSIONS
    assert stack.redis.zcard(keys.slots("session-creates", tenant)) == 0
    usage = _usage(c)
    assert usage["agent_sessions"] == {
        "used": MAX_SESSIONS,
        "limit": MAX_SESSIONS,
        "setting": "PADDOCK_TENANT_MAX_SESSIONS",
        "per": "tenant",
    }
    assert usage["sandboxes"]["used"] == MAX_SESSIONS
    # Another tenant is untouched.
    theirs = _v1_session(other)
    assert theirs.status_code == 201, theirs.text
    # Ending one frees its place at once; an ended session no longer counts.
    first = ok[0].json()["chat_session_id"]
    assert c.req("DELETE", f"/v1/sessions/{first}").status_code == 204
    assert _usage(c)["agent_sessions"]["used"] == MAX_SESSIONS - 1
    replacement = _v1_session(c)
    assert replacement.status_code == 201, replacement.text
    assert _v1_session(c).status_code == 429
    for s in [*ok[1:], replacement]:
        c.req("DELETE", f"/v1/sessions/{s.json()['chat_session_id']}")
    other.req("DELETE", f"/v1/sessions/{theirs.json()['chat_session_id']}")
    assert _usage(c)["agent_sessions"]["used"] == 0


def test_usage_needs_an_api_key_and_shows_every_quota(stack: Stack) -> None:
    c = Client(stack, new_tenant(stack, "usage"), bearer=True)
    assert requests.get(stack.url + USAGE, timeout=30).status_code == 401
    bad = requests.get(
        stack.url + USAGE, headers={"Authorization": "Bearer pdk_live_nope"}, timeout=30
    )
    assert bad.status_code == 401 and bad.json()["error"]["type"] == "authentication_error"
    quotas = _usage(c)
    assert set(quotas) == {
        "sandboxes",
        "agent_sessions",
        "kept_output_bytes",
        "concurrent_waits",
        "concurrent_streams",
        "websockets",
        "proxied_connections",
        "processes_per_sandbox",
        "kept_output_bytes_per_sandbox",
    }
    for q in quotas.values():
        assert q["used"] == 0 and q["limit"] > 0 and q["setting"].startswith("PADDOCK_")
    # A sandbox with running processes and kept output shows up in the per-sandbox quotas.
    sid = _e2b_create(c).json()["id"]
    for cmd in ("sleep 30", "sleep 30", "echo kept-output"):
        assert c.req("POST", f"/sessions/{sid}/processes", json={"cmd": cmd}).status_code == 200
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        quotas = _usage(c)
        if quotas["processes_per_sandbox"]["used"] == 2 and quotas["kept_output_bytes"]["used"] > 0:
            break
        time.sleep(0.2)
    per_sandbox = quotas["processes_per_sandbox"]
    assert per_sandbox["per"] == "sandbox" and per_sandbox["by_sandbox"] == {sid: 2}
    assert per_sandbox["setting"] == "PADDOCK_SANDBOX_MAX_PROCESSES"
    assert quotas["kept_output_bytes"]["used"] > 0
    assert quotas["kept_output_bytes_per_sandbox"]["by_sandbox"][sid] > 0
    assert quotas["sandboxes"]["used"] == 1
    assert c.req("DELETE", f"/sessions/{sid}").status_code == 204
    quotas = _usage(c)
    assert quotas["sandboxes"]["used"] == 0 and quotas["processes_per_sandbox"]["used"] == 0
    assert quotas["kept_output_bytes"]["used"] == 0
