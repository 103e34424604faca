"""Ending an agent session: one function for DELETE and for expiry, so both do the same, and
one for a session whose sandbox was lost."""

from __future__ import annotations

import logging

from celery import Celery

from shared import commands, rpc, tasks
from shared.sessions import ChatSession, Sessions
from shared.store import Store

logger = logging.getLogger(__name__)

HISTORY_AFTER_END = 3600  # seconds the event history stays readable after the end


def end_session(
    app: Celery, sessions: Sessions, store: Store, s: ChatSession, destroy_timeout: float
) -> None:
    """Mark the session ended (its sockets close with 4404 and its running job stops at its
    next check), then have the owner host remove the sandbox. Idempotent."""
    if sessions.end(s, keep_for=HISTORY_AFTER_END):
        logger.info("session %s: ended", s.session_id)
    if store.begin_delete(s.sandbox_id):
        rpc.send(
            app,
            tasks.host_queue(s.host_id),
            commands.SandboxDestroy.name,
            commands.SandboxDestroy(sandbox_id=s.sandbox_id).to_kwargs(),
            expires=destroy_timeout,
        )


def end_lost_session(sessions: Sessions, store: Store, sandbox_id: str, reason: str) -> None:
    """The sandbox (already marked ``lost``) belonged to an agent session: the session cannot
    go on without it. Its clients get an ``error`` frame saying why, then it ends like any
    other (sockets close with 4404; its history stays readable). A no-op for a sandbox of no
    session, or a session already ended; safe to repeat."""
    session_id = store.raw_sandbox(sandbox_id).get("session")
    s = sessions.load(session_id) if session_id else None
    if s is None or s.ended:
        return
    frame = {
        "type": "error",
        "code": "sandbox_lost",
        "message": f"the session's sandbox was lost ({reason}); the session has ended",
    }
    sessions.emit(s.session_id, frame, token=f"lost:{sandbox_id}")
    if sessions.end(s, keep_for=HISTORY_AFTER_END):
        logger.warning("session %s: ended, its sandbox %s was lost", s.session_id, sandbox_id)
