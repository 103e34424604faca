"""Marshmallow schemas of the E2B API request bodies and the wire shapes of its responses."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import orjson
from marshmallow import RAISE, Schema, fields, validate

from shared.output import END, STDERR, STDOUT, Entry

# A NUL cannot pass through exec's argv or environment: refused up front with a clear 422
# instead of failing inside the engine.
_NO_NUL = validate.Regexp(r"^[^\x00]*$", error="must not contain NUL characters")


class CreateSessionBody(Schema):
    class Meta:
        unknown = RAISE

    envID = fields.String(required=True, validate=validate.Length(min=1, max=128))
    apiKey = fields.String(load_default=None)
    # Paddock's extension (the 2023 clients never send it): the sandbox's network,
    # {"mode": "internet"|"none", "allow_out": [CIDR...], "deny_out": [CIDR...]}; checked by
    # shared.egress.parse_network.
    network = fields.Raw(load_default=None)


class StartProcessBody(Schema):
    class Meta:
        unknown = RAISE

    cmd = fields.String(required=True, validate=[validate.Length(min=1, max=1 << 20), _NO_NUL])
    envVars = fields.Dict(
        keys=fields.String(validate=validate.Regexp(r"^[A-Za-z_][A-Za-z0-9_]*$")),
        values=fields.String(validate=_NO_NUL),
        load_default=dict,
    )
    rootdir = fields.String(load_default="/", validate=[validate.Length(min=1, max=4096), _NO_NUL])


class WriteFileBody(Schema):
    class Meta:
        unknown = RAISE

    content = fields.String(required=True)


class StdinBody(Schema):
    class Meta:
        unknown = RAISE

    stdin = fields.String(required=True)


def session_json(sandbox_id: str, ports: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": sandbox_id, "ports": ports}


_KINDS = ((STDOUT, "Stdout"), (STDERR, "Stderr"))
_SLICE = 2048  # lines encoded at once: bounds the objects alive while a huge entry is written
_FLUSH = 64 << 10  # bytes gathered before they are handed to the server


def process_json(process_id: str, entries: Callable[[], Iterator[Entry]]) -> Iterator[bytes]:
    """The E2B process answer, ``{"stdout": [...], "stderr": [...], "processID", "finished"}``,
    written as it is read: ``entries()`` is walked once per stream, and at no point is more
    than one stream entry (at most 256 KiB of output) held, however much the process printed.
    """
    finished = False
    buf = bytearray(b'{"stdout":[')
    for i, (kind, label) in enumerate(_KINDS):
        if i:
            buf += b'],"stderr":['
        first = True
        for entry in entries():
            if entry.kind == END:
                finished = True
                continue
            if entry.kind != kind:
                continue
            for at in range(0, len(entry.lines), _SLICE):
                objs = [
                    {"type": label, "line": text, "timestamp": entry.ts_ns}
                    for text in entry.lines[at : at + _SLICE]
                ]
                if not first:
                    buf += b","
                buf += orjson.dumps(objs)[1:-1]
                first = False
                if len(buf) >= _FLUSH:
                    yield bytes(buf)
                    buf.clear()
    buf += b'],"processID":' + orjson.dumps(process_id)
    buf += b',"finished":' + (b"true" if finished else b"false") + b"}\n"
    yield bytes(buf)
