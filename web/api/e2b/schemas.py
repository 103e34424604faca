"""Marshmallow schemas of the E2B API: request bodies (validated with ``load``) and responses
(written with ``dump``). The OpenAPI document (web/api/e2b/openapi.py) is generated from these
same classes, whose names are the document's component names.

The generated 2023 client raises on any key it does not know, so every response schema refuses
unknown keys (marshmallow's default; the document then says ``additionalProperties: false``)
and lists every key as required.

``Process`` is the one answer not written by ``dump``: its output can be hundreds of MB, so
`process_json` streams it. tests/unit/test_api_conformance.py loads what it writes with
``Process`` and compares it with the document.
"""

from __future__ import annotations

from collections.abc import Iterator

import orjson
from marshmallow import RAISE, Schema, fields, validate

from shared.output import END, STDERR, STDOUT, EntryReader

# A NUL cannot pass through exec's argv or environment: refused up front with a clear 422
# instead of failing inside the engine.
_NO_NUL = validate.Regexp(r"^[^\x00]*$", error="must not contain NUL characters")


# The environments of the 2023 API; any other template the hosts offer is accepted too.
E2B_ENVIRONMENTS = ["Nodejs", "Go", "Bash", "Rust", "Python3", "PHP", "Java", "Perl", "DotNET"]


# -- requests -----------------------------------------------------------------------------------


class CreateSessionsRequest(Schema):
    class Meta:
        unknown = RAISE

    envID = fields.String(
        required=True,
        validate=validate.Length(min=1, max=128),
        metadata={"enum": E2B_ENVIRONMENTS},
    )
    apiKey = fields.String(load_default=None)
    # Paddock's extension (the 2023 clients never send it): the sandbox's network,
    # {"mode": "internet"|"none", "allow_out": [CIDR...], "deny_out": [CIDR...]}; checked by
    # shared.egress.parse_network.
    network = fields.Raw(
        load_default=None,
        metadata={
            "description": 'Paddock\'s extension: {"mode": "internet"|"none", "allow_out": '
            '[CIDR...], "deny_out": [CIDR...]}, as in the v1 API'
        },
    )


class StartProcessParams(Schema):
    class Meta:
        unknown = RAISE

    cmd = fields.String(required=True, validate=[validate.Length(min=1, max=1 << 20), _NO_NUL])
    envVars = fields.Dict(
        keys=fields.String(validate=validate.Regexp(r"^[A-Za-z_][A-Za-z0-9_]*$")),
        values=fields.String(validate=_NO_NUL),
        load_default=dict,
    )
    rootdir = fields.String(load_default="/", validate=[validate.Length(min=1, max=4096), _NO_NUL])


class WriteFilesystemFileRequest(Schema):
    class Meta:
        unknown = RAISE

    content = fields.String(required=True)


class WriteProcessStdinRequest(Schema):
    class Meta:
        unknown = RAISE

    stdin = fields.String(required=True)


# -- responses ----------------------------------------------------------------------------------


class OpenPort(Schema):
    State = fields.String(required=True, metadata={"example": "LISTEN"})
    Ip = fields.String(required=True)
    Port = fields.Integer(required=True)


class Session(Schema):
    id = fields.String(required=True)
    ports = fields.List(fields.Nested(OpenPort), required=True)


class OutStdResponse(Schema):
    type = fields.String(required=True, metadata={"enum": ["Stdout", "Stderr"]})
    line = fields.String(required=True)
    timestamp = fields.Integer(required=True, metadata={"description": "Unix time in nanoseconds"})


class Process(Schema):
    stdout = fields.List(fields.Nested(OutStdResponse), required=True)
    stderr = fields.List(fields.Nested(OutStdResponse), required=True)
    processID = fields.String(required=True, validate=validate.Regexp(r"^[A-Za-z0-9]{12}$"))
    finished = fields.Boolean(required=True)


class FilesystemEntry(Schema):
    isDir = fields.Boolean(required=True)
    name = fields.String(required=True, metadata={"description": "The base name"})


class ListFilesystemDirResponse(Schema):
    entries = fields.List(fields.Nested(FilesystemEntry), required=True)


class ReadFilesystemFileResponse(Schema):
    content = fields.String(required=True)


class HealthProblem(Schema):
    host = fields.String(required=True, metadata={"description": "Empty: the web tier itself"})
    problem = fields.String(required=True)


class Health(Schema):
    status = fields.String(required=True, metadata={"enum": ["ok", "degraded"]})
    problems = fields.List(fields.Nested(HealthProblem), required=True)


class Error(Schema):
    message = fields.String(required=True)


class FieldError(Schema):
    message = fields.String(required=True)


class ValidationError(Schema):
    message = fields.String(required=True, metadata={"enum": ["Validation Failed"]})
    details = fields.Dict(keys=fields.String(), values=fields.Nested(FieldError), required=True)


_KINDS = ((STDOUT, "Stdout"), (STDERR, "Stderr"))
_SLICE = 2048  # lines encoded at once: bounds the objects alive while a huge entry is written
_FLUSH = 64 << 10  # bytes gathered before they are handed to the server


def process_json(process_id: str, entries: EntryReader) -> Iterator[bytes]:
    """The E2B process answer, ``{"stdout": [...], "stderr": [...], "processID", "finished"}``,
    written as it is read: ``entries(kind)`` is walked once per stream, and at no point are
    more than two reads of stream entries (16 entries of at most 256 KiB: the snapshot's
    first read, kept for the second stream, and the current one) and one unfinished line
    held, however much the process printed.
    """
    finished = False
    buf = bytearray(b'{"stdout":[')
    for i, (kind, label) in enumerate(_KINDS):
        if i:
            buf += b'],"stderr":['
        first = True
        for entry in entries(kind):
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
