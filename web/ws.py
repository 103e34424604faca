"""The session WebSocket: ``/v1/sessions/{id}/ws``.

One connection = the request thread, which reads client frames, plus a pump thread that
replays the session's event stream after ``last_seq`` and then follows it with blocking
XREAD. Both write to the socket under one lock. Under gunicorn's gevent worker both "threads"
are greenlets: an open socket costs no OS thread. Connection-level frames (``ready``,
``pong``, errors about a client frame) are not part of the history and carry no ``seq``.

Limits: ``ws_max_connections`` per session (past it the socket is closed with 4429), and
``tenant_max_sockets`` per tenant, a slot in ``shared.slots`` taken before the handshake, so
past it the client gets a plain HTTP 429 with Retry-After instead of an upgrade.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import secrets
import threading
import time
from collections import deque
from typing import Any

import orjson
from flask import Flask, current_app, g, request
from flask_sock import Sock
from simple_websocket import ConnectionClosed

from shared.errors import QuotaExceeded, Unauthorized
from shared.slots import SOCKETS, Slots
from web import metrics, tokens
from web.agent_sessions import SESSION_AUDIENCE
from web.api.v1 import sessions as v1_sessions
from web.api.v1.sessions import MAX_SEQ, SEQ
from web.auth import bearer
from web.services import Services, current_services

logger = logging.getLogger(__name__)
sock = Sock()

CLOSE_BAD_TOKEN = 4401
CLOSE_WRONG_SESSION = 4403
CLOSE_ENDED = 4404
CLOSE_TOO_MANY = 4429
TASK_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
STALE_AFTER = 90.0  # a connection not seen for this long no longer counts toward the limit
# A tenant's socket slot lives this long unless refreshed: a web worker that dies holding
# sockets frees their slots within it. Refreshed every SLOT_REFRESH while the socket is open.
SLOT_TTL = STALE_AFTER
SLOT_REFRESH = SLOT_TTL / 3
# An idle connection wakes this rarely: the pump to see whether its session ended and to beat
# (XREAD BLOCK returns at once when an event comes), the reader to see whether the pump closed
# the socket (the pump also wakes it at once, see `close`). An idle socket then costs under one
# Redis call a second (it was four: a thousand idle sockets took most of a web worker's CPU).
PUMP_BLOCK_MS = 5000
RECEIVE_WAKE = 30.0
SLOTS_RETRY_AFTER = 5  # seconds; a slot frees when any of the tenant's sockets closes


def init_ws(app: Flask, services: Services) -> None:
    app.config["SOCK_SERVER_OPTIONS"] = {
        # simple-websocket pings every interval and drops a client that did not answer the
        # previous ping: a silent client is gone within two intervals.
        "ping_interval": services.settings.ws_ping_interval,
        "max_message_size": services.settings.ws_max_frame_bytes,
    }
    sock.init_app(app)
    app.extensions["paddock.ws_slots"] = Slots(services.redis)
    app.before_request(_take_socket_slot)
    app.teardown_request(_release_socket_slot)


def _claims() -> dict[str, Any] | None:
    """The session token's claims (bearer header or ``token`` query), None when invalid.
    Verified once per request. Never log the token: it may be in the query string."""
    if "ws_claims" not in g:
        token = bearer() or request.args.get("token") or ""
        try:
            g.ws_claims = tokens.verify(
                current_services().settings.jwt_secret, token, SESSION_AUDIENCE
            )
        except Unauthorized:
            g.ws_claims = None
    claims: dict[str, Any] | None = g.ws_claims
    return claims


def _take_socket_slot() -> None:
    """Before the handshake of a session WebSocket: hold one of the tenant's socket slots, or
    refuse with 429 while the connection is still plain HTTP (after the upgrade, all a server
    can say is a close code, which browsers do not show and clients do not retry on).

    Raises QuotaExceeded (429, Retry-After) when the tenant holds ``tenant_max_sockets``.
    A bad token takes no slot: the socket handler closes it with 4401.
    """
    if request.url_rule is None or not request.url_rule.websocket:
        return  # not a WebSocket (the terminal's, web/terminal.py, has no session token: no slot)
    claims = _claims()
    tenant_id = claims.get("tenant") if claims else None
    if not isinstance(tenant_id, str):
        return
    limit = current_services().settings.tenant_max_sockets
    slot = _slots().acquire(SOCKETS, tenant_id, limit, SLOT_TTL)
    if slot is None:
        logger.warning("tenant %s: socket quota (%d) reached", tenant_id, limit)
        raise QuotaExceeded(
            f"Too many open session WebSockets: this tenant's quota is {limit} "
            "(PADDOCK_TENANT_MAX_SOCKETS); close one and retry",
            retry_after=SLOTS_RETRY_AFTER,
        )
    g.ws_slot = (tenant_id, slot)


def _release_socket_slot(_exc: BaseException | None) -> None:
    # After the socket handler returned (flask-sock runs it inside the request), or after a
    # failed handshake: the slot is given back either way.
    held = g.pop("ws_slot", None)
    if held is not None:
        _slots().release(SOCKETS, *held)


def _slots() -> Slots:
    slots: Slots = current_app.extensions["paddock.ws_slots"]
    return slots


class Connection:
    def __init__(
        self,
        ws: Any,
        services: Services,
        session_id: str,
        tenant_id: str,
        slot: tuple[str, str] | None = None,
    ) -> None:
        self.ws = ws
        self.services = services
        self.session_id = session_id
        self.tenant_id = tenant_id
        self.slot = slot  # (tenant, token) of the tenant socket slot this connection holds
        self.slots = _slots()  # (the pump runs outside the app context)
        self.slot_refreshed = time.monotonic()
        self.conn_id = secrets.token_hex(8)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.recent: deque[float] = deque()

    def send(self, frame: dict[str, Any]) -> None:
        with self.lock:
            self.ws.send(json.dumps(frame, separators=(",", ":")))

    def close(self, code: int, reason: str) -> None:
        self.stop.set()
        with self.lock, contextlib.suppress(ConnectionClosed):
            self.ws.close(reason=code, message=reason)
        # Wake `serve` out of its receive() now rather than at its next RECEIVE_WAKE
        # (simple-websocket's reader sets this same event when the peer closes).
        event = getattr(self.ws, "event", None)
        if event is not None:
            event.set()

    def error(self, code: str, message: str) -> None:
        self.send({"type": "error", "code": code, "message": message})

    # -- server → client ---------------------------------------------------------------------
    def pump(self, after: int) -> None:
        sessions = self.services.sessions
        try:
            while not self.stop.is_set():
                for frame in sessions.events_after(
                    self.session_id, after, 200, block_ms=PUMP_BLOCK_MS
                ):
                    self.send(frame)
                    after = int(frame["seq"])
                if self.stop.is_set():
                    return  # the client left while we waited: no beat after close_socket
                s = sessions.load(self.session_id)
                if s is None or s.ended:
                    # Deliver what the end produced, then say goodbye.
                    for frame in sessions.events_after(self.session_id, after, 1000):
                        self.send(frame)
                    self.close(CLOSE_ENDED, "session ended")
                    return
                sessions.beat_socket(self.session_id, self.conn_id, STALE_AFTER)
                self.refresh_slot()
        except ConnectionClosed:
            self.stop.set()
        except Exception:
            logger.exception("session %s: event pump failed", self.session_id)
            self.close(1011, "internal error")

    def refresh_slot(self) -> None:
        if self.slot is None or time.monotonic() - self.slot_refreshed < SLOT_REFRESH:
            return
        self.slots.refresh(SOCKETS, *self.slot, SLOT_TTL)
        self.slot_refreshed = time.monotonic()

    # -- client → server ---------------------------------------------------------------------
    def serve(self) -> None:
        limit = self.services.settings.ws_messages_per_10s
        while not self.stop.is_set():
            try:
                raw = self.ws.receive(timeout=RECEIVE_WAKE)
            except ConnectionClosed:
                break
            if raw is None:
                continue
            now = time.monotonic()
            self.recent.append(now)
            while self.recent and self.recent[0] < now - 10:
                self.recent.popleft()
            if len(self.recent) > limit:
                self.close(CLOSE_TOO_MANY, "too many messages")
                break
            self.handle(raw)

    def handle(self, raw: str | bytes) -> None:
        try:
            # orjson: strict UTF-8, no lone surrogates (which could not be stored or sent on),
            # bounded depth (no RecursionError); nothing below walks a frame recursively.
            frame = orjson.loads(raw)
        except orjson.JSONDecodeError:
            self.error("invalid_frame", "frames must be JSON text")
            return
        if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
            self.error("invalid_frame", 'frames must be JSON objects with a "type"')
            return
        kind = frame["type"]
        if kind == "ping":
            self.send({"type": "pong"})
        elif kind == "task":
            self.task(frame)
        elif kind == "cancel":
            task_id = self.services.sessions.request_cancel(self.session_id)
            logger.info("session %s: cancel requested (task %s)", self.session_id, task_id)
        else:
            self.error("unknown_type", f"unknown frame type {kind[:40]!r}")

    def task(self, frame: dict[str, Any]) -> None:
        prompt = frame.get("prompt")
        task_id = frame.get("id")
        if not isinstance(prompt, str) or not prompt.strip():
            self.error("invalid_task", "a task needs a non-empty string prompt")
            return
        limit = self.services.settings.ws_max_prompt_bytes
        if len(prompt.encode()) > limit:
            self.error("prompt_too_large", f"the prompt is over {limit} bytes")
            return
        if task_id is not None and (not isinstance(task_id, str) or not TASK_ID.match(task_id)):
            self.error("invalid_task", "id must be 1-64 letters, digits or _.:-")
            return
        task_id = task_id or "tsk_" + secrets.token_hex(8)
        s = self.services.sessions.load(self.session_id)
        if s is None or s.ended:
            self.close(CLOSE_ENDED, "session ended")
            return
        queued = self.services.settings.session_max_queued_tasks
        if not self.services.sessions.enqueue_job(self.session_id, task_id, prompt, queued):
            self.error(
                "queue_full",
                f"{queued} tasks already wait in this session (PADDOCK_SESSION_MAX_QUEUED_TASKS);"
                " send this one when one has run",
            )
            return
        self.services.agent_sessions.run_next(s)


# Under the v1 sessions blueprint: /v1/sessions/<session_id>/ws.
@sock.route("/<session_id>/ws", bp=v1_sessions.bp)
def session_ws(ws: Any, session_id: str) -> None:
    services = current_services()
    claims = _claims()
    if claims is None:
        ws.close(reason=CLOSE_BAD_TOKEN, message="invalid or expired token")
        return
    if claims.get("sub") != session_id:
        ws.close(reason=CLOSE_WRONG_SESSION, message="this token is for another session")
        return
    s = services.sessions.load(session_id)
    if s is None or s.ended or s.tenant_id != claims.get("tenant"):
        ws.close(reason=CLOSE_ENDED, message="session ended or unknown")
        return
    # Without last_seq a client gets live events only (ready tells it where history ends; the
    # events route pages through what came before). With it, everything after N first.
    raw_last = request.args.get("last_seq")
    current = services.sessions.last_seq(session_id)
    # As the events route: ASCII digits up to MAX_SEQ ("²" passes isdigit, int() refuses it).
    valid = raw_last is not None and bool(SEQ.fullmatch(raw_last)) and int(raw_last) <= MAX_SEQ
    after = int(raw_last) if raw_last is not None and valid else current
    conn = Connection(ws, services, session_id, s.tenant_id, g.get("ws_slot"))
    if not services.sessions.open_socket(
        session_id, conn.conn_id, services.settings.ws_max_connections, STALE_AFTER
    ):
        ws.close(reason=CLOSE_TOO_MANY, message="too many connections to this session")
        return
    pump = threading.Thread(target=conn.pump, args=(after,), daemon=True, name=f"ws-{session_id}")
    metrics.OPEN_SOCKETS.inc()
    try:
        conn.send({"type": "ready", "session_id": session_id, "last_seq": current})
        if raw_last is not None and not valid:
            conn.error("invalid_last_seq", "last_seq must be a non-negative integer; ignored")
        pump.start()
        conn.serve()
    finally:
        # Give back the session's and the tenant's counts as soon as the client is gone, not
        # after the pump's current XREAD returns (up to PUMP_BLOCK_MS); the pump checks `stop`
        # before it beats again.
        conn.stop.set()
        metrics.OPEN_SOCKETS.dec()
        services.sessions.close_socket(session_id, conn.conn_id)
        _release_socket_slot(None)
    if pump.is_alive():
        pump.join(PUMP_BLOCK_MS / 1000 + 5)
