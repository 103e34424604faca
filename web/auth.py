"""Who is calling: every request resolves to a tenant id, which scopes every lookup."""

from __future__ import annotations

import hashlib

import redis
from flask import request

from shared import keys
from shared.errors import Unauthorized
from shared.settings import Settings

LOCAL_TENANT = "local"


def presented_key(body_key: str | None = None) -> str | None:
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return request.headers.get("X-API-Key") or body_key or None


def tenant_for_request(settings: Settings, r: redis.Redis, body_key: str | None = None) -> str:
    """The tenant of this request. With ``PADDOCK_AUTH=off`` it is the local tenant.

    Raises Unauthorized for a missing, unknown or revoked API key.
    """
    if not settings.auth:
        return LOCAL_TENANT
    key = presented_key(body_key)
    if not key:
        raise Unauthorized("An API key is required (Authorization: Bearer or X-API-Key)")
    record = r.hgetall(keys.api_key(hashlib.sha256(key.encode()).hexdigest()))
    if not record or record.get(b"revoked") == b"1":
        raise Unauthorized("Invalid or revoked API key")
    return record[b"tenant"].decode()
