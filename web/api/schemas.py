"""Marshmallow schemas of the E2B API request bodies and the wire shapes of its responses."""

from __future__ import annotations

from typing import Any

from marshmallow import RAISE, Schema, fields, validate

from shared.output import Line, Output


class CreateSessionBody(Schema):
    class Meta:
        unknown = RAISE

    envID = fields.String(required=True, validate=validate.Length(min=1, max=128))
    apiKey = fields.String(load_default=None)


class StartProcessBody(Schema):
    class Meta:
        unknown = RAISE

    cmd = fields.String(required=True, validate=validate.Length(min=1, max=1 << 20))
    envVars = fields.Dict(
        keys=fields.String(validate=validate.Regexp(r"^[A-Za-z_][A-Za-z0-9_]*$")),
        values=fields.String(),
        load_default=dict,
    )
    rootdir = fields.String(load_default="/", validate=validate.Length(min=1, max=4096))


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


def _out(line: Line, kind: str) -> dict[str, Any]:
    return {"type": kind, "line": line.text, "timestamp": line.ts_ns}


def process_json(process_id: str, out: Output) -> dict[str, Any]:
    return {
        "stdout": [_out(x, "Stdout") for x in out.stdout],
        "stderr": [_out(x, "Stderr") for x in out.stderr],
        "processID": process_id,
        "finished": out.finished,
    }
