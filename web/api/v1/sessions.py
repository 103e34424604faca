"""``/v1/sessions``: agent sessions (their WebSocket is in web/ws.py)."""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, Response, jsonify, request

from shared.errors import ValidationFailed
from shared.sessions import ChatSession
from web.api import validation
from web.api.v1.schemas import (
    CreateSessionRequest,
    EventPage,
    SessionCreated,
    SessionInfo,
    SessionList,
    SessionToken,
)
from web.auth import tenant_from_api_key
from web.services import Services, current_services

bp = Blueprint("sessions", __name__, url_prefix="/sessions")

EVENT_PAGE = 100
SEQ = re.compile(r"[0-9]{1,19}")
MAX_SEQ = 2**63 - 2  # after + 1 is a Redis stream id's first part (64-bit)


def connect_url(services: Services, session_id: str) -> str:
    """The session WebSocket's URL: PADDOCK_PUBLIC_URL's, else the request's, as ws(s)://."""
    base = services.settings.public_url.rstrip("/") or request.host_url.rstrip("/")
    if base.startswith("https://"):
        base = "wss://" + base[len("https://") :]
    elif base.startswith("http://"):
        base = "ws://" + base[len("http://") :]
    return f"{base}/v1/sessions/{session_id}/ws"


def session_info(services: Services, session: ChatSession) -> dict[str, Any]:
    """What `SessionInfo` writes."""
    return {
        "chat_session_id": session.session_id,
        "state": "ended" if session.ended else session.state,
        "sandbox_id": session.sandbox_id,
        "template": session.template,
        "agent": session.agent,
        "llm": session.llm,
        "secrets": session.secrets,
        "user_id": session.user_id,
        "created_at": session.created_at,
        "expires_at": session.expires_at,
        "last_seq": services.sessions.last_seq(session.session_id),
    }


@bp.post("")
@tenant_from_api_key
def create_session(tenant_id: str) -> tuple[Response, int]:
    services = current_services()
    created = services.agent_sessions.create(tenant_id, validation.body(CreateSessionRequest()))
    session = created.session
    answer = {
        "chat_session_id": session.session_id,
        "jwt": created.token,
        "connect_url": connect_url(services, session.session_id),
        "expires_at": session.expires_at,
    }
    return jsonify(SessionCreated().dump(answer)), 201


@bp.post("/<session_id>/token")
@tenant_from_api_key
def session_token(tenant_id: str, session_id: str) -> tuple[Response, int]:
    """A new WebSocket token for a running session: a client that lost the creating answer's
    (a restart, another browser tab) watches and drives the session again."""
    services = current_services()
    session = services.sessions.get(tenant_id, session_id)
    answer = {
        "jwt": services.agent_sessions.token(session),
        "connect_url": connect_url(services, session.session_id),
        "expires_at": session.expires_at,
    }
    return jsonify(SessionToken().dump(answer)), 201


@bp.get("")
@tenant_from_api_key
def list_sessions(tenant_id: str) -> Response:
    services = current_services()
    infos = [session_info(services, s) for s in services.sessions.of_tenant(tenant_id)]
    return jsonify(SessionList().dump({"sessions": infos}))


@bp.get("/<session_id>")
@tenant_from_api_key
def get_session(tenant_id: str, session_id: str) -> Response:
    services = current_services()
    session = services.sessions.get(tenant_id, session_id)
    return jsonify(SessionInfo().dump(session_info(services, session)))


@bp.delete("/<session_id>")
@tenant_from_api_key
def delete_session(tenant_id: str, session_id: str) -> tuple[str, int]:
    services = current_services()
    services.agent_sessions.end(services.sessions.get(tenant_id, session_id))
    return "", 204


@bp.get("/<session_id>/events")
@tenant_from_api_key
def events(tenant_id: str, session_id: str) -> Response:
    services = current_services()
    raw = request.args.get("after", "0")
    # ASCII digits only (str.isdigit takes "²", which int() refuses) and at most MAX_SEQ: a
    # larger number is no stream id Redis accepts.
    if not SEQ.fullmatch(raw) or int(raw) > MAX_SEQ:
        raise ValidationFailed({"after": f"must be a non-negative integer (a seq) up to {MAX_SEQ}"})
    after = int(raw)
    services.sessions.get(tenant_id, session_id)
    page = services.sessions.events_after(session_id, after, EVENT_PAGE + 1)
    more = len(page) > EVENT_PAGE
    page = page[:EVENT_PAGE]
    answer = {"events": page, "next_after": page[-1]["seq"] if page else after, "has_more": more}
    return jsonify(EventPage().dump(answer))
