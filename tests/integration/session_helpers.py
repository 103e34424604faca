"""Helpers of the agent-session tests: tenants made directly in Redis (the account flow has
its own tests), and a WebSocket client that collects frames (the HTTP client is
tests/integration/client.py)."""

from __future__ import annotations

import json
import time
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from devstack.stack import Stack
from shared.accounts import Accounts


def new_tenant(stack: Stack, name: str) -> str:
    """An API key of a fresh tenant."""
    _, key = Accounts(stack.redis, "unused").create_api_key(f"usr_{name}", name, 10)
    return key


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
