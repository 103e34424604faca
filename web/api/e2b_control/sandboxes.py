"""The E2B control API's sandbox routes: create, get, list, kill, timeout, refresh, pause,
resume/connect, metrics. The paths and bodies are E2B's (what ``pip install e2b`` sends);
the sandboxes are ordinary Paddock sandboxes of the caller's tenant."""

from __future__ import annotations

import time
from contextlib import suppress
from urllib.parse import urlsplit

from flask import Blueprint, Response, jsonify, request

from shared.errors import SandboxStateConflict, ValidationFailed
from shared.store import Sandbox
from web.api import validation
from web.api.e2b_control import schemas, wire
from web.api.e2b_control.state import control_state
from web.auth import tenant_from_e2b_sdk_key
from web.services import Services, current_services

bp = Blueprint("sandboxes", __name__)


@bp.post("/sandboxes")
@bp.post("/v2/sandboxes")
@tenant_from_e2b_sdk_key
def create(tenant_id: str) -> tuple[Response, int]:
    body = validation.body(schemas.NewSandbox(), "body")
    services = current_services()
    spec = wire.create_spec(body, services.sandboxes)
    sandbox = services.sandboxes.create(
        tenant_id, spec.template, field="body.templateID", network=spec.network
    )
    state = control_state(services)
    try:
        tokens = state.adopt(
            sandbox,
            metadata=spec.metadata,
            env=spec.env,
            timeout=spec.timeout,
            public=spec.public,
            internet=spec.internet,
        )
    except BaseException:
        services.sandboxes.delete(sandbox)  # nothing half-made is left
        raise
    answer = wire.created(sandbox, tokens, alias=body["templateID"], domain=_domain(services))
    return jsonify(schemas.Sandbox().dump(answer)), 201


def _domain(services: Services) -> str:
    """The domain the SDK's ``get_host(port)`` builds ``{port}-{id}.<domain>`` on: the preview
    domain, served on the port this request reached (the ports proxy is the same server), so
    no ``E2B_DOMAIN`` is needed. Behind a proxy, its ``X-Forwarded-Host`` (PADDOCK_PROXY_HOPS)."""
    port = urlsplit(f"//{request.host}").port
    domain = services.settings.preview_domain
    return f"{domain}:{port}" if port else domain


@bp.get("/v2/sandboxes")
@tenant_from_e2b_sdk_key
def list_v2(tenant_id: str) -> Response:
    query = wire.list_query(request.args, paged=True)
    found, next_token = wire.page(query, _listing(current_services(), tenant_id, query))
    resp = jsonify(schemas.ListedSandbox(many=True).dump(found))
    if next_token:
        resp.headers["X-Next-Token"] = next_token
    return resp


@bp.get("/sandboxes")
@tenant_from_e2b_sdk_key
def list_running(tenant_id: str) -> Response:
    """The older list: running sandboxes, metadata filter, no pages."""
    query = wire.list_query(request.args, paged=False)
    found, _ = wire.page(query, _listing(current_services(), tenant_id, query))
    return jsonify(schemas.ListedSandbox(many=True).dump(found))


@bp.get("/sandboxes/<sandbox_id>")
@tenant_from_e2b_sdk_key
def get(tenant_id: str, sandbox_id: str) -> Response:
    services = current_services()
    sandbox = services.sandboxes.get(tenant_id, sandbox_id)
    record = control_state(services).record(sandbox)
    _, end = services.sandboxes.times(sandbox)
    return jsonify(
        schemas.SandboxDetail().dump(
            wire.detail(services.settings, sandbox, record, end, _domain(services))
        )
    )


@bp.delete("/sandboxes/<sandbox_id>")
@tenant_from_e2b_sdk_key
def kill(tenant_id: str, sandbox_id: str) -> tuple[str, int]:
    sandboxes = current_services().sandboxes
    sandboxes.delete(sandboxes.get(tenant_id, sandbox_id))  # a paused one too (docker rm -f)
    return "", 204


@bp.post("/sandboxes/<sandbox_id>/timeout")
@tenant_from_e2b_sdk_key
def set_timeout(tenant_id: str, sandbox_id: str) -> tuple[str, int]:
    body = validation.body(schemas.SandboxTimeoutRequest(), "body")
    services = current_services()
    sandbox = services.sandboxes.get(tenant_id, sandbox_id)
    control_state(services).set_end(sandbox, body["timeout"], allow_shorter=True)
    return "", 204


@bp.post("/sandboxes/<sandbox_id>/refreshes")
@tenant_from_e2b_sdk_key
def refresh(tenant_id: str, sandbox_id: str) -> tuple[str, int]:
    body = validation.body(schemas.SandboxRefreshRequest(), "body", optional=True)
    duration = body["duration"] if body["duration"] is not None else wire.DEFAULT_REFRESH
    services = current_services()
    sandbox = services.sandboxes.get(tenant_id, sandbox_id)
    control_state(services).set_end(sandbox, duration, allow_shorter=False)
    return "", 204


@bp.post("/sandboxes/<sandbox_id>/pause")
@tenant_from_e2b_sdk_key
def pause(tenant_id: str, sandbox_id: str) -> tuple[str, int]:
    validation.body(schemas.SandboxPauseRequest(), "body", optional=True)
    services = current_services()
    sandbox = services.sandboxes.get(tenant_id, sandbox_id)
    state = control_state(services)
    if state.record(sandbox).paused:
        raise SandboxStateConflict(f"sandbox {sandbox_id} is already paused")
    changed = services.sandboxes.pause(sandbox)
    try:
        state.mark_paused(sandbox)  # also when the host found it paused: the record agrees
    except SandboxStateConflict:
        if changed:
            services.sandboxes.resume(sandbox)  # an agent session's sandbox: left as it was
        raise
    if not changed:
        raise SandboxStateConflict(f"sandbox {sandbox_id} is already paused")
    return "", 204


@bp.post("/sandboxes/<sandbox_id>/resume")
@tenant_from_e2b_sdk_key
def resume(tenant_id: str, sandbox_id: str) -> tuple[Response, int]:
    """The older resume: 409 for a sandbox that is running."""
    body = validation.body(schemas.ResumedSandbox(), "body", optional=True)
    if body["autoPause"]:
        raise ValidationFailed({"body.autoPause": "not supported by Paddock (yet)"})
    services = current_services()
    sandbox = services.sandboxes.get(tenant_id, sandbox_id)
    if not control_state(services).record(sandbox).paused:
        raise SandboxStateConflict(f"sandbox {sandbox_id} is already running")
    return _connect(services, sandbox, body["timeout"])


@bp.post("/sandboxes/<sandbox_id>/connect")
@bp.post("/v2/sandboxes/<sandbox_id>/connect")
@tenant_from_e2b_sdk_key
def connect(tenant_id: str, sandbox_id: str) -> tuple[Response, int]:
    """A running sandbox: 200, its end moved to at least ``timeout`` from now (an agent
    session's sandbox keeps its session's end). A paused one is resumed first: 201."""
    body = validation.body(schemas.ConnectSandbox(), "body", optional=True)
    services = current_services()
    return _connect(services, services.sandboxes.get(tenant_id, sandbox_id), body["timeout"])


def _connect(services: Services, sandbox: Sandbox, timeout: int | None) -> tuple[Response, int]:
    state = control_state(services)
    record = state.record(sandbox)
    seconds = timeout if timeout is not None else (record.timeout or wire.DEFAULT_TIMEOUT)
    status = 200
    if record.paused:
        services.sandboxes.resume(
            sandbox
        )  # False: unpaused already (a retry): resumed all the same
        state.mark_resumed(sandbox, seconds)
        status = 201
    else:
        # An agent session's sandbox (SandboxStateConflict) lives as long as its session,
        # which a connect does not change; its tokens are the caller's all the same.
        with suppress(SandboxStateConflict):
            state.set_end(sandbox, seconds, allow_shorter=False)
    answer = wire.created(sandbox, state.tokens(sandbox), domain=_domain(services))
    return jsonify(schemas.Sandbox().dump(answer)), status


@bp.get("/sandboxes/<sandbox_id>/metrics")
@tenant_from_e2b_sdk_key
def metrics(tenant_id: str, sandbox_id: str) -> Response:
    """One sample, taken now (Paddock keeps no history): empty when ``start``..``end`` (Unix
    seconds) does not include now."""
    start, end = _unix_param("start"), _unix_param("end")
    services = current_services()
    sandbox = services.sandboxes.get(tenant_id, sandbox_id)
    usage = services.sandboxes.usage(sandbox)
    now = time.time()
    if (start is not None and now < start) or (end is not None and now > end + 1):
        return jsonify([])
    sample = {
        "timestamp": wire.iso(now),
        "timestampUnix": int(now),
        "cpuCount": wire.cpu_count(services.settings),
        "cpuUsedPct": usage.cpu_used_pct,
        "memUsed": usage.mem_used,
        "memTotal": usage.mem_total,
        "memCache": usage.mem_cache,
        "diskUsed": usage.disk_used,
        "diskTotal": usage.disk_total,
    }
    return jsonify(schemas.SandboxMetric(many=True).dump([sample]))


def _listing(
    services: Services, tenant_id: str, query: wire.ListQuery
) -> list[tuple[Sandbox, dict[str, object]]]:
    """The tenant's running and paused sandboxes that match ``query``, with their answers."""
    state = control_state(services)
    out = []
    for sandbox in services.sandboxes.of_tenant(tenant_id):
        if sandbox.status != "running":
            continue
        record = state.record(sandbox)
        if not wire.matches(query, sandbox, record):
            continue
        _, end = services.sandboxes.times(sandbox)
        out.append((sandbox, wire.listed(services.settings, sandbox, record, end)))
    return out


def _unix_param(name: str) -> int | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ValidationFailed({name: "not a Unix time in seconds"}) from None
    if not 0 <= value < 1 << 40:
        raise ValidationFailed({name: "out of range"})
    return value
