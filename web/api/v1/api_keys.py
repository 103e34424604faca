"""``/v1/api-keys``: keys for sandbox and session control (account token), until revoked or,
when made with ``expires_in``, until then (the console's own key per tab: web/console)."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, jsonify

from shared.errors import NotFound
from web.api import validation
from web.api.v1.schemas import ApiKeyCreated, ApiKeyList, ApiKeyRevoked, CreateApiKeyRequest
from web.auth import user_from_account_token
from web.services import current_services

logger = logging.getLogger(__name__)
bp = Blueprint("api_keys", __name__, url_prefix="/api-keys")


@bp.post("")
@user_from_account_token
def create_key(user_id: str) -> tuple[Response, int]:
    body = validation.body(CreateApiKeyRequest(), optional=True)
    services = current_services()
    key, plain = services.accounts.create_api_key(
        user_id, body["name"], services.settings.max_api_keys, body["expires_in"]
    )
    logger.info("user %s: created API key %s", user_id, key.key_id)
    created = {
        "key_id": key.key_id,
        "key": plain,
        "prefix": key.prefix,
        "name": key.name,
        "created_at": key.created_at,
        "expires_at": key.expires_at,
    }
    return jsonify(ApiKeyCreated().dump(created)), 201


@bp.get("")
@user_from_account_token
def list_keys(user_id: str) -> Response:
    keys = current_services().accounts.list_api_keys(user_id)
    return jsonify(ApiKeyList().dump({"api_keys": keys}))


@bp.delete("/<key_id>")
@user_from_account_token
def revoke_key(user_id: str, key_id: str) -> Response:
    if not current_services().accounts.revoke_api_key(user_id, key_id):
        raise NotFound("No API key with this id")
    logger.info("user %s: revoked API key %s", user_id, key_id)
    return jsonify(ApiKeyRevoked().dump({"key_id": key_id, "status": "revoked"}))
