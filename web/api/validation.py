"""Request parsing for the E2B API: bodies through marshmallow, query parameters by hand, all
failures as ``ValidationFailed`` with the spec's field keys (``body.envID``, ``path``...)."""

from __future__ import annotations

import json
from typing import Any

from flask import request
from marshmallow import Schema, ValidationError

from shared.errors import ValidationFailed


def body(schema: Schema, prefix: str = "", optional: bool = False) -> dict[str, Any]:
    """The JSON object body validated by ``schema``, with error keys under ``prefix`` (the E2B
    API's ``body``/``requestBody``; none for v1). ``optional``: an empty body is ``{}``.

    Raises ValidationFailed.
    """
    where = prefix or "body"
    raw = request.get_data(cache=True)
    if optional and not raw.strip():
        raw = b"{}"
    try:
        data = json.loads(raw) if raw.strip() else None
    except (ValueError, UnicodeDecodeError):
        raise ValidationFailed({where: "the body is not valid JSON"}) from None
    if not isinstance(data, dict):
        raise ValidationFailed({where: "the body must be a JSON object"})
    try:
        return dict(schema.load(data))
    except ValidationError as exc:
        raise ValidationFailed(flatten(exc.normalized_messages(), prefix)) from None


def flatten(messages: Any, prefix: str) -> dict[str, str]:
    """marshmallow's nested messages as ``{"prefix.field": "message"}`` (no prefix: ``field``;
    errors of the whole body: ``prefix``, or ``body``)."""
    out: dict[str, str] = {}
    if isinstance(messages, dict):
        for key, value in messages.items():
            # marshmallow nests Dict errors under "key"/"value"; the entry's name says enough.
            if key in ("_schema", "key", "value"):
                name = prefix
            else:
                name = f"{prefix}.{key}" if prefix else str(key)
            out.update(flatten(value, name))
    elif isinstance(messages, list) and messages and all(isinstance(m, str) for m in messages):
        out[prefix or "body"] = " ".join(messages)
    elif isinstance(messages, list):
        for item in messages:
            out.update(flatten(item, prefix))
    else:
        out[prefix or "body"] = str(messages)
    return out


def path_param() -> str:
    value = request.args.get("path")
    if value is None or value == "":
        raise ValidationFailed({"path": "'path' is required"})
    if "\x00" in value:
        raise ValidationFailed({"path": "'path' must not contain NUL"})
    return value


def bool_param(name: str) -> bool:
    """An optional boolean query parameter, case-insensitive (the client sends ``True``)."""
    value = request.args.get(name)
    if value is None:
        return False
    lowered = value.strip().lower()
    if lowered == "true":
        return True
    if lowered == "false":
        return False
    raise ValidationFailed({name: f"invalid boolean value {value!r}; use true or false"})
