"""Assemble the Celery app of a host worker: its tasks, and what runs beside them (heartbeat,
reconcile, the agent sessions to resume, /metrics)."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from celery import Celery
from celery.signals import worker_ready, worker_shutdown, worker_shutting_down

from shared import commands, rpc, tasks
from shared.broker import make_celery
from shared.settings import Settings
from workers.agent import jobs
from workers.host import heartbeat, metrics, pool, reconcile, relay
from workers.host.context import WorkerContext
from workers.host.tasks import register_host_tasks

logger = logging.getLogger(__name__)


def create_host_app(settings: Settings) -> tuple[Celery, WorkerContext]:
    """The worker of one sandbox host: consumes ``host.<id>`` only."""
    app = make_celery(settings)
    ctx = WorkerContext(settings)
    # Before consuming anything: a host whose engine does not answer, or that cannot cap its
    # sandboxes' disk, must not start (the process exits; its supervisor restarts it with
    # back-off, rather than leaving a worker up that never announces itself).
    ctx.backend.ping()
    logger.info(
        "host %s: capacity %d sandboxes (%s)",
        settings.host_id,
        ctx.capacity.sandboxes,
        ctx.capacity.reason,
    )
    ctx.backend.check_storage(ctx.capacity.sandboxes)
    # Also before: a sandbox with internet starts only behind its host's egress rules (a
    # failure here refuses those, with the reason in the log and in /health).
    ctx.backend.start_network()
    register_host_tasks(app, ctx)
    stop = threading.Event()
    stop_relay: list[Callable[[], None]] = []

    def mine(sender: Any) -> bool:
        # Celery's signals are process-wide: with several host workers in one process (the
        # scale harness, bench/scale/hosts.py), each acts only on its own worker's. Senders:
        # the consumer or worker (their app), or the worker's name ("host-<id>@...").
        if isinstance(sender, str):
            return sender.startswith(f"host-{settings.host_id}@")
        return getattr(sender, "app", app) is app

    @worker_ready.connect(weak=False)
    def on_ready(sender: Any = None, **_: Any) -> None:
        if not mine(sender):
            return
        if reconcile.check_engine(ctx, at_start=True).engine_down:
            # The engine answered a moment ago (create_host_app) and not now: exit, and let
            # the supervisor restart the worker (raising here would only be logged by Celery,
            # leaving a worker up that never announces itself).
            logger.critical("host %s: the engine stopped answering at start", settings.host_id)
            os._exit(3)
        for session_id in jobs.recover(ctx):
            rpc.send(
                app,
                tasks.host_queue(settings.host_id),
                commands.AgentDrain.name,
                commands.AgentDrain(session_id=session_id).to_kwargs(),
                expires=settings.session_max_ttl,
            )
        # The web tier's way into its sandboxes' ports, announced in the heartbeat.
        port_relay, relay_at = relay.start_relay(settings, ctx.backend.address)
        if port_relay is not None:
            stop_relay.append(port_relay.stop)
        heartbeat.start_heartbeat(ctx, stop, relay_at)
        reconcile.start_reconcile(ctx, stop)  # dead sandboxes are noticed, not only at start
        pool.start_pool(ctx, stop)  # warm sandboxes per template, refilled in the background
        procs = ctx.processes
        metrics.serve(settings, metrics.PumpCollector(settings.host_id, procs.count, procs.held))
        logger.info(
            "host %s: ready, consuming %s", settings.host_id, tasks.host_queue(settings.host_id)
        )

    @worker_shutting_down.connect(weak=False)
    def on_shutting_down(sender: Any = None, **_: Any) -> None:
        if not mine(sender):
            return
        # A warm shutdown waits for running tasks; an agent task could run for an hour.
        ctx.stopping.set()

    @worker_shutdown.connect(weak=False)
    def on_shutdown(sender: Any = None, **_: Any) -> None:
        if not mine(sender):
            return
        stop.set()
        for stop_it in stop_relay:
            stop_it()
        try:
            ctx.store.host_down(settings.host_id)
        finally:  # Redis being down must not leave the host's rules and network behind
            ctx.backend.stop_network()

    return app, ctx
