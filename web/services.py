"""The objects every route works with, built once by ``create_app`` and kept on the app.

Routes take them with ``current_services()``; nothing here opens a connection or reads the
environment (tests build an app on fakeredis and reach the same objects through
``app.extensions["paddock"]``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from flask import current_app

if TYPE_CHECKING:
    # Types only: web.auth imports this module, and the services import web.metrics, which
    # imports web.auth.
    import redis
    from celery import Celery

    from shared.accounts import Accounts
    from shared.crypto import SecretBox
    from shared.secrets import SecretBundles
    from shared.sessions import Sessions
    from shared.settings import Settings
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
    # Agent sessions (the v1 API's word): their records, events and sockets.
    sessions: Sessions
    agent_sessions: AgentSessions


def current_services() -> Services:
    """The app's services (inside a request or an app context)."""
    services: Services = current_app.extensions["paddock"]
    return services
