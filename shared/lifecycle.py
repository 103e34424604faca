"""Ending an agent session: one function for DELETE and for expiry, so both do the same."""

from __future__ import annotations

import logging

from celery import Celery

from shared import rpc, tasks
from shared.sessions import ChatSession, Sessions
from shared.store import Store

logger = logging.getLogger(__name__)

HISTORY_AFTER_END = 3600  # seconds the event history stays readable after the end


def end_session(
    app: Celery, sessions: Sessions, store: Store, s: ChatSession, destroy_timeout: float
) -> None:
    """Mark the session ended (its sockets close with 4404 and its running task stops at its
    next check), then have the owner host remove the sandbox. Idempotent."""
    if sessions.end(s, keep_for=HISTORY_AFTER_END):
        logger.info("session %s: ended", s.session_id)
    if store.begin_delete(s.sandbox_id):
        rpc.send(
            app,
            tasks.host_queue(s.host_id),
            tasks.SANDBOX_DESTROY,
            {"sandbox_id": s.sandbox_id},
            expires=destroy_timeout,
        )
