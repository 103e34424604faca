"""``/health``: what a load balancer asks (the E2B API serves it too)."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify, request

from web.api.e2b.schemas import Health
from web.services import current_services

bp = Blueprint("health", __name__)


@bp.get("/health")
def health() -> tuple[str | Response, int, dict[str, str]]:
    """200 while this web process serves (what a load balancer needs), with, after the first
    line ``OK``, one line per live host that cannot do all it should (a host whose egress
    rules are missing gives no sandbox the internet), and one when the state store or the
    task broker (PADDOCK_BROKER_URL) is unreachable. JSON when asked with Accept."""
    problems = list(current_services().sandboxes.problems())
    broker = current_app.extensions["paddock.broker"].problem()
    if broker:
        problems.append({"host": "", "problem": broker})
    if request.accept_mimetypes.best == "application/json":
        body = {"status": "degraded" if problems else "ok", "problems": problems}
        return jsonify(Health().dump(body)), 200, {}
    lines = ["OK"] + [f"{p['host'] or 'web'}: {p['problem']}" for p in problems]
    return "\n".join(lines), 200, {"Content-Type": "text/plain; charset=utf-8"}
