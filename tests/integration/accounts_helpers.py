"""Shared pieces of the account tests: an SMTP server on loopback that keeps what it receives,
and a client that logs in through it."""

from __future__ import annotations

import re
import threading
import time
from email import message_from_bytes
from email.message import Message
from typing import Any

import requests
from aiosmtpd.controller import Controller

from tests.stack import Stack, free_port


class Inbox:
    """aiosmtpd handler: every message received, parsed."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"

    def to(self, email: str) -> list[Message]:
        with self.lock:
            return [m for m in self.messages if m["To"] == email]

    def wait_code(self, email: str, count: int = 1, timeout: float = 30) -> str:
        """The code of the ``count``-th mail to ``email``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            mails = self.to(email)
            if len(mails) >= count:
                body = mails[count - 1].get_payload(decode=True)
                assert isinstance(body, bytes)
                match = re.search(r"\b(\d{6})\b", body.decode())
                assert match, body
                return match.group(1)
            time.sleep(0.05)
        raise AssertionError(f"no mail #{count} for {email}")


def smtp_server() -> tuple[Controller, Inbox]:
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    return controller, inbox


class V1:
    def __init__(self, stack: Stack, inbox: Inbox | None = None) -> None:
        self.stack = stack
        self.url = stack.url
        self.inbox = inbox
        self.http = requests.Session()

    def req(self, method: str, path: str, token: str | None = None, **kw: Any) -> requests.Response:
        kw.setdefault("timeout", 120)
        headers = dict(kw.pop("headers", {}) or {})
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return self.http.request(method, self.url + path, headers=headers, **kw)

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


def error_of(r: requests.Response) -> dict[str, Any]:
    body = r.json()
    assert set(body) == {"error"}, body
    err: dict[str, Any] = body["error"]
    assert err["request_id"] == r.headers["X-Request-Id"]
    assert err["request_id"].startswith("req_")
    return err
