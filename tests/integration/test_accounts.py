"""Accounts by email OTP (through a real SMTP server on loopback), API keys, and the rules
around them: no enumeration, one answer for every bad code, burning, rate limits, revocation,
and which token goes where."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import jwt as pyjwt
import pytest

from devstack.stack import Stack
from shared import keys
from tests.integration.accounts_helpers import Inbox, error_of
from tests.integration.client import Client, wait_until


@pytest.fixture(scope="module")
def v1(tmp_path_factory: pytest.TempPathFactory, smtp: tuple[str, Inbox]) -> Iterator[Client]:
    url, inbox = smtp
    env = {"PADDOCK_AUTH": "on", "PADDOCK_SMTP_URL": url, "PADDOCK_MAX_API_KEYS": "3"}
    with Stack(tmp_path_factory.mktemp("accounts"), env=env) as st:
        yield Client(st, inbox=inbox)


@pytest.fixture(autouse=True)
def fresh_ip_limits(v1: Client) -> None:
    # Every test comes from 127.0.0.1; per-IP windows are tested on their own below.
    for key in v1.stack.redis.scan_iter(keys.rate("*-ip", "*", "*")):
        v1.stack.redis.delete(key)


def test_login_mails_a_code_that_verifies(v1: Client) -> None:
    email = "first@example.com"
    r = v1.req("POST", "/v1/auth/login", json={"email": "  First@Example.com "})
    assert r.status_code == 200
    assert r.json() == {"status": "otp_sent", "expires_in": 600}
    code = v1.inbox.wait_code(email)  # type: ignore[union-attr]
    [mail] = v1.inbox.to(email)  # type: ignore[union-attr]
    assert code in mail["Subject"]
    r = v1.req("POST", "/v1/auth/verify-otp", json={"email": email, "code": code})
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"token", "user_id", "email"}
    assert body["email"] == email and body["user_id"].startswith("usr_")
    claims = pyjwt.decode(body["token"], options={"verify_signature": False})
    assert claims["aud"] == "account" and claims["sub"] == body["user_id"]
    assert claims["exp"] - claims["iat"] == 3600
    # The same account on the next login.
    v1.stack.redis.delete(keys.rate("otp-resend", email, 0))
    assert v1.login(email)["user_id"] == body["user_id"]


def test_login_answers_the_same_for_new_and_known_emails(v1: Client) -> None:
    v1.login("known@example.com")
    v1.stack.redis.delete(keys.rate("otp-resend", "known@example.com", 0))
    known = v1.req("POST", "/v1/auth/login", json={"email": "known@example.com"})
    new = v1.req("POST", "/v1/auth/login", json={"email": "never-seen@example.com"})
    assert (known.status_code, known.json()) == (new.status_code, new.json())
    assert set(known.headers) - {"X-Request-Id"} == set(new.headers) - {"X-Request-Id"}


def test_wrong_expired_used_and_missing_codes_answer_the_same_401(v1: Client) -> None:
    email = "codes@example.com"
    v1.req("POST", "/v1/auth/login", json={"email": email})
    code = v1.inbox.wait_code(email)  # type: ignore[union-attr]
    wrong = "000000" if code != "000000" else "111111"

    def attempt(c: str, who: str = email) -> tuple[int, dict]:
        r = v1.req("POST", "/v1/auth/verify-otp", json={"email": who, "code": c})
        err = error_of(r) if r.status_code != 200 else {}
        err.pop("request_id", None)
        return r.status_code, err

    answers = [attempt(wrong)]
    assert attempt(code)[0] == 200  # right code still works after one wrong try
    answers.append(attempt(code))  # used
    answers.append(attempt("123456", "nobody@example.com"))  # missing
    v1.stack.redis.delete(keys.rate("otp-resend", email, 0))
    v1.req("POST", "/v1/auth/login", json={"email": email})
    v1.inbox.wait_code(email, 2)  # type: ignore[union-attr]
    v1.stack.redis.pexpire(keys.otp(email), 1)  # expired
    answers.append(attempt(code))
    assert all(a == answers[0] for a in answers), answers
    assert answers[0] == (
        401,
        {
            "type": "authentication_error",
            "code": "otp_invalid",
            "message": "The code is wrong, expired or already used",
        },
    )


def test_five_wrong_tries_burn_the_code(v1: Client) -> None:
    email = "burn@example.com"
    v1.req("POST", "/v1/auth/login", json={"email": email})
    code = v1.inbox.wait_code(email)  # type: ignore[union-attr]
    wrong = "000000" if code != "000000" else "111111"
    for _ in range(5):
        r = v1.req("POST", "/v1/auth/verify-otp", json={"email": email, "code": wrong})
        assert r.status_code == 401
    r = v1.req("POST", "/v1/auth/verify-otp", json={"email": email, "code": code})
    assert r.status_code == 401 and error_of(r)["code"] == "otp_invalid"


def test_a_new_code_replaces_the_old_one(v1: Client) -> None:
    email = "replace@example.com"
    v1.req("POST", "/v1/auth/login", json={"email": email})
    old = v1.inbox.wait_code(email)  # type: ignore[union-attr]
    v1.stack.redis.delete(keys.rate("otp-resend", email, 0))
    v1.req("POST", "/v1/auth/login", json={"email": email})
    new = v1.inbox.wait_code(email, 2)  # type: ignore[union-attr]
    if old != new:
        r = v1.req("POST", "/v1/auth/verify-otp", json={"email": email, "code": old})
        assert r.status_code == 401
    r = v1.req("POST", "/v1/auth/verify-otp", json={"email": email, "code": new})
    assert r.status_code == 200


def test_rate_limits(v1: Client) -> None:
    email = "limits@example.com"
    # One code a minute: the second login answers the same and sends nothing.
    assert v1.req("POST", "/v1/auth/login", json={"email": email}).status_code == 200
    v1.inbox.wait_code(email)  # type: ignore[union-attr]
    r = v1.req("POST", "/v1/auth/login", json={"email": email})
    assert r.status_code == 200 and r.json() == {"status": "otp_sent", "expires_in": 600}
    # Five codes an hour (the minute rule lifted by hand to get there quickly).
    for _ in range(4):
        v1.stack.redis.delete(keys.rate("otp-resend", email, 0))
        assert v1.req("POST", "/v1/auth/login", json={"email": email}).status_code == 200
    v1.stack.redis.delete(keys.rate("otp-resend", email, 0))
    r = v1.req("POST", "/v1/auth/login", json={"email": email})
    assert r.status_code == 429
    assert error_of(r)["type"] == "rate_limit_error"
    assert 0 < int(r.headers["Retry-After"]) <= 3600
    v1.inbox.wait_code(email, 5)  # type: ignore[union-attr]
    assert len(v1.inbox.to(email)) == 5  # type: ignore[union-attr]


@pytest.mark.parametrize(("path", "limit"), [("/v1/auth/login", 10), ("/v1/auth/verify-otp", 20)])
def test_per_ip_rate_limits(v1: Client, path: str, limit: int) -> None:
    body = {"email": "ip@example.com", "code": "123456"}
    if path.endswith("login"):
        body = {"email": "ip@example.com"}
    for _attempt in range(3):
        # The limit counts in fixed one-minute windows: a burst that straddles a window's end
        # is counted in two, so it is tried again inside one window.
        window = int(time.time()) // 60
        statuses = [v1.req("POST", path, json=body).status_code for _ in range(limit + 1)]
        if int(time.time()) // 60 == window:
            break
        for key in v1.stack.redis.scan_iter(keys.rate("*-ip", "*", "*")):
            v1.stack.redis.delete(key)
    assert 429 not in statuses[:limit] and statuses[-1] == 429
    r = v1.req("POST", path, json=body)
    assert r.status_code == 429 and 1 <= int(r.headers["Retry-After"]) <= 60


def test_api_keys_create_list_revoke(v1: Client) -> None:
    token = v1.login("keys@example.com")["token"]
    r = v1.req("POST", "/v1/api-keys", token=token, json={"name": "ci"})
    assert r.status_code == 201
    created = r.json()
    assert set(created) == {"key_id", "key", "prefix", "name", "created_at", "expires_at"}
    assert created["expires_at"] is None  # until revoked
    assert created["key"].startswith("pdk_live_") and len(created["key"]) == 9 + 43
    assert created["prefix"] == created["key"][:12] and created["name"] == "ci"
    key = created["key"]
    # The key works on API-key routes, and last_used_at shows it.
    assert v1.req("GET", "/v1/sandboxes", token=key).status_code == 200
    listed = v1.req("GET", "/v1/api-keys", token=token).json()["api_keys"]
    assert [k["key_id"] for k in listed] == [created["key_id"]]
    assert set(listed[0]) == {
        "key_id",
        "prefix",
        "name",
        "revoked",
        "created_at",
        "last_used_at",
        "expires_at",
    }
    assert listed[0]["revoked"] is False and listed[0]["last_used_at"]
    assert "key" not in listed[0]
    # Revoked: refused on its very next request.
    r = v1.req("DELETE", f"/v1/api-keys/{created['key_id']}", token=token)
    assert r.status_code == 200
    assert r.json() == {"key_id": created["key_id"], "status": "revoked"}
    r = v1.req("GET", "/v1/sandboxes", token=key)
    assert r.status_code == 401 and error_of(r)["code"] == "api_key_revoked"
    r = v1.req("POST", "/sessions", json={"envID": "Bash", "apiKey": key})
    assert r.status_code == 401
    assert v1.req("GET", "/v1/api-keys", token=token).json()["api_keys"][0]["revoked"] is True
    assert v1.req("DELETE", "/v1/api-keys/key_nosuch", token=token).status_code == 404


def test_an_expiring_key_ends_and_frees_its_place(v1: Client) -> None:
    # The console makes one such key per browser tab (web/console): a tab closed without
    # logging out leaves a key that ends by itself and is dropped a while later.
    token = v1.login("expiring@example.com")["token"]
    r = v1.req("POST", "/v1/api-keys", token=token, json={"name": "hour", "expires_in": 3600})
    assert r.status_code == 201, r.text
    hour = r.json()
    made, ends = (
        datetime.fromisoformat(hour[k].replace("Z", "+00:00")) for k in ("created_at", "expires_at")
    )
    assert (ends - made).total_seconds() == pytest.approx(3600, abs=1)
    assert v1.req("GET", "/v1/sandboxes", token=hour["key"]).status_code == 200
    # Redis drops its records a week after its end; a key without an end stays.
    ttl = v1.stack.redis.ttl(keys.api_key_id(hour["key_id"]))
    assert 3600 < ttl <= 3600 + 7 * 86400
    r = v1.req("POST", "/v1/api-keys", token=token, json={"name": "second", "expires_in": 1})
    short = r.json()
    # Its end passes: refused on every face, listed as ended.
    wait_until(
        lambda: v1.req("GET", "/v1/sandboxes", token=short["key"]).status_code == 401,
        "the one-second key refused",
    )
    r = v1.req("GET", "/v1/sandboxes", token=short["key"])
    assert error_of(r)["code"] == "api_key_expired" and "expired" in error_of(r)["message"]
    r = v1.req("POST", "/sessions", json={"envID": "Bash"}, headers={"X-API-Key": short["key"]})
    assert r.status_code == 401 and "expired" in r.json()["message"]
    listed = {k["key_id"]: k for k in v1.req("GET", "/v1/api-keys", token=token).json()["api_keys"]}
    assert listed[short["key_id"]]["expires_at"] == short["expires_at"]
    assert listed[short["key_id"]]["revoked"] is False
    # An ended key holds no place under PADDOCK_MAX_API_KEYS (3): two more fit, not three.
    for name in ("k1", "k2"):
        assert v1.req("POST", "/v1/api-keys", token=token, json={"name": name}).status_code == 201
    r = v1.req("POST", "/v1/api-keys", token=token, json={"name": "k3"})
    assert r.status_code == 400 and error_of(r)["code"] == "limit_exceeded"
    # Once Redis has dropped an ended key, the listing forgets its id as well.
    v1.stack.redis.delete(keys.api_key_id(short["key_id"]))
    listed_ids = [
        k["key_id"] for k in v1.req("GET", "/v1/api-keys", token=token).json()["api_keys"]
    ]
    assert short["key_id"] not in listed_ids and hour["key_id"] in listed_ids
    members = {
        m.decode()
        for k in v1.stack.redis.scan_iter(keys.tenant_api_keys("*"))
        for m in v1.stack.redis.smembers(k)
    }
    assert short["key_id"] not in members and hour["key_id"] in members
    # Bad lifetimes.
    for bad in (0, -5, "60", 1.5, 366 * 86400 + 1):
        r = v1.req("POST", "/v1/api-keys", token=token, json={"expires_in": bad})
        assert r.status_code == 400 and error_of(r)["param"] == "expires_in", bad


def test_tokens_only_work_where_they_belong(v1: Client) -> None:
    jwt, key = v1.tenant("where@example.com")
    for path in ("/v1/sandboxes", "/v1/tenants/me/secrets"):
        r = v1.req("GET", path, token=jwt)
        assert r.status_code == 401 and error_of(r)["type"] == "authentication_error"
    r = v1.req("POST", "/sessions", json={"envID": "Bash"}, headers={"X-API-Key": jwt})
    assert r.status_code == 401
    r = v1.req("GET", "/v1/api-keys", token=key)
    assert r.status_code == 401
    r = v1.req("POST", "/v1/api-keys", token=key)
    assert r.status_code == 401
    for bad in (None, "garbage", jwt[:-4] + "AAAA"):
        assert v1.req("GET", "/v1/api-keys", token=bad).status_code == 401
        assert v1.req("GET", "/v1/sandboxes", token=bad).status_code == 401
    # An expired account token.
    expired = pyjwt.encode(
        {"iss": "paddock", "sub": "usr_x", "aud": "account", "iat": 1, "exp": 2},
        v1.stack.env["PADDOCK_JWT_SECRET"],
        algorithm="HS256",
    )
    r = v1.req("GET", "/v1/api-keys", token=expired)
    assert r.status_code == 401 and "expired" in error_of(r)["message"]


def test_e2b_routes_take_the_key_three_ways(v1: Client) -> None:
    _, key = v1.tenant("e2b@example.com")
    r = v1.req("POST", "/sessions", json={"envID": "Bash"})
    assert r.status_code == 401 and r.json() == {
        "message": "An API key is required (Authorization: Bearer or X-API-Key)"
    }
    ids = []
    for kw in (
        {"json": {"envID": "Bash", "apiKey": key}},
        {"json": {"envID": "Bash"}, "headers": {"X-API-Key": key}},
        {"json": {"envID": "Bash"}, "token": key},
    ):
        r = v1.req("POST", "/sessions", **kw)  # type: ignore[arg-type]
        assert r.status_code == 200, r.text
        ids.append(r.json()["id"])
    listed = v1.req("GET", "/v1/sandboxes", token=key).json()["sandboxes"]
    assert sorted(s["sandbox_id"] for s in listed) == sorted(ids)
    sb = listed[0]
    assert set(sb) == {
        "sandbox_id",
        "template",
        "state",
        "host",
        "created_at",
        "last_active_at",
        "expires_at",
        "idle_expires_at",
        "metadata",
        "network",
        "lost_reason",
    }
    assert sb["state"] == "running" and sb["template"] == "Bash" and sb["lost_reason"] is None
    for sid in ids:
        assert v1.req("DELETE", f"/v1/sandboxes/{sid}", token=key).status_code == 204
        assert v1.req("GET", f"/sessions/{sid}", token=key).status_code == 404
    assert v1.req("GET", "/v1/sandboxes", token=key).json() == {"sandboxes": []}
    assert not [c for c in v1.stack.containers() if c.labels["paddock.sandbox"] in ids]


def test_too_many_keys_and_bad_bodies(v1: Client) -> None:
    token = v1.login("many@example.com")["token"]
    for i in range(3):
        assert (
            v1.req("POST", "/v1/api-keys", token=token, json={"name": f"k{i}"}).status_code == 201
        )
    r = v1.req("POST", "/v1/api-keys", token=token, json={"name": "one-too-many"})
    assert r.status_code == 400 and error_of(r)["code"] == "limit_exceeded"
    for body in (
        b"{",
        b"[]",
        b'{"name": 5}',
        b'{"name": "x", "scope": "all"}',
        b'{"name": "' + b"n" * 65 + b'"}',
    ):
        r = v1.req(
            "POST",
            "/v1/api-keys",
            token=token,
            data=body,
            headers={"Content-Type": "application/json"},
        )
        assert r.status_code == 400, body
        assert error_of(r)["type"] == "invalid_request_error"
    assert len(v1.req("GET", "/v1/api-keys", token=token).json()["api_keys"]) == 3


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/auth/login", b"not json", "body"),
        ("/v1/auth/login", b"{}", "email"),
        ("/v1/auth/login", b'{"email": "not-an-email"}', "email"),
        ("/v1/auth/login", b'{"email": "a@b.co", "admin": true}', "admin"),
        ("/v1/auth/login", b'{"email": 42}', "email"),
        ("/v1/auth/verify-otp", b'{"email": "a@b.co"}', "code"),
        ("/v1/auth/verify-otp", b'{"email": "a@b.co", "code": "12345"}', "code"),
        ("/v1/auth/verify-otp", b'{"email": "a@b.co", "code": "abcdef"}', "code"),
        ("/v1/auth/verify-otp", b'{"email": "a@b.co", "code": 123456}', "code"),
    ],
)
def test_bad_auth_input(v1: Client, path: str, body: bytes, param: str) -> None:
    r = v1.req("POST", path, data=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    err = error_of(r)
    assert err["type"] == "invalid_request_error" and err["param"] == param
    assert v1.stack.redis.keys(keys.otp("*a@b.co*")) == []


def test_dev_mode_like_make_up(tmp_path: Path) -> None:
    """PADDOCK_AUTH=off and no SMTP: the code is in the control worker's log, /sessions works
    without a key (local tenant), and a key, when given, still decides the tenant."""
    with Stack(tmp_path, env={"PADDOCK_AUTH": "off"}) as st:
        v1 = Client(st)
        assert (
            v1.req("POST", "/v1/auth/login", json={"email": "dev@example.com"}).status_code == 200
        )
        deadline = time.monotonic() + 30
        code = None
        while code is None and time.monotonic() < deadline:
            m = re.search(
                r"LOG MAILER.*login code for dev@example\.com: (\d{6})", st.log("control")
            )
            code = m.group(1) if m else None
            time.sleep(0.1)
        assert code, st.log("control")[-2000:]
        r = v1.req("POST", "/v1/auth/verify-otp", json={"email": "dev@example.com", "code": code})
        assert r.status_code == 200
        key = v1.api_key(r.json()["token"])
        anonymous = v1.req("POST", "/sessions", json={"envID": "Bash"}).json()["id"]
        mine = v1.req("POST", "/sessions", json={"envID": "Bash"}, token=key).json()["id"]
        listed = v1.req("GET", "/v1/sandboxes", token=key).json()["sandboxes"]
        assert [s["sandbox_id"] for s in listed] == [mine]
        assert v1.req("GET", f"/sessions/{anonymous}").status_code == 200
        assert v1.req("GET", f"/sessions/{mine}").status_code == 404  # not the local tenant's
        r = v1.req("POST", "/sessions", json={"envID": "Bash"}, headers={"X-API-Key": "wrong"})
        assert r.status_code == 401
        assert v1.req("GET", "/v1/sandboxes").status_code == 401  # v1 always needs a key
