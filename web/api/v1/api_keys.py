"""``/v1/api-keys``: long-lived keys for sandbox and session control (account token)."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, jsonify

from shared.errors import NotFound
from web.api import validation
from web.api.deps import account, services
from web.api.v1.common import iso
from web.api.v1.schemas import CreateApiKeyRequest

logger = logging.getLogger(__name__)
bp = Blueprint("v1_api_keys", __name__)


@bp.post("/v1/api-keys")
def create_key() -> tuple[Response, int]:
    user_id = account()
    body = validation.body(CreateApiKeyRequest(), optional=True)
    svc = services()
    key, plain = svc.accounts.create_api_key(user_id, body["name"], svc.settings.max_api_keys)
    logger.info("user %s: created API key %s", user_id, key.key_id)
    return jsonify(
        {
            "key_id": key.key_id,
            "key": plain,
            "prefix": key.prefix,
            "name": key.name,
            "created_at": iso(key.created_at),
        }
    ), 201


@bp.get("/v1/api-keys")
def list_keys() -> Response:
    user_id = account()
    return jsonify(
        {
            "api_keys": [
                {
                    "key_id": k.key_id,
                    "prefix": k.prefix,
                    "name": k.name,
                    "revoked": k.revoked,
                    "created_at": iso(k.created_at),
                    "last_used_at": iso(k.last_used_at),
                }
                for k in services().accounts.list_api_keys(user_id)
            ]
        }
    )


@bp.delete("/v1/api-keys/<key_id>")
def revoke_key(key_id: str) -> Response:
    user_id = account()
    if not services().accounts.revoke_api_key(user_id, key_id):
        raise NotFound("No API key with this id")
    logger.info("user %s: revoked API key %s", user_id, key_id)
    return jsonify({"key_id": key_id, "status": "revoked"})
