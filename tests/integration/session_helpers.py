"""Helpers of the agent-session tests: tenants made directly in Redis (the account flow has
its own tests), and a WebSocket client that collects frames."""

from __future__ import annotations

import json
import time
from typing import Any

import requests
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from shared.accounts import Accounts
from tests.stack import Stack


def new_tenant(stack: Stack, name: str) -> str:
    """An API key of a fresh tenant."""
    _, key = Accounts(stack.redis, "unused").create_api_key(f"usr_{name}", name, 10)
    return key


class Client:
    def __init__(self, stack: Stack, key: str) -> None:
        self.stack = stack
        self.key = key
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {key}"

    def req(self, method: str, path: str, **kw: Any) -> requests.Response:
        kw.setdefault("timeout", 120)
        return self.http.request(method, self.stack.url + path, **kw)

    def bundle(self, name: str, values: dict[str, str]) -> None:
        r = self.req("POST", "/v1/tenants/me/secrets", json={"name": name, "values": values})
        assert r.status_code == 201, r.text

    def session(self, **body: Any) -> dict[str, Any]:
        body.setdefault("agent", {"kind": "shell"})
        body.setdefault("template", "standard")
        r = self.req("POST", "/v1/sessions", json=body)
        assert r.status_code == 201, r.text
        out: dict[str, Any] = r.json()
        return out


def ws_connect(
    url: str, token: str | None = None, query_token: bool = False, last_seq: int | None = None
) -> ClientConnection:
    params = []
    if query_token and token:
        params.append(f"token={token}")
    if last_seq is not None:
        params.append(f"last_seq={last_seq}")
    if params:
        url += "?" + "&".join(params)
    headers = {"Authorization": f"Bearer {token}"} if token and not query_token else None
    # Entered here so tests can hold a connection past a `with` block (close_code, resume).
    return connect(url, additional_headers=headers, proxy=None, open_timeout=10).__enter__()


def recv(ws: ClientConnection, timeout: float = 30) -> dict[str, Any]:
    frame: dict[str, Any] = json.loads(ws.recv(timeout=timeout))
    return frame


def until(ws: ClientConnection, kind: str, timeout: float = 60) -> list[dict[str, Any]]:
    """Every frame up to and including the first of type ``kind``."""
    frames = []
    deadline = time.monotonic() + timeout
    while True:
        frame = recv(ws, max(0.1, deadline - time.monotonic()))
        frames.append(frame)
        if frame["type"] == kind:
            return frames


def close_code(ws: ClientConnection, timeout: float = 15) -> int | None:
    """Wait for the server to close; the close code it sent."""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ws.recv(timeout=max(0.1, deadline - time.monotonic()))
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd else None
    except TimeoutError:
        return None
    return None
