"""The one HTTP client of the integration tests (and the fuzzer's setup): both faces of one
stack, the E2B API and /v1, with the few steps tests repeat (make a sandbox, run a command,
log in through the mail inbox, make an agent session)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import requests

from devstack.stack import Stack
from tests.integration.accounts_helpers import Inbox


class Client:
    """Requests to ``stack.url`` (``url`` may be pointed at another web replica).

    ``key``: an API key sent with every request, as ``X-API-Key`` (what the E2B SDKs send) or,
    with ``bearer``, as ``Authorization: Bearer`` (what /v1 clients send); without one the
    stack's local tenant answers (PADDOCK_AUTH=off). ``token`` on one request sends that bearer
    instead (an account's JWT). ``inbox``: where `login` reads its one-time code."""

    def __init__(
        self,
        stack: Stack,
        key: str | None = None,
        *,
        bearer: bool = False,
        timeout: float = 120,
        inbox: Inbox | None = None,
    ) -> None:
        self.stack = stack
        self.url = stack.url
        self.key = key
        self.timeout = timeout
        self.inbox = inbox
        self.http = requests.Session()
        if key and bearer:
            self.http.headers["Authorization"] = f"Bearer {key}"
        elif key:
            self.http.headers["X-API-Key"] = key

    def req(
        self, method: str, path: str, *, token: str | None = None, **kw: Any
    ) -> requests.Response:
        kw.setdefault("timeout", self.timeout)
        if token:
            kw["headers"] = {**(kw.get("headers") or {}), "Authorization": f"Bearer {token}"}
        return self.http.request(method, self.url + path, **kw)

    # -- the E2B API -------------------------------------------------------------------------
    def sandbox(self, env: str = "Bash") -> str:
        """A new sandbox of template ``env`` (E2B ``POST /sessions``); its id."""
        r = self.req("POST", "/sessions", json={"envID": env})
        assert r.status_code == 200, r.text
        return str(r.json()["id"])

    def start(self, sid: str, cmd: str, wait: bool = False) -> requests.Response:
        wait_param = "true" if wait else "false"
        return self.req("POST", f"/sessions/{sid}/processes?wait={wait_param}", json={"cmd": cmd})

    def run(self, sid: str, cmd: str, **body: Any) -> dict[str, Any]:
        r = self.req("POST", f"/sessions/{sid}/processes?wait=true", json={"cmd": cmd, **body})
        assert r.status_code == 200, r.text
        out: dict[str, Any] = r.json()
        assert out["finished"] is True
        return out

    def read(self, sid: str, path: str) -> requests.Response:
        return self.req("GET", f"/sessions/{sid}/filesystem/file", params={"path": path})

    def write(self, sid: str, path: str, content: str) -> requests.Response:
        return self.req(
            "PUT",
            f"/sessions/{sid}/filesystem/file",
            params={"path": path},
            json={"content": content},
        )

    def timed_echo(self, sid: str) -> float:
        """Seconds an ``echo`` takes end to end (the victim's view in abuse tests)."""
        started = time.monotonic()
        out = self.run(sid, "echo victim-ok")
        assert [x["line"] for x in out["stdout"]] == ["victim-ok"]
        return time.monotonic() - started

    # -- /v1 ---------------------------------------------------------------------------------
    def agent_session(self, **body: Any) -> dict[str, Any]:
        """A new agent session (``POST /v1/sessions``; a shell agent on ``standard`` unless
        ``body`` says otherwise); the answer."""
        body.setdefault("agent", {"kind": "shell"})
        body.setdefault("template", "standard")
        r = self.req("POST", "/v1/sessions", json=body)
        assert r.status_code == 201, r.text
        out: dict[str, Any] = r.json()
        return out

    def bundle(self, name: str, values: dict[str, str]) -> None:
        r = self.req("POST", "/v1/tenants/me/secrets", json={"name": name, "values": values})
        assert r.status_code == 201, r.text

    def login(self, email: str) -> dict[str, Any]:
        """Full OTP login through the SMTP inbox; returns the verify-otp answer."""
        assert self.inbox is not None
        before = len(self.inbox.to(email))
        r = self.req("POST", "/v1/auth/login", json={"email": email})
        assert r.status_code == 200, r.text
        code = self.inbox.wait_code(email, before + 1)
        r = self.req("POST", "/v1/auth/verify-otp", json={"email": email, "code": code})
        assert r.status_code == 200, r.text
        out: dict[str, Any] = r.json()
        return out

    def api_key(self, jwt: str, name: str = "") -> str:
        r = self.req("POST", "/v1/api-keys", token=jwt, json={"name": name})
        assert r.status_code == 201, r.text
        return str(r.json()["key"])

    def tenant(self, email: str) -> tuple[str, str]:
        """(account jwt, api key) of a fresh account."""
        jwt = self.login(email)["token"]
        return jwt, self.api_key(jwt)


class LongPoll(threading.Thread):
    """One ``GET /sessions/ID/processes/PID?wait=true`` on a thread of its own, as a client
    waiting across a fault would: its ``status`` and JSON ``body``, or the ``error`` raised."""

    def __init__(self, api: Client, sid: str, pid: str, timeout: float | None = None) -> None:
        super().__init__(daemon=True)
        self.api, self.path = api, f"/sessions/{sid}/processes/{pid}?wait=true"
        self.timeout = timeout or api.timeout
        self.status: int | None = None
        self.body: Any = None
        self.error: requests.RequestException | None = None

    def run(self) -> None:
        try:
            r = self.api.req("GET", self.path, timeout=self.timeout)
            self.status, self.body = r.status_code, r.json()
        except requests.RequestException as exc:
            self.error = exc


def stdout_lines(process: dict[str, Any]) -> list[str]:
    return [o["line"] for o in process["stdout"]]


def stderr_lines(process: dict[str, Any]) -> list[str]:
    return [o["line"] for o in process["stderr"]]


def wait_until(check: Callable[[], Any], what: str, timeout: float = 30) -> Any:
    """Poll ``check`` until it returns something truthy, and return that.

    Raises AssertionError naming ``what`` when ``timeout`` seconds pass first."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.2)
