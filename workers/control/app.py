"""Assemble the Celery app of the control worker: the reaper, the login mails and the one
scheduler of periodic tasks."""

from __future__ import annotations

import logging
import os
import smtplib
import socket
from typing import Any

from celery import Celery
from celery.signals import worker_ready, worker_shutdown

from shared import tasks
from shared.broker import make_celery
from shared.settings import Settings
from workers.control import mailer, reaper
from workers.control.scheduler import Periodic, Scheduler
from workers.host.context import WorkerContext

logger = logging.getLogger(__name__)


def create_control_app(settings: Settings) -> Celery:
    """The control worker: the ``control`` queue and the periodic reaper. Periodic tasks are
    sent by a scheduler thread in every control worker, one tick claimed in Redis by exactly
    one of them (scheduler.py): no Celery beat, no child process, no schedule file."""
    app = make_celery(settings)
    ctx = WorkerContext(settings)

    # Not acks_late and delivered-twice safe: a reap only reads the indexes and sends destroys,
    # which are idempotent; the scheduler sends a fresh one every interval anyway.
    @app.task(name=tasks.REAP, ignore_result=True, expires=settings.reaper_interval)
    def reap() -> int:
        reaper.record_tick(ctx.redis, tasks.REAP)
        ended = reaper.expire_sessions(app, ctx.redis, settings)
        reaper.lose_dead_hosts(ctx.redis, settings)
        return len(reaper.reap(app, ctx.redis, settings)) + len(ended)

    # acks_late: a mail must not vanish with a worker that dies mid-send; delivered twice, the
    # user gets the same code twice, which is harmless. Retried with backoff on SMTP errors.
    @app.task(
        name=tasks.SEND_LOGIN_CODE,
        ignore_result=True,
        acks_late=True,
        autoretry_for=(smtplib.SMTPException, OSError),
        retry_backoff=2,
        max_retries=3,
    )
    def send_login_code(email: str, sealed_code: str) -> None:
        mailer.send_login_code(settings, email, ctx.box.open_text(sealed_code))

    scheduler = Scheduler(
        app,
        ctx.redis,
        [Periodic(tasks.REAP, settings.reaper_interval)],
        owner=f"{socket.gethostname()}:{os.getpid()}",
    )

    @worker_ready.connect(weak=False)
    def on_control_ready(**_: Any) -> None:
        scheduler.start()
        logger.info("control: scheduler started (%s)", scheduler.owner)

    @worker_shutdown.connect(weak=False)
    def on_control_shutdown(**_: Any) -> None:
        scheduler.stop.set()

    return app
