"""``/v1/sessions``: agent sessions (their WebSocket is in web/ws.py)."""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, Response, jsonify, request

from shared.errors import ValidationFailed
from shared.sessions import ChatSession
from web.api import validation
from web.api.deps import Services, api_tenant, services
from web.api.v1.common import iso
from web.api.v1.schemas import CreateSessionRequest

bp = Blueprint("v1_sessions", __name__)

EVENT_PAGE = 100
SEQ = re.compile(r"[0-9]{1,19}")
MAX_SEQ = 2**63 - 2  # after + 1 is a Redis stream id's first part (64-bit)


def _connect_url(svc: Services, session_id: str) -> str:
    base = svc.settings.public_url.rstrip("/") or request.host_url.rstrip("/")
    if base.startswith("https://"):
        base = "wss://" + base[len("https://") :]
    elif base.startswith("http://"):
        base = "ws://" + base[len("http://") :]
    return f"{base}/v1/sessions/{session_id}/ws"


def session_json(svc: Services, s: ChatSession) -> dict[str, Any]:
    return {
        "chat_session_id": s.session_id,
        "state": "ended" if s.ended else s.state,
        "sandbox_id": s.sandbox_id,
        "template": s.template,
        "agent": s.agent,
        "llm": s.llm,
        "secrets": s.secrets,
        "user_id": s.user_id,
        "created_at": iso(s.created_at),
        "expires_at": iso(s.expires_at),
        "last_seq": svc.sessions.last_seq(s.session_id),
    }


@bp.post("/v1/sessions")
def create_session() -> tuple[Response, int]:
    tenant_id = api_tenant()
    svc = services()
    created = svc.agent_sessions.create(tenant_id, validation.body(CreateSessionRequest()))
    s = created.session
    return jsonify(
        {
            "chat_session_id": s.session_id,
            "jwt": created.token,
            "connect_url": _connect_url(svc, s.session_id),
            "expires_at": iso(s.expires_at),
        }
    ), 201


@bp.get("/v1/sessions")
def list_sessions() -> Response:
    tenant_id = api_tenant()
    svc = services()
    return jsonify({"sessions": [session_json(svc, s) for s in svc.sessions.of_tenant(tenant_id)]})


@bp.get("/v1/sessions/<session_id>")
def get_session(session_id: str) -> Response:
    tenant_id = api_tenant()
    svc = services()
    return jsonify(session_json(svc, svc.sessions.get(tenant_id, session_id)))


@bp.delete("/v1/sessions/<session_id>")
def delete_session(session_id: str) -> tuple[str, int]:
    tenant_id = api_tenant()
    svc = services()
    svc.agent_sessions.end(svc.sessions.get(tenant_id, session_id))
    return "", 204


@bp.get("/v1/sessions/<session_id>/events")
def events(session_id: str) -> Response:
    tenant_id = api_tenant()
    svc = services()
    raw = request.args.get("after", "0")
    # ASCII digits only (str.isdigit takes "²", which int() refuses) and at most MAX_SEQ: a
    # larger number is no stream id Redis accepts.
    if not SEQ.fullmatch(raw) or int(raw) > MAX_SEQ:
        raise ValidationFailed({"after": f"must be a non-negative integer (a seq) up to {MAX_SEQ}"})
    after = int(raw)
    svc.sessions.get(tenant_id, session_id)
    page = svc.sessions.events_after(session_id, after, EVENT_PAGE + 1)
    more = len(page) > EVENT_PAGE
    page = page[:EVENT_PAGE]
    return jsonify(
        {"events": page, "next_after": page[-1]["seq"] if page else after, "has_more": more}
    )
