"""Helpers of the v1 routes: timestamps, client address."""

from __future__ import annotations

from datetime import UTC, datetime

from flask import request


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def client_ip() -> str:
    return request.remote_addr or "unknown"
