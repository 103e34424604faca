"""The Celery application both sides share: the web sends tasks by name, workers define them.

The broker is PADDOCK_BROKER_URL's Redis, or PADDOCK_REDIS_URL's when that is empty: Celery's
queues (kombu's keys: the queue lists, ``_kombu.*``, ``unacked*``) live there and nowhere else;
state, output and the replies of shared.rpc stay on PADDOCK_REDIS_URL.

``python -m shared.broker ARGS`` is the ``celery`` command with this app, so it reaches the
broker with its URL's password, ACL user and TLS options, e.g. ``flower --port=5555`` or
``inspect ping``. The URL stays in the environment, out of ``ps``."""

from __future__ import annotations

import sys

from celery import Celery

from shared.redisconn import parse_redis_url
from shared.settings import Settings
from shared.tasks import CONTROL_QUEUE

# Seconds one broker command or connect may take; longer than kombu's BRPOP (1 s).
BROKER_SOCKET_TIMEOUT = 5.0


def make_celery(settings: Settings, name: str = "paddock") -> Celery:
    """Raises ConfigError when the broker's URL does not parse."""
    target = parse_redis_url(settings.broker_redis_url, settings.broker_var)
    app = Celery(name, broker=target.broker_url())
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        # Replies travel on our own Redis lists (shared.rpc), so Celery keeps no results.
        task_ignore_result=True,
        result_backend=None,
        task_default_queue=CONTROL_QUEUE,
        task_create_missing_queues=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": 3600,
            # kombu waits forever by default: a broker that hangs (stopped, a dead route)
            # would hang every send. With these a send fails in seconds (each of Celery's
            # publish retries waits at most this), and the web answers 503 (shared.rpc).
            "socket_timeout": BROKER_SOCKET_TIMEOUT,
            "socket_connect_timeout": BROKER_SOCKET_TIMEOUT,
            "socket_keepalive": True,
        },
        broker_connection_timeout=5,
        # rediss://: kombu alone would skip certificate checks when the URL names none; these
        # are our parser's options, verifying unless the URL says ssl_cert_reqs=none.
        broker_use_ssl=target.ssl_options() or None,
        worker_hijack_root_logger=False,
        enable_utc=True,
        timezone="UTC",
    )
    return app


if __name__ == "__main__":
    sys.exit(make_celery(Settings.from_env()).start(sys.argv[1:]) or 0)
