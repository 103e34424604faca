"""What a route needs, taken from the app (set up once by create_app)."""

from __future__ import annotations

from dataclasses import dataclass

import redis
from celery import Celery
from flask import current_app

from shared.settings import Settings
from shared.store import Sandbox
from web.auth import tenant_for_request
from web.sandboxes import Sandboxes


@dataclass(frozen=True)
class Services:
    settings: Settings
    redis: redis.Redis
    celery: Celery
    sandboxes: Sandboxes


def services() -> Services:
    svc: Services = current_app.extensions["paddock"]
    return svc


def tenant(body_key: str | None = None) -> str:
    svc = services()
    return tenant_for_request(svc.settings, svc.redis, body_key)


def sandbox(session_id: str) -> Sandbox:
    """The caller's sandbox (idle timer reset). Raises Unauthorized or SessionNotFound."""
    return services().sandboxes.get(tenant(), session_id)
