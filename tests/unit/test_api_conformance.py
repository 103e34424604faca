"""Every documented response against what its route sends: for each operation of both OpenAPI
documents, the route is called (an app on fakeredis, the host commands of ``Sandboxes``
stubbed) and its answer validated against the document's schema for that status. A route that
writes a key, a type or a null its schema does not have fails here, so the document and the
wire cannot drift. Fast: no server, no worker, no Docker."""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import fakeredis
import pytest
import schemathesis
from flask import Flask
from flask.testing import FlaskClient

from shared import keys
from shared.commands import Usage
from shared.crypto import new_fernet_key
from shared.egress import NetworkPolicy
from shared.output import END, STDERR, STDOUT, Entry
from shared.sessions import ChatSession
from shared.settings import Settings
from shared.store import Sandbox
from web import tokens
from web.agent_sessions import Created
from web.api.e2b import schemas as e2b_schemas
from web.api.e2b.openapi import build_document
from web.api.v1.openapi import build_spec
from web.app import create_app
from web.services import Services

SANDBOX = Sandbox("sbx1", "usr_a", "h1", "Bash", "deleting", 1_700_000_000.0, NetworkPolicy("none"))
PROCESS = "AbCdEf123456"
ENTRIES = [
    Entry(STDOUT, ["hello", "world"], 1_700_000_000_000_000_000),
    Entry(STDERR, ["oops"], 1_700_000_000_000_000_001),
    Entry(END, [], 0, exit_code=0),
]


def _app() -> Flask:
    settings = Settings(jwt_secret="s" * 40, secret_key=new_fernet_key(), auth=True)
    app = create_app(settings, redis_client=fakeredis.FakeRedis())
    sandboxes = _services(app).sandboxes
    # The host commands (Celery round trips) answer as a host would; lookups and records
    # that need no host stay real where they can.
    stubs: dict[str, Callable[..., Any]] = {
        "create": lambda *_a, **_k: SANDBOX,
        "get": lambda *_a, **_k: SANDBOX,
        "of_tenant": lambda *_a: [SANDBOX],
        "times": lambda *_a: (None, 1_700_003_600.5),
        "delete": lambda *_a: None,
        "ports": lambda *_a: [{"State": "LISTEN", "Ip": "0.0.0.0", "Port": 8080}],
        "list_dir": lambda *_a: [{"name": "a.txt", "isDir": False}, {"name": "d", "isDir": True}],
        "make_dir": lambda *_a: None,
        "remove": lambda *_a: None,
        "read_file": lambda *_a: b"content\n",
        "write_file": lambda *_a: None,
        "start_process": lambda *_a: PROCESS,
        "process_exists": lambda *_a: True,
        "wait_done": lambda *_a: None,
        "output": lambda *_a: lambda kind=None: iter(ENTRIES),
        "write_stdin": lambda *_a: None,
        "stop_process": lambda *_a: None,
        "forget_process": lambda *_a: None,
        "pause": lambda *_a: True,
        "resume": lambda *_a: True,
        "usage": lambda *_a: Usage(12.5, 1 << 20, 1 << 30, 1 << 19, 1 << 22, 1 << 31),
        "template_catalog": lambda: [
            {"name": "Bash", "image": "paddock/bash", "size_bytes": 10, "built_at": 0,
             "versions": {"bash": "5.2"}, "hash": "abc", "hosts": ["h1"]},
        ],
    }  # fmt: skip
    for name, stub in stubs.items():
        setattr(sandboxes, name, stub)
    return app


def _services(app: Flask) -> Services:
    services: Services = app.extensions["paddock"]
    return services


class Caller:
    """The app with a tenant (API key), its account token, a bundle and an agent session."""

    def __init__(self) -> None:
        self.app = _app()
        self.services = _services(self.app)
        self.client: FlaskClient = self.app.test_client()
        key, self.key = self.services.accounts.create_api_key("usr_a", "k", 5)
        self.key_id = key.key_id
        self.user = self.services.accounts.user_for_email("a@example.com")
        self.account = tokens.issue(
            self.services.settings.jwt_secret, self.user, tokens.ACCOUNT_AUDIENCE, 600
        )
        self.services.secrets.create("usr_a", "llm", {"LLM_API_KEY": "x"})
        now = time.time()
        self.session = ChatSession(
            "ses_1", "usr_a", "sbx1", "h1", "Bash", {"kind": "shell"}, {}, ["llm"], "u1",
            "running", now, now + 600,
        )  # fmt: skip
        self.services.sessions.create(self.session)
        self.services.sessions.emit("ses_1", {"type": "message", "task_id": "t", "text": "hi"})
        agent_sessions = self.services.agent_sessions
        agent_sessions.create = lambda *_a: Created(self.session, "jwt")  # type: ignore[method-assign]
        agent_sessions.end = lambda *_a: None  # type: ignore[method-assign]

    def call(self, method: str, path: str, token: str | None = None, **kw: Any) -> Any:
        headers = {"Authorization": f"Bearer {token or self.key}"}
        return self.client.open(path, method=method, headers=headers, **kw)


def _v1_calls(c: Caller) -> dict[tuple[str, str], Callable[[], Any]]:
    code: dict[str, str] = {}

    def login() -> Any:
        with mock.patch("web.api.v1.auth.rpc.send"):  # the mail task: no broker here
            return c.call("POST", "/v1/auth/login", json={"email": "b@example.com"})

    def verify() -> Any:
        code["otp"] = c.services.accounts.issue_otp("c@example.com") or ""
        body = {"email": "c@example.com", "code": code["otp"]}
        return c.call("POST", "/v1/auth/verify-otp", json=body)

    acct = c.account
    return {
        ("/v1/auth/login", "POST"): login,
        ("/v1/auth/verify-otp", "POST"): verify,
        ("/v1/api-keys", "POST"): lambda: c.call(
            "POST", "/v1/api-keys", acct, json={"expires_in": 3600}
        ),
        ("/v1/api-keys", "GET"): lambda: c.call("GET", "/v1/api-keys", acct),
        ("/v1/api-keys/{key_id}", "DELETE"): lambda: c.call(
            "DELETE",
            "/v1/api-keys/" + c.services.accounts.create_api_key(c.user, "x", 9)[0].key_id,
            acct,
        ),
        ("/v1/tenants/me/secrets", "POST"): lambda: c.call(
            "POST", "/v1/tenants/me/secrets", json={"name": "b2", "values": {"A": "1"}}
        ),
        ("/v1/tenants/me/secrets", "GET"): lambda: c.call("GET", "/v1/tenants/me/secrets"),
        ("/v1/tenants/me/secrets/{name}", "GET"): lambda: c.call(
            "GET", "/v1/tenants/me/secrets/llm"
        ),
        ("/v1/tenants/me/secrets/{name}", "PUT"): lambda: c.call(
            "PUT", "/v1/tenants/me/secrets/llm", json={"values": {"LLM_API_KEY": "y"}}
        ),
        ("/v1/tenants/me/secrets/{name}", "DELETE"): lambda: c.call(
            "DELETE", "/v1/tenants/me/secrets/llm?force=true"
        ),
        ("/v1/sandboxes", "GET"): lambda: c.call("GET", "/v1/sandboxes"),
        ("/v1/sandboxes/{sandbox_id}", "GET"): lambda: c.call("GET", "/v1/sandboxes/sbx1"),
        ("/v1/sandboxes/{sandbox_id}/terminal", "POST"): lambda: c.call(
            "POST", "/v1/sandboxes/sbx1/terminal"
        ),
        ("/v1/sandboxes/{sandbox_id}", "DELETE"): lambda: c.call("DELETE", "/v1/sandboxes/sbx1"),
        ("/v1/tenants/me/usage", "GET"): lambda: c.call("GET", "/v1/tenants/me/usage"),
        ("/v1/templates", "GET"): lambda: c.call("GET", "/v1/templates"),
        ("/v1/sessions", "POST"): lambda: c.call(
            "POST", "/v1/sessions", json={"agent": {"kind": "shell"}}
        ),
        ("/v1/sessions", "GET"): lambda: c.call("GET", "/v1/sessions"),
        ("/v1/sessions/{session_id}", "GET"): lambda: c.call("GET", "/v1/sessions/ses_1"),
        ("/v1/sessions/{session_id}/token", "POST"): lambda: c.call(
            "POST", "/v1/sessions/ses_1/token"
        ),
        ("/v1/sessions/{session_id}", "DELETE"): lambda: c.call("DELETE", "/v1/sessions/ses_1"),
        ("/v1/sessions/{session_id}/events", "GET"): lambda: c.call(
            "GET", "/v1/sessions/ses_1/events?after=0"
        ),
    }


def _e2b_calls(c: Caller) -> dict[tuple[str, str], Callable[[], Any]]:
    s = "/sessions/sbx1"
    p = f"{s}/processes/{PROCESS}"
    calls: dict[tuple[str, str], Callable[[], Any]] = {
        ("/health", "GET"): lambda: c.client.get("/health", headers={"Accept": "application/json"}),
        ("/sessions", "POST"): lambda: c.call("POST", "/sessions", json={"envID": "Bash"}),
        ("/sessions/{sessionID}", "GET"): lambda: c.call("GET", s),
        ("/sessions/{sessionID}", "DELETE"): lambda: c.call("DELETE", s),
        ("/sessions/{sessionID}/filesystem", "DELETE"): lambda: c.call(
            "DELETE", f"{s}/filesystem?path=/x"
        ),
        ("/sessions/{sessionID}/processes", "POST"): lambda: c.call(
            "POST", f"{s}/processes?wait=true", json={"cmd": "echo hello"}
        ),
        ("/sessions/{sessionID}/processes/{processID}", "GET"): lambda: c.call("GET", p),
        ("/sessions/{sessionID}/processes/{processID}", "DELETE"): lambda: c.call(
            "DELETE", p + "?results=true"
        ),
        ("/sessions/{sessionID}/processes/{processID}/stdin", "POST"): lambda: c.call(
            "POST", p + "/stdin", json={"stdin": "x"}
        ),
    }
    calls.update(_e2b_control_calls(c))
    for word in ("dir", "dirs"):
        path = f"/sessions/{{sessionID}}/filesystem/{word}"
        url = f"{s}/filesystem/{word}?path=/"
        calls[(path, "GET")] = functools.partial(c.call, "GET", url)
        calls[(path, "PUT")] = functools.partial(c.call, "PUT", url)
    for word in ("file", "files"):
        path = f"/sessions/{{sessionID}}/filesystem/{word}"
        url = f"{s}/filesystem/{word}?path=/a.txt"
        calls[(path, "GET")] = functools.partial(c.call, "GET", url)
        calls[(path, "PUT")] = functools.partial(c.call, "PUT", url, json={"content": "hi"})
    return calls


def _e2b_control_calls(c: Caller) -> dict[tuple[str, str], Callable[[], Any]]:
    """Today's SDKs' control API (web/api/e2b_control/): sent with X-API-Key, as they do, on
    a running sandbox (its record in Redis: the timers move only for a running one)."""
    c.services.redis.hset(keys.sandbox("sbx1"), mapping={"status": "running"})
    running = dataclasses.replace(SANDBOX, status="running")
    c.services.sandboxes.of_tenant = lambda *_a: [running]  # type: ignore[method-assign]

    def call(method: str, path: str, **kw: Any) -> Any:
        return c.client.open(path, method=method, headers={"X-API-Key": c.key}, **kw)

    s = "/sandboxes/sbx1"
    new = {"templateID": "base", "metadata": {"a": "b"}, "envVars": {"A": "1"}, "timeout": 60}
    return {  # in order: pause before resume, delete last
        ("/sandboxes", "POST"): lambda: call("POST", "/sandboxes", json=new),
        ("/v2/sandboxes", "POST"): lambda: call("POST", "/v2/sandboxes", json=new),
        ("/v2/sandboxes", "GET"): lambda: call("GET", "/v2/sandboxes?limit=1&state=running"),
        ("/sandboxes", "GET"): lambda: call("GET", "/sandboxes?metadata=a%3Db"),
        ("/sandboxes/{sandboxID}", "GET"): lambda: call("GET", s),
        ("/sandboxes/{sandboxID}/timeout", "POST"): lambda: call(
            "POST", f"{s}/timeout", json={"timeout": 30}
        ),
        ("/sandboxes/{sandboxID}/refreshes", "POST"): lambda: call(
            "POST", f"{s}/refreshes", json={"duration": 10}
        ),
        ("/sandboxes/{sandboxID}/connect", "POST"): lambda: call(
            "POST", f"{s}/connect", json={"timeout": 30}
        ),
        ("/v2/sandboxes/{sandboxID}/connect", "POST"): lambda: call(
            "POST", f"/v2{s}/connect", json={}
        ),
        ("/sandboxes/{sandboxID}/metrics", "GET"): lambda: call("GET", f"{s}/metrics"),
        ("/sandboxes/{sandboxID}/pause", "POST"): lambda: call("POST", f"{s}/pause", json={}),
        ("/sandboxes/{sandboxID}/resume", "POST"): lambda: call(
            "POST", f"{s}/resume", json={"timeout": 30}
        ),
        ("/sandboxes/{sandboxID}", "DELETE"): lambda: call("DELETE", s),
    }


def _operations(document: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for path, item in document["paths"].items():
        for method, op in item.items():
            if "101" in op.get("responses", {}):
                continue  # the WebSocket: tests/integration/test_agent_sessions.py
            yield path, method.upper()


@pytest.mark.parametrize(
    ("name", "build", "calls"),
    [("e2b", build_document, _e2b_calls), ("v1", build_spec, _v1_calls)],
)
def test_every_documented_success_is_what_the_route_sends(
    name: str,
    build: Callable[[], dict[str, Any]],
    calls: Callable[[Caller], dict[tuple[str, str], Callable[[], Any]]],
) -> None:
    document = build()
    schema = schemathesis.openapi.from_dict(document)
    caller = Caller()
    table = calls(caller)
    documented = set(_operations(document))
    assert documented == set(table), f"{name}: operations without a call here, or gone"
    for path, method in table:  # in the table's order: deletes come after reads
        response = table[(path, method)]()
        assert response.status_code < 300, (path, method, response.get_data(as_text=True))
        schema[path][method].validate_response(response)


def test_the_streamed_process_answer_is_the_process_schema() -> None:
    # Process answers are written by process_json (streamed), not by dump: its output must load
    # with the schema that documents it, strictly (no key it does not know).
    raw = b"".join(e2b_schemas.process_json(PROCESS, lambda kind=None: iter(ENTRIES)))
    loaded = e2b_schemas.Process().load(json.loads(raw))
    assert loaded["finished"] is True
    assert [o["line"] for o in loaded["stdout"]] == ["hello", "world"]
    assert [o["type"] for o in loaded["stderr"]] == ["Stderr"]


def test_sandbox_states_are_the_ones_sent() -> None:
    # The document's enum is derived from the mapping the route writes through.
    from web.api.v1.schemas import SANDBOX_STATES

    props = build_spec()["components"]["schemas"]["SandboxInfo"]["properties"]
    assert props["state"]["enum"] == list(dict.fromkeys(SANDBOX_STATES.values()))
    assert "ended" not in props["state"]["enum"] and "lost" in props["state"]["enum"]


# Routes anyone may call (each guards itself, if at all): the documents and docs page, health,
# /metrics (its own rule: tests/unit/test_metrics.py) and the two steps of logging in.
PUBLIC = {
    "static",
    "metrics.metrics",
    "e2b.health.health",
    "e2b.openapi.openapi",
    "v1.openapi.openapi",
    "docs.docs",
    "docs.asset",
    "console.root",
    "console.index",
    "console.asset",
    "v1.auth.login",
    "v1.auth.verify_otp",
}


def test_every_other_route_refuses_a_request_without_credentials() -> None:
    # Walks the app's own route table, so a route added without its credential decorator
    # fails here whether or not it is documented. The WebSocket checks its session token
    # after the handshake (close code 4401: tests/integration/test_agent_sessions.py).
    app = _app()
    client = app.test_client()
    checked = 0
    for rule in app.url_map.iter_rules():
        if rule.endpoint in PUBLIC or rule.websocket:
            continue
        url = rule.rule
        for arg in rule.arguments:
            url = url.replace(f"<{arg}>", "me" if arg == "tenant" else "x")
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            response = client.open(url, method=method, json={"apiKey": 1})
            assert response.status_code == 401, (method, url, response.status_code)
            checked += 1
    assert checked >= 30
