"""``/v1/tenants/me/secrets``: BYO secret bundles. Values go in, never come out."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, jsonify, request

from shared.errors import NotFound, ValidationFailed
from shared.secrets import Bundle
from web.api import validation
from web.api.deps import api_tenant, services
from web.api.v1.common import iso
from web.api.v1.schemas import CreateSecretRequest, ReplaceSecretRequest

logger = logging.getLogger(__name__)
bp = Blueprint("v1_secrets", __name__)

BASE = "/v1/tenants/<tenant>/secrets"


def _me(tenant: str) -> str:
    """Only ``me`` addresses a tenant; anything else is nobody's (404, never 403)."""
    tenant_id = api_tenant()
    if tenant != "me":
        raise NotFound("Not Found")
    return tenant_id


def _json(b: Bundle) -> dict:
    return {
        "name": b.name,
        "keys": b.keys,
        "version": b.version,
        "created_at": iso(b.created_at),
        "updated_at": iso(b.updated_at),
    }


@bp.post(BASE)
def create(tenant: str) -> tuple[Response, int]:
    tenant_id = _me(tenant)
    body = validation.body(CreateSecretRequest())
    bundle = services().secrets.create(tenant_id, body["name"], body["values"])
    logger.info(
        "tenant %s: created secret bundle %s (%d keys)", tenant_id, bundle.name, len(bundle.keys)
    )
    return jsonify(_json(bundle)), 201


@bp.get(BASE)
def list_bundles(tenant: str) -> Response:
    tenant_id = _me(tenant)
    return jsonify({"secrets": [_json(b) for b in services().secrets.list(tenant_id)]})


@bp.get(BASE + "/<name>")
def get(tenant: str, name: str) -> Response:
    tenant_id = _me(tenant)
    return jsonify(_json(services().secrets.get(tenant_id, name)))


@bp.put(BASE + "/<name>")
def replace(tenant: str, name: str) -> Response:
    tenant_id = _me(tenant)
    if_match = _if_match()
    body = validation.body(ReplaceSecretRequest())
    svc = services()
    bundle = svc.secrets.replace(tenant_id, name, body["values"], if_match)
    for session_id in svc.sessions.sessions_using(tenant_id, name):
        svc.sessions.emit(
            session_id, {"type": "secrets_updated", "name": name, "version": bundle.version}
        )
    logger.info(
        "tenant %s: rotated secret bundle %s to version %d", tenant_id, name, bundle.version
    )
    return jsonify(_json(bundle))


@bp.delete(BASE + "/<name>")
def delete(tenant: str, name: str) -> tuple[str, int]:
    tenant_id = _me(tenant)
    force = validation.bool_param("force")
    services().secrets.delete(tenant_id, name, force=force)
    logger.info("tenant %s: deleted secret bundle %s", tenant_id, name)
    return "", 204


def _if_match() -> int | None:
    raw = request.headers.get("If-Match")
    if raw is None:
        return None
    value = raw.strip().removeprefix("W/").strip('"')
    if not value.isdigit():
        raise ValidationFailed({"If-Match": 'must be a version in quotes, like "3"'})
    return int(value)
