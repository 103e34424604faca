"""Request parsing for the E2B API: bodies through marshmallow, query parameters by hand, all
failures as ``ValidationFailed`` with the spec's field keys (``body.envID``, ``path``...)."""

from __future__ import annotations

from typing import Any

import orjson
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
    data = parse_json(raw, where) if raw.strip() else None
    if not isinstance(data, dict):
        raise ValidationFailed({where: "the body must be a JSON object"})
    try:
        return dict(schema.load(data))
    except ValidationError as exc:
        raise ValidationFailed(flatten(exc.normalized_messages(), prefix)) from None


# No request body of either API nests deeper than a few levels; a deeper one is refused before
# anything walks it (recursive code, the standard library's json included, would overflow).
MAX_DEPTH = 32


def parse_json(raw: bytes | str, where: str) -> Any:
    """Strict JSON: UTF-8 without lone surrogates (raw, or escaped as in ``"\\ud800"``), at
    most ``MAX_DEPTH`` levels of arrays and objects. Raises ValidationFailed naming ``where``.
    """
    try:
        # orjson refuses what Python's json lets through and later code cannot encode (lone
        # surrogates), and has its own depth limit, so no RecursionError on any input.
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ValidationFailed({where: "the body is not valid JSON (UTF-8)"}) from None
    if too_deep(data, MAX_DEPTH):
        raise ValidationFailed({where: f"the body nests more than {MAX_DEPTH} levels deep"})
    return data


def too_deep(data: Any, limit: int) -> bool:
    """Whether arrays and objects in ``data`` nest more than ``limit`` levels (iterative)."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


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
