"""The Flask application factory. ``gunicorn 'web.app:create_app()'`` serves it."""

from __future__ import annotations

import logging

import redis
from celery import Celery
from flask import Flask

from shared.broker import make_celery
from shared.settings import Settings
from web.api import filesystem, meta, processes, sessions
from web.api.deps import Services
from web.errors import register_error_handlers
from web.sandboxes import Sandboxes


def create_app(
    settings: Settings | None = None,
    redis_client: redis.Redis | None = None,
    celery: Celery | None = None,
) -> Flask:
    """Build the app. Settings default to the environment; clients are made lazily by
    redis-py and Celery (no connection is opened here)."""
    settings = settings or Settings.from_env()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    r = redis_client or redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.wait_timeout + 30,
        socket_connect_timeout=5,
        health_check_interval=30,
    )
    celery = celery or make_celery(settings)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["paddock"] = Services(settings, r, celery, Sandboxes(settings, r, celery))
    for bp in (meta.bp, sessions.bp, filesystem.bp, processes.bp):
        app.register_blueprint(bp)
    register_error_handlers(app)
    return app
