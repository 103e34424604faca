"""Helpers of the v1 routes: JSON bodies, timestamps, client address."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from flask import request
from marshmallow import Schema, ValidationError

from shared.errors import ValidationFailed
from web.api.validation import _flatten


def json_body(schema: Schema, optional: bool = False) -> dict[str, Any]:
    """The request's JSON object validated by ``schema``. Raises ValidationFailed."""
    raw = request.get_data(cache=True)
    if optional and not raw.strip():
        data: Any = {}
    else:
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise ValidationFailed({"body": "the body is not valid JSON"}) from None
    if not isinstance(data, dict):
        raise ValidationFailed({"body": "the body must be a JSON object"})
    try:
        return dict(schema.load(data))
    except ValidationError as exc:
        flat = _flatten(exc.normalized_messages(), "")
        raise ValidationFailed({k.lstrip(".") or "body": v for k, v in flat.items()}) from None


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def client_ip() -> str:
    return request.remote_addr or "unknown"
