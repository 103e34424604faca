"""The Celery application both sides share: the web sends tasks by name, workers define them."""

from __future__ import annotations

from celery import Celery

from shared.settings import Settings
from shared.tasks import CONTROL_QUEUE


def make_celery(settings: Settings, name: str = "paddock") -> Celery:
    app = Celery(name, broker=settings.redis_url)
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
        broker_transport_options={"visibility_timeout": 3600},
        broker_connection_timeout=5,
        worker_hijack_root_logger=False,
        enable_utc=True,
        timezone="UTC",
    )
    return app
