"""The Flask application factory. gunicorn serves ``web.app:create_app()`` (web/gunicorn_conf.py,
the one gunicorn configuration)."""

from __future__ import annotations

import logging

import redis
from celery import Celery
from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from shared.accounts import Accounts
from shared.broker import make_celery
from shared.crypto import SecretBox
from shared.errors import ConfigError
from shared.redisconn import redis_client as make_redis_client
from shared.secrets import SecretBundles
from shared.settings import Settings
from web import (
    gunicorn_conf,
    terminal,  # noqa: F401  (registers /v1/sandboxes/{id}/terminal)
)
from web import metrics as web_metrics
from web.agent_sessions import AgentSessions
from web.api import docs, e2b, e2b_control, v1
from web.api.envd import EnvdApp, EnvdDispatch
from web.brokerprobe import BrokerProbe
from web.browser import register_browser_guards
from web.console import bp as console_bp
from web.errors import register_error_handlers
from web.jsonprovider import OrjsonProvider
from web.ports import PortsDispatch
from web.sandboxes import Sandboxes
from web.services import Services
from web.ws import init_ws

# The whole URL surface: each package's blueprint gathers one module per resource (the v1
# WebSockets are web/ws.py and web/terminal.py; /metrics is web/metrics.py).
BLUEPRINTS = (
    e2b.bp,  # /health, /openapi.json, /sessions/... (E2B-compatible)
    e2b_control.bp,  # /sandboxes, /v2/sandboxes... (today's E2B SDKs' control API)
    v1.bp,  # /v1/...
    docs.bp,  # /docs (Swagger UI)
    console_bp,  # /console (web/console/: the web console's page and assets)
)


def create_app(
    settings: Settings | None = None,
    redis_client: redis.Redis | None = None,
    celery: Celery | None = None,
) -> Flask:
    """Build the app. Settings default to the environment; clients are made lazily by
    redis-py and Celery (no connection is opened here).

    Raises ConfigError when a required secret (JWT secret, secret key) is missing.
    """
    settings = settings or Settings.from_env()
    if len(settings.jwt_secret) < 32:
        raise ConfigError("PADDOCK_JWT_SECRET must be set (32+ characters; make up makes one)")
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    r = redis_client or make_redis_client(
        settings.redis_url,
        # Longer than our longest blocking call (BLPOP while a sandbox is created).
        socket_timeout=max(settings.task_timeout, settings.create_timeout) + 30,
        socket_connect_timeout=5,
        health_check_interval=30,
        # Every waiting request (long-poll, WebSocket pump) holds a connection while it blocks,
        # and an evented worker holds thousands of them: redis-py's default cap (100) would
        # fail the 101st with "Too many connections".
        max_connections=gunicorn_conf.worker_connections + 200,
    )
    celery = celery or make_celery(settings)
    # The broker's own Redis when PADDOCK_BROKER_URL is set: /health and the queue lengths.
    broker = BrokerProbe.from_settings(settings, r)
    box = SecretBox(settings.secret_key)
    app = Flask(__name__)
    app.json = OrjsonProvider(app)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    if settings.proxy_hops:
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app,
            x_for=settings.proxy_hops,
            x_proto=settings.proxy_hops,
            x_host=settings.proxy_hops,
        )
    sandboxes = Sandboxes(settings, r, celery)
    sessions = sandboxes.sessions
    secret_bundles = SecretBundles(r, box)
    agent_sessions = AgentSessions(
        settings, celery, sessions, secret_bundles, sandboxes, sandboxes.store
    )
    services = Services(
        settings=settings,
        redis=r,
        celery=celery,
        sandboxes=sandboxes,
        accounts=Accounts(r, settings.jwt_secret),
        secrets=secret_bundles,
        box=box,
        sessions=sessions,
        agent_sessions=agent_sessions,
    )
    app.extensions["paddock"] = services
    app.extensions["paddock.broker"] = broker
    web_metrics.register(app, r, broker.client)  # first: its timer sees every other hook's work
    for bp in BLUEPRINTS:
        app.register_blueprint(bp)
    register_browser_guards(app, settings)
    init_ws(app, services)
    register_error_handlers(app)
    # Last: requests naming a sandbox in E2b-Sandbox-Id are the envd protocol's, served
    # beside Flask on the same port (web/api/envd).
    app.wsgi_app = EnvdDispatch(app.wsgi_app, EnvdApp(services))  # type: ignore[method-assign]
    # Outermost: a Host naming a sandbox port ({port}-{id}.PADDOCK_PREVIEW_DOMAIN) is that
    # port's, whatever its path or headers (web/ports).
    app.wsgi_app = PortsDispatch(app.wsgi_app, services)  # type: ignore[method-assign]
    return app
