"""What a route needs, taken from the app (set up once by create_app)."""

from __future__ import annotations

from dataclasses import dataclass

import redis
from celery import Celery
from flask import current_app

from shared.accounts import Accounts
from shared.crypto import SecretBox
from shared.secrets import SecretBundles
from shared.sessions import Sessions
from shared.settings import Settings
from shared.store import Sandbox
from web import auth
from web.agent_sessions import AgentSessions
from web.sandboxes import Sandboxes


@dataclass(frozen=True)
class Services:
    settings: Settings
    redis: redis.Redis
    celery: Celery
    sandboxes: Sandboxes
    accounts: Accounts
    secrets: SecretBundles
    box: SecretBox
    sessions: Sessions
    agent_sessions: AgentSessions


def services() -> Services:
    svc: Services = current_app.extensions["paddock"]
    return svc


def tenant(body_key: str | None = None) -> str:
    """The E2B routes' tenant (local when PADDOCK_AUTH=off)."""
    svc = services()
    return auth.e2b_tenant(svc.settings, svc.accounts, body_key)


def api_tenant() -> str:
    """The v1 API-key routes' tenant: always an API key."""
    return auth.tenant_for_api_key(services().accounts)


def account() -> str:
    svc = services()
    return auth.account_user(svc.settings, svc.accounts)


def sandbox(session_id: str) -> Sandbox:
    """The caller's sandbox (idle timer reset). Raises Unauthorized or SandboxNotFound."""
    return services().sandboxes.get(tenant(), session_id)
