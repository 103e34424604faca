"""Shared pieces of the account tests: an SMTP server on loopback that keeps what it receives
(tests/integration/client.py Client.login reads its codes), and the /v1 error envelope."""

from __future__ import annotations

import re
import threading
import time
from email import message_from_bytes
from email.message import Message
from typing import Any

import requests
from aiosmtpd.controller import Controller

from devstack.stack import free_port


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


def error_of(r: requests.Response) -> dict[str, Any]:
    body = r.json()
    assert set(body) == {"error"}, body
    err: dict[str, Any] = body["error"]
    assert err["request_id"] == r.headers["X-Request-Id"]
    assert err["request_id"].startswith("req_")
    return err
