"""``/v1/sessions``: agent sessions (their WebSocket is in web/ws.py)."""

from __future__ import annotations

import logging
import time
from typing import Any

from flask import Blueprint, Response, jsonify, request

from shared import crypto, rpc, tasks
from shared.errors import BadRequest, ValidationFailed
from shared.lifecycle import end_session
from shared.netpolicy import check_base_url
from shared.sessions import ChatSession
from web import tokens
from web.api import validation
from web.api.deps import Services, api_tenant, services
from web.api.v1.common import iso
from web.api.v1.schemas import CreateSessionRequest

logger = logging.getLogger(__name__)
bp = Blueprint("v1_sessions", __name__)

SESSION_AUDIENCE = "session"
EVENT_PAGE = 100


def _bundle_keys(svc: Services, tenant_id: str, names: list[str]) -> dict[str, str]:
    """Key → bundle over the named bundles. Raises BundleNotFound, BadRequest (a key twice)."""
    owner: dict[str, str] = {}
    for name in names:
        for key in svc.secrets.get(tenant_id, name).keys:
            if key in owner and owner[key] != name:
                raise BadRequest(f"secret key {key} is defined by both {owner[key]!r} and {name!r}")
            owner[key] = name
    return owner


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
    body = validation.body(CreateSessionRequest())
    agent, llm = body["agent"], body["llm"]
    agent = {k: v for k, v in agent.items() if v is not None}
    if agent["kind"] == "deictic" and llm is None:
        raise ValidationFailed({"llm": "an LLM (vendor, model) is required for a deictic agent"})
    llm = {k: v for k, v in (llm or {}).items() if v is not None}
    owners = _bundle_keys(svc, tenant_id, body["secrets"])
    if agent["kind"] == "deictic":
        if "LLM_API_KEY" not in owners:
            raise ValidationFailed({"secrets": "a bundle with LLM_API_KEY is required"})
        base_url = llm.get("base_url")
        if base_url is None and "LLM_BASE_URL" in owners:
            base_url = svc.secrets.values(tenant_id, owners["LLM_BASE_URL"])["LLM_BASE_URL"]
        if base_url:
            check_base_url(base_url, svc.settings.llm_allowed_hosts)
    ttl = body["ttl_seconds"] or svc.settings.session_ttl
    ttl = min(ttl, svc.settings.session_max_ttl)
    sb = svc.sandboxes.create(tenant_id, body["template"], field="template")
    now = time.time()
    s = ChatSession(
        session_id=crypto.random_id("ses_", 10),
        tenant_id=tenant_id,
        sandbox_id=sb.sandbox_id,
        host_id=sb.host_id,
        template=sb.template,
        agent=agent,
        llm=llm,
        secrets=body["secrets"],
        user_id=body["user_id"],
        state="running",
        created_at=now,
        expires_at=now + ttl,
    )
    svc.sessions.create(s)
    svc.sandboxes.store.bind_lifetime(sb.sandbox_id, s.expires_at, s.session_id)
    token = tokens.issue(
        svc.settings.jwt_secret, s.session_id, SESSION_AUDIENCE, ttl, tenant=tenant_id
    )
    logger.info(
        "session %s: created for tenant %s (sandbox %s, agent %s)",
        s.session_id,
        tenant_id,
        sb.sandbox_id,
        agent["kind"],
    )
    return jsonify(
        {
            "chat_session_id": s.session_id,
            "jwt": token,
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
    s = svc.sessions.get(tenant_id, session_id)
    end_session(svc.celery, svc.sessions, svc.sandboxes.store, s, svc.settings.task_timeout * 10)
    return "", 204


@bp.get("/v1/sessions/<session_id>/events")
def events(session_id: str) -> Response:
    tenant_id = api_tenant()
    svc = services()
    svc.sessions.get(tenant_id, session_id)
    raw = request.args.get("after", "0")
    if not raw.isdigit():
        raise ValidationFailed({"after": "must be a non-negative integer (a seq)"})
    after = int(raw)
    page = svc.sessions.events_after(session_id, after, EVENT_PAGE + 1)
    more = len(page) > EVENT_PAGE
    page = page[:EVENT_PAGE]
    return jsonify(
        {"events": page, "next_after": page[-1]["seq"] if page else after, "has_more": more}
    )


def kick_runner(svc: Services, s: ChatSession) -> None:
    """Make sure a worker on the sandbox's host is running the session's task queue."""
    rpc.send(
        svc.celery,
        tasks.host_queue(s.host_id),
        tasks.AGENT_DRAIN,
        {"session_id": s.session_id},
        expires=s.expires_at - time.time(),
    )
