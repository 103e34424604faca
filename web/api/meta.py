"""``/health`` and the E2B API's OpenAPI document."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from web.api.deps import services

bp = Blueprint("meta", __name__)


@bp.get("/health")
def health() -> tuple[str | Response, int, dict[str, str]]:
    """200 while this web process serves (what a load balancer needs), with, after the first
    line ``OK``, one line per live host that cannot do all it should (a host whose egress
    rules are missing gives no sandbox the internet). JSON when asked with Accept."""
    problems = services().sandboxes.problems()
    if request.accept_mimetypes.best == "application/json":
        body = {"status": "degraded" if problems else "ok", "problems": problems}
        return jsonify(body), 200, {}
    lines = ["OK"] + [f"{p['host'] or 'web'}: {p['problem']}" for p in problems]
    return "\n".join(lines), 200, {"Content-Type": "text/plain; charset=utf-8"}


@bp.get("/openapi.json")
def openapi() -> Response:
    return jsonify(OPENAPI)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


_SID = {"name": "sessionID", "in": "path", "required": True, "schema": {"type": "string"}}
_PID = {"name": "processID", "in": "path", "required": True, "schema": {"type": "string"}}
_PATH = {"name": "path", "in": "query", "required": True, "schema": {"type": "string"}}
_WAIT = {"name": "wait", "in": "query", "required": False, "schema": {"type": "boolean"}}
_RESULTS = {"name": "results", "in": "query", "required": False, "schema": {"type": "boolean"}}
_ERRORS = {
    "401": {
        "description": "No API key, or one that is unknown or revoked (unless PADDOCK_AUTH=off)",
        **_json(_ref("Error")),
    },
    "404": {"description": "Session not found", **_json(_ref("Error"))},
    "414": {
        "description": "The URL is longer than the HTTP server reads (4094 bytes with the "
        "query): refused by gunicorn before the API, as an HTML page",
        "content": {"text/html": {"schema": {"type": "string"}}},
    },
    "422": {"description": "Validation Failed", **_json(_ref("ValidationError"))},
    "429": {
        "description": "A quota or fair share is used up; the message names it and its "
        "setting. Retry after the Retry-After header's seconds",
        **_json(_ref("Error")),
    },
    "500": {"description": "Internal Server Error", **_json(_ref("Error"))},
}
_NO_CONTENT = {"204": {"description": "No content"}}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, **_json(_ref("Error"))}


# What a route that reaches a sandbox's host can also answer (shared/errors.py classes).
_HOST = {
    "503": _error("No host can take the sandbox, or its engine is unavailable"),
    "504": _error("The sandbox's host did not answer in time"),
}
# ...and one that acts inside the sandbox: what failed there, in the message.
_IN_SANDBOX = {
    "400": _error("Not a directory, is a directory, not a regular file"),
    "403": _error("Permission denied inside the sandbox"),
    "409": _error("The path exists already, or the sandbox is paused"),
    "413": _error("The body or the file is too large"),
    **_HOST,
}


def _op(
    op_id: str,
    params: list[dict],
    ok: dict,
    body: str | None = None,
    errors: dict[str, Any] | None = None,
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": op_id,
        "parameters": params,
        "responses": {**ok, **_ERRORS, **(_IN_SANDBOX if errors is None else errors)},
    }
    if body:
        op["requestBody"] = {"required": True, **_json(_ref(body))}
    return op


def _ok(schema: str) -> dict[str, Any]:
    return {"200": {"description": "Ok", **_json(_ref(schema))}}


_DIR = {
    "get": _op("listFilesystemDir", [_SID, _PATH], _ok("ListFilesystemDirResponse")),
    "put": _op("makeFilesystemDir", [_SID, _PATH], _NO_CONTENT),
}
_FILE = {
    "get": _op("readFilesystemFile", [_SID, _PATH], _ok("ReadFilesystemFileResponse")),
    "put": _op("writeFilesystemFile", [_SID, _PATH], _NO_CONTENT, "WriteFilesystemFileRequest"),
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.0",
    "info": {"title": "Paddock — E2B-compatible REST API", "version": "1.0.0"},
    "paths": {
        "/health": {
            "get": {
                "operationId": "health",
                "responses": {
                    "200": {
                        "description": "OK (then one line per host problem); JSON when asked",
                        "content": {
                            "text/plain": {"schema": {"type": "string"}},
                            "application/json": {"schema": _ref("Health")},
                        },
                    }
                },
            }
        },
        "/sessions": {
            "post": _op("createSessions", [], _ok("Session"), "CreateSessionsRequest", _HOST)
        },
        "/sessions/{sessionID}": {
            "get": _op("getSession", [_SID], _ok("Session"), errors=_HOST),
            "delete": _op("deleteSession", [_SID], _NO_CONTENT, errors=_HOST),
        },
        "/sessions/{sessionID}/filesystem": {
            "delete": _op("deleteFilesystemEntry", [_SID, _PATH], _NO_CONTENT)
        },
        "/sessions/{sessionID}/filesystem/dir": _DIR,
        "/sessions/{sessionID}/filesystem/dirs": _DIR,
        "/sessions/{sessionID}/filesystem/file": _FILE,
        "/sessions/{sessionID}/filesystem/files": _FILE,
        "/sessions/{sessionID}/processes": {
            "post": _op("startProcess", [_SID, _WAIT], _ok("Process"), "StartProcessParams")
        },
        "/sessions/{sessionID}/processes/{processID}": {
            "get": _op("getProcess", [_SID, _PID, _WAIT], {**_ok("Process"), **_NO_CONTENT}),
            "delete": _op("stopProcess", [_SID, _PID, _RESULTS], {**_ok("Process"), **_NO_CONTENT}),
        },
        "/sessions/{sessionID}/processes/{processID}/stdin": {
            "post": _op("writeProcessStdin", [_SID, _PID], _NO_CONTENT, "WriteProcessStdinRequest")
        },
    },
    "components": {
        "schemas": {
            "Session": {
                "type": "object",
                "required": ["id", "ports"],
                "properties": {
                    "id": {"type": "string"},
                    "ports": {"type": "array", "items": _ref("OpenPort")},
                },
            },
            "OpenPort": {
                "type": "object",
                "required": ["State", "Ip", "Port"],
                "properties": {
                    "State": {"type": "string"},
                    "Ip": {"type": "string"},
                    "Port": {"type": "number"},
                },
            },
            "Process": {
                "type": "object",
                "required": ["stdout", "stderr", "processID", "finished"],
                "properties": {
                    "stdout": {"type": "array", "items": _ref("OutStdResponse")},
                    "stderr": {"type": "array", "items": _ref("OutStdResponse")},
                    "processID": {"type": "string", "pattern": "^[A-Za-z0-9]{12}$"},
                    "finished": {"type": "boolean"},
                },
            },
            "OutStdResponse": {
                "type": "object",
                "required": ["type", "line", "timestamp"],
                "properties": {
                    "type": {"type": "string", "enum": ["Stdout", "Stderr"]},
                    "line": {"type": "string"},
                    "timestamp": {"type": "number", "description": "Unix time in nanoseconds"},
                },
            },
            "ListFilesystemDirResponse": {
                "type": "object",
                "required": ["entries"],
                "properties": {
                    "entries": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["isDir", "name"],
                            "properties": {
                                "isDir": {"type": "boolean"},
                                "name": {"type": "string"},
                            },
                        },
                    }
                },
            },
            "ReadFilesystemFileResponse": {
                "type": "object",
                "required": ["content"],
                "properties": {"content": {"type": "string"}},
            },
            "CreateSessionsRequest": {
                "type": "object",
                "required": ["envID"],
                "additionalProperties": False,
                "properties": {
                    "envID": {
                        "type": "string",
                        "enum": [
                            "Nodejs",
                            "Go",
                            "Bash",
                            "Rust",
                            "Python3",
                            "PHP",
                            "Java",
                            "Perl",
                            "DotNET",
                        ],
                    },
                    "apiKey": {"type": "string"},
                },
            },
            "StartProcessParams": {
                "type": "object",
                "required": ["cmd"],
                "additionalProperties": False,
                "properties": {
                    "cmd": {"type": "string"},
                    "envVars": {"type": "object", "additionalProperties": {"type": "string"}},
                    "rootdir": {"type": "string", "default": "/"},
                },
            },
            "WriteFilesystemFileRequest": {
                "type": "object",
                "required": ["content"],
                "additionalProperties": False,
                "properties": {"content": {"type": "string"}},
            },
            "WriteProcessStdinRequest": {
                "type": "object",
                "required": ["stdin"],
                "additionalProperties": False,
                "properties": {"stdin": {"type": "string"}},
            },
            "Health": {
                "type": "object",
                "required": ["status", "problems"],
                "properties": {
                    "status": {"type": "string", "enum": ["ok", "degraded"]},
                    "problems": {"type": "array", "items": {"type": "object"}},
                },
            },
            "Error": {
                "type": "object",
                "required": ["message"],
                "properties": {"message": {"type": "string"}},
            },
            "ValidationError": {
                "type": "object",
                "required": ["message", "details"],
                "properties": {
                    "message": {"type": "string", "enum": ["Validation Failed"]},
                    "details": {
                        "type": "object",
                        "additionalProperties": {
                            "type": "object",
                            "properties": {"message": {"type": "string"}},
                        },
                    },
                },
            },
        },
        "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"},
            "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        },
    },
    "security": [{}, {"bearer": []}, {"apiKeyHeader": []}],
}


def _exact_keys(schemas: dict[str, Any]) -> None:
    """The generated client raises on a key it does not know, so an answer carries exactly
    its documented keys: the document says so (and `make fuzz` holds the wire to it)."""
    for name in (
        "Session",
        "OpenPort",
        "Process",
        "OutStdResponse",
        "ListFilesystemDirResponse",
        "ReadFilesystemFileResponse",
        "Error",
        "ValidationError",
    ):
        schemas[name]["additionalProperties"] = False
    schemas["ListFilesystemDirResponse"]["properties"]["entries"]["items"][
        "additionalProperties"
    ] = False


_exact_keys(OPENAPI["components"]["schemas"])
