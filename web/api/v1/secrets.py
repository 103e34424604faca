"""``/v1/tenants/me/secrets``: BYO secret bundles. Values go in, never come out."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, jsonify, request

from shared.errors import NotFound, ValidationFailed
from web.api import validation
from web.api.v1.schemas import CreateSecretRequest, ReplaceSecretRequest, SecretInfo, SecretList
from web.auth import tenant_from_api_key
from web.services import current_services

logger = logging.getLogger(__name__)
bp = Blueprint("secrets", __name__, url_prefix="/tenants/<tenant>/secrets")


def _me(tenant: str) -> None:
    """Only ``me`` addresses a tenant; anything else is nobody's (404, never 403)."""
    if tenant != "me":
        raise NotFound("Not Found")


@bp.post("")
@tenant_from_api_key
def create(tenant_id: str, tenant: str) -> tuple[Response, int]:
    _me(tenant)
    body = validation.body(CreateSecretRequest())
    bundle = current_services().secrets.create(tenant_id, body["name"], body["values"])
    logger.info(
        "tenant %s: created secret bundle %s (%d keys)", tenant_id, bundle.name, len(bundle.keys)
    )
    return jsonify(SecretInfo().dump(bundle)), 201


@bp.get("")
@tenant_from_api_key
def list_bundles(tenant_id: str, tenant: str) -> Response:
    _me(tenant)
    return jsonify(SecretList().dump({"secrets": current_services().secrets.list(tenant_id)}))


@bp.get("/<name>")
@tenant_from_api_key
def get(tenant_id: str, tenant: str, name: str) -> Response:
    _me(tenant)
    return jsonify(SecretInfo().dump(current_services().secrets.get(tenant_id, name)))


@bp.put("/<name>")
@tenant_from_api_key
def replace(tenant_id: str, tenant: str, name: str) -> Response:
    _me(tenant)
    if_match = _if_match()
    body = validation.body(ReplaceSecretRequest())
    services = current_services()
    bundle = services.secrets.replace(tenant_id, name, body["values"], if_match)
    for session_id in services.sessions.sessions_using(tenant_id, name):
        services.sessions.emit(
            session_id, {"type": "secrets_updated", "name": name, "version": bundle.version}
        )
    logger.info(
        "tenant %s: rotated secret bundle %s to version %d", tenant_id, name, bundle.version
    )
    return jsonify(SecretInfo().dump(bundle))


@bp.delete("/<name>")
@tenant_from_api_key
def delete(tenant_id: str, tenant: str, name: str) -> tuple[str, int]:
    _me(tenant)
    force = validation.bool_param("force")
    current_services().secrets.delete(tenant_id, name, force=force)
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
