"""A host announces itself: its capacity, its templates (with what /v1/templates shows of each),
whether its egress rules are in place and where its port relay listens, every
settings.heartbeat_interval seconds."""

from __future__ import annotations

import logging
import threading

from workers.host.context import WorkerContext

logger = logging.getLogger(__name__)


def heartbeat_once(ctx: WorkerContext, relay: str = "") -> None:
    """Announce capacity and the local templates, with what /v1/templates shows of each (image,
    size, build date, language versions), all from one listing of the backend, and ``relay``
    (the port relay's ``host:port``, workers/host/relay.py; empty: none)."""
    s = ctx.settings
    catalog = ctx.backend.templates()
    egress_error = ctx.backend.network_problem()
    ctx.store.heartbeat(
        s.host_id,
        ctx.capacity.sandboxes,
        [t.name for t in catalog],
        ttl=s.heartbeat_interval * 3,
        catalog=[t.to_json() for t in catalog],
        egress=egress_error or "ok",
        relay=relay,
    )


def start_heartbeat(ctx: WorkerContext, stop: threading.Event, relay: str = "") -> threading.Thread:
    def loop() -> None:
        # Never dies: a failed beat (Redis away) is logged once per outage and the next one
        # comes at the usual interval, so the host is announced again as soon as Redis is back.
        failing = False
        while not stop.is_set():
            try:
                heartbeat_once(ctx, relay)
                if failing:
                    logger.info("host %s: heartbeat back", ctx.settings.host_id)
                failing = False
            except Exception:
                if not failing:
                    logger.exception("host %s: heartbeat failed", ctx.settings.host_id)
                failing = True
            stop.wait(ctx.settings.heartbeat_interval)
        try:
            ctx.store.host_down(ctx.settings.host_id)
        except Exception:
            logger.exception(
                "host %s: not marked down (its heartbeat expires)", ctx.settings.host_id
            )
        logger.info("host %s: heartbeat stopped", ctx.settings.host_id)

    t = threading.Thread(target=loop, name="heartbeat", daemon=True)
    t.start()
    return t
