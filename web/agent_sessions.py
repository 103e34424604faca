"""The web side of agent sessions: create one (checks, sandbox, token), queue its jobs (its
prompts) on the sandbox's host, end it. Routes (web/api/v1/sessions.py) and the WebSocket
(web/ws.py) call this; neither holds session logic of its own."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from celery import Celery

from shared import commands, crypto, rpc, tasks
from shared.egress import NetworkPolicy
from shared.errors import BadRequest, SessionEnded, ValidationFailed
from shared.lifecycle import end_session
from shared.netpolicy import check_base_url
from shared.secrets import SecretBundles
from shared.sessions import ChatSession, Sessions
from shared.settings import Settings
from shared.store import Store
from web import tokens
from web.sandboxes import Sandboxes

logger = logging.getLogger(__name__)

SESSION_AUDIENCE = "session"


@dataclass(frozen=True)
class Created:
    session: ChatSession
    token: str


class AgentSessions:
    def __init__(
        self,
        settings: Settings,
        celery: Celery,
        sessions: Sessions,
        secrets: SecretBundles,
        sandboxes: Sandboxes,
        store: Store,
    ) -> None:
        self.settings = settings
        self.celery = celery
        self.sessions = sessions
        self.secrets = secrets
        self.sandboxes = sandboxes
        # Only for shared.lifecycle.end_session, which the reaper runs too.
        self.store = store

    def create(self, tenant_id: str, body: dict[str, Any]) -> Created:
        """A running session from a validated CreateSessionRequest.

        Raises ValidationFailed / BadRequest (agent, LLM, bundles, base_url), BundleNotFound,
        QuotaExceeded (the tenant has ``tenant_max_sessions`` live sessions, checked before any
        sandbox is made), and whatever creating the sandbox raises (NoCapacity, the sandbox
        quota...). Nothing is left behind.
        """
        network = self.sandboxes.network(body.get("network"), "network")
        agent = {k: v for k, v in body["agent"].items() if v is not None}
        if agent["kind"] == "deictic" and body["llm"] is None:
            raise ValidationFailed(
                {"llm": "an LLM (vendor, model) is required for a deictic agent"}
            )
        llm = {k: v for k, v in (body["llm"] or {}).items() if v is not None}
        owners = self._bundle_keys(tenant_id, body["secrets"])
        if agent["kind"] == "deictic":
            self._check_llm(tenant_id, llm, owners)
        ttl = min(body["ttl_seconds"] or self.settings.session_ttl, self.settings.session_max_ttl)
        session_id = crypto.random_id("ses_", 10)
        # Held until the session is recorded (or creation fails): concurrent creates of one
        # tenant cannot all pass the check and then all make sandboxes.
        self.sessions.reserve(
            tenant_id,
            session_id,
            self.settings.tenant_max_sessions,
            hold=self.settings.create_timeout * 2,
        )
        try:
            s = self._start(tenant_id, session_id, body, agent, llm, ttl, network)
        finally:
            self.sessions.release(tenant_id, session_id)
        token = tokens.issue(
            self.settings.jwt_secret, s.session_id, SESSION_AUDIENCE, ttl, tenant=tenant_id
        )
        logger.info(
            "session %s: created for tenant %s (sandbox %s, agent %s)",
            s.session_id,
            tenant_id,
            s.sandbox_id,
            agent["kind"],
        )
        return Created(s, token)

    def _start(
        self,
        tenant_id: str,
        session_id: str,
        body: dict[str, Any],
        agent: dict[str, Any],
        llm: dict[str, Any],
        ttl: int,
        network: NetworkPolicy,
    ) -> ChatSession:
        """The sandbox, then the session record bound to it; the sandbox is removed again if
        the record cannot be written."""
        sandbox = self.sandboxes.create(
            tenant_id, body["template"], field="template", network=network
        )
        now = time.time()
        s = ChatSession(
            session_id=session_id,
            tenant_id=tenant_id,
            sandbox_id=sandbox.sandbox_id,
            host_id=sandbox.host_id,
            template=sandbox.template,
            agent=agent,
            llm=llm,
            secrets=body["secrets"],
            user_id=body["user_id"],
            state="running",
            created_at=now,
            expires_at=now + ttl,
        )
        try:
            self.sessions.create(s)
            self.sandboxes.bind_to_session(sandbox, s.session_id, s.expires_at)
        except Exception:
            self.sandboxes.delete(sandbox)
            raise
        return s

    def token(self, s: ChatSession) -> str:
        """A new token for the session's WebSocket, valid until the session's end (what
        `create` gave; the tenant may end the session, so it may talk to it). Raises
        SessionEnded."""
        left = int(s.expires_at - time.time())
        if s.ended or left <= 0:
            raise SessionEnded("The session has ended: its history stays at /events")
        return tokens.issue(
            self.settings.jwt_secret, s.session_id, SESSION_AUDIENCE, left, tenant=s.tenant_id
        )

    def run_next(self, s: ChatSession) -> None:
        """Make sure a worker on the sandbox's host is running the session's job queue."""
        drain = commands.AgentDrain(session_id=s.session_id)
        rpc.send(
            self.celery,
            tasks.host_queue(s.host_id),
            drain.name,
            drain.to_kwargs(),
            expires=s.expires_at - time.time(),
        )

    def end(self, s: ChatSession) -> None:
        end_session(self.celery, self.sessions, self.store, s, self.settings.task_timeout * 10)

    def _bundle_keys(self, tenant_id: str, names: list[str]) -> dict[str, str]:
        """Key → bundle. Raises BundleNotFound, BadRequest (a key in two bundles)."""
        owner: dict[str, str] = {}
        for name in names:
            for key in self.secrets.get(tenant_id, name).keys:
                if key in owner and owner[key] != name:
                    raise BadRequest(
                        f"secret key {key} is defined by both {owner[key]!r} and {name!r}"
                    )
                owner[key] = name
        return owner

    def _check_llm(self, tenant_id: str, llm: dict[str, Any], owners: dict[str, str]) -> None:
        if "LLM_API_KEY" not in owners:
            raise ValidationFailed({"secrets": "a bundle with LLM_API_KEY is required"})
        base_url = llm.get("base_url")
        if base_url is None and "LLM_BASE_URL" in owners:
            base_url = self.secrets.values(tenant_id, owners["LLM_BASE_URL"])["LLM_BASE_URL"]
        if base_url:
            check_base_url(base_url, self.settings.llm_allowed_hosts)
