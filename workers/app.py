"""Assemble the Celery app of a host worker or of the control worker."""

from __future__ import annotations

import logging
import os
import smtplib
import socket
import threading
from typing import Any

from celery import Celery
from celery.signals import worker_ready, worker_shutdown, worker_shutting_down

from shared import rpc, tasks
from shared.broker import make_celery
from shared.crypto import SecretBox
from shared.settings import Settings
from workers import control, hosts, mailer, metrics
from workers.agent import tasks as agent_tasks
from workers.context import WorkerContext
from workers.tasks import register_host_tasks

logger = logging.getLogger(__name__)


def create_host_app(settings: Settings) -> tuple[Celery, WorkerContext]:
    """The worker of one sandbox host: consumes ``host.<id>`` only."""
    app = make_celery(settings)
    ctx = WorkerContext(settings)
    # Before consuming anything: a host whose engine does not answer, or that cannot cap its
    # sandboxes' disk, must not start (the process exits; its supervisor restarts it with
    # back-off, rather than leaving a worker up that never announces itself).
    ctx.docker.ping()
    logger.info(
        "host %s: capacity %d sandboxes (%s)",
        settings.host_id,
        ctx.capacity.sandboxes,
        ctx.capacity.reason,
    )
    ctx.storage.check(ctx.capacity.sandboxes)
    # Also before: a sandbox with internet starts only behind its host's egress rules (a
    # failure here refuses those, with the reason in the log and in /health).
    ctx.driver.start_network()
    register_host_tasks(app, ctx)
    stop = threading.Event()

    @worker_ready.connect(weak=False)
    def on_ready(**_: Any) -> None:
        if hosts.check_engine(ctx, at_start=True).engine_down:
            # The engine answered a moment ago (create_host_app) and not now: exit, and let
            # the supervisor restart the worker (raising here would only be logged by Celery,
            # leaving a worker up that never announces itself).
            logger.critical("host %s: the engine stopped answering at start", settings.host_id)
            os._exit(3)
        for session_id in agent_tasks.recover(ctx):
            rpc.send(
                app,
                tasks.host_queue(settings.host_id),
                tasks.AGENT_DRAIN,
                {"session_id": session_id},
                expires=settings.session_max_ttl,
            )
        hosts.start_heartbeat(ctx, stop)
        hosts.start_reconcile(ctx, stop)  # dead sandboxes are noticed, not only at start
        procs = ctx.processes
        metrics.serve(settings, metrics.PumpCollector(settings.host_id, procs.count, procs.held))
        logger.info(
            "host %s: ready, consuming %s", settings.host_id, tasks.host_queue(settings.host_id)
        )

    @worker_shutting_down.connect(weak=False)
    def on_shutting_down(**_: Any) -> None:
        # A warm shutdown waits for running tasks; an agent task could run for an hour.
        ctx.stopping.set()

    @worker_shutdown.connect(weak=False)
    def on_shutdown(**_: Any) -> None:
        stop.set()
        try:
            ctx.store.host_down(settings.host_id)
        finally:  # Redis being down must not leave the host's rules and network behind
            ctx.egress.teardown()

    return app, ctx


def create_control_app(settings: Settings) -> Celery:
    """The control worker: the ``control`` queue and the periodic reaper. Periodic tasks are
    sent by a scheduler thread in every control worker, one tick claimed in Redis by exactly
    one of them (control.Scheduler): no Celery beat, no child process, no schedule file."""
    app = make_celery(settings)
    ctx = WorkerContext(settings)
    box = SecretBox(settings.secret_key)

    # Not acks_late and delivered-twice safe: a reap only reads the indexes and sends destroys,
    # which are idempotent; the scheduler sends a fresh one every interval anyway.
    @app.task(name=tasks.REAP, ignore_result=True, expires=settings.reaper_interval)
    def reap() -> int:
        control.record_tick(ctx.redis, tasks.REAP)
        ended = control.expire_sessions(app, ctx.redis, settings)
        control.lose_dead_hosts(ctx.redis, settings)
        return len(control.reap(app, ctx.redis, settings)) + len(ended)

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
        mailer.send_login_code(settings, email, box.open_text(sealed_code))

    scheduler = control.Scheduler(
        app,
        ctx.redis,
        [control.Periodic(tasks.REAP, settings.reaper_interval)],
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
