"""The control API's paths and schemas in the E2B document (``/openapi.json``, built by
web/api/e2b/openapi.py), from the marshmallow schemas the routes use. Operation ids are E2B's
generated client's function names, so the two documents read alike."""

from __future__ import annotations

from typing import Any

from apispec import APISpec

from web.api.e2b_control import schemas as s

# Nested ones before their parents (apispec names a nested schema after its class).
SCHEMAS = (
    s.SandboxNetworkConfig,
    s.NewSandbox,
    s.SandboxTimeoutRequest,
    s.SandboxRefreshRequest,
    s.ConnectSandbox,
    s.ResumedSandbox,
    s.SandboxPauseRequest,
    s.Sandbox,
    s.ListedSandbox,
    s.NetworkInfo,
    s.SandboxDetail,
    s.SandboxMetric,
    s.ControlError,
)

_ID = {"name": "sandboxID", "in": "path", "required": True, "schema": {"type": "string"}}


def _query(name: str, kind: str = "string", description: str = "") -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": {"type": kind},
        "description": description,
    }


def _json(schema: str | dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, **_json("ControlError")}


_ERRORS = {
    "400": _error("Bad input (the message names each field); nothing was changed"),
    "401": _error("No API key, or one that is unknown or revoked (unless PADDOCK_AUTH=off)"),
    "404": _error("No such sandbox for this tenant"),
    "409": _error("Paused already, running already, or an agent session's sandbox"),
    "429": _error("A quota is used up; retry after the Retry-After header's seconds"),
    "500": _error("Internal Server Error"),
    "503": _error("No host can take the sandbox, or its engine is unavailable"),
    "504": _error("The sandbox's host did not answer in time"),
}
_NO_CONTENT = {"204": {"description": "Done"}}


def _op(
    op_id: str,
    ok: dict[str, Any],
    body: str | None = None,
    params: list[dict[str, Any]] | None = None,
    optional_body: bool = False,
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": op_id,
        "parameters": params if params is not None else [_ID],
        "responses": {**ok, **_ERRORS},
    }
    if body:
        op["requestBody"] = {"required": not optional_body, **_json(body)}
    return op


def _ok(status: str, schema: str | dict[str, Any], headers: dict[str, Any] | None = None) -> dict:
    answer: dict[str, Any] = {"description": "Ok", **_json(schema)}
    if headers:
        answer["headers"] = headers
    return {status: answer}


def _list(schema: str) -> dict[str, Any]:
    return {"type": "array", "items": {"$ref": f"#/components/schemas/{schema}"}}


def add_paths(spec: APISpec) -> None:
    """Register the control API's schemas and paths on the E2B document."""
    for schema in SCHEMAS:
        spec.components.schema(schema.__name__, schema=schema)
    created = _ok("201", "Sandbox")
    spec.path(
        "/sandboxes",
        operations={
            "post": _op("postSandboxes", created, "NewSandbox", params=[]),
            "get": _op(
                "getSandboxes",
                _ok("200", _list("ListedSandbox")),
                params=[_query("metadata", description="urlencoded key=value pairs")],
            ),
        },
    )
    page_header = {
        "X-Next-Token": {
            "description": "The next page's nextToken (absent on the last page)",
            "schema": {"type": "string"},
        }
    }
    spec.path(
        "/v2/sandboxes",
        operations={
            "post": _op("postV2Sandboxes", created, "NewSandbox", params=[]),
            "get": _op(
                "getV2Sandboxes",
                _ok("200", _list("ListedSandbox"), page_header),
                params=[
                    _query("metadata", description="urlencoded key=value pairs"),
                    _query("state", description="comma-separated: running, paused"),
                    _query("startedAfter", description="ISO 8601 date-time"),
                    _query("template"),
                    _query("order", description="asc or desc (default) by start time"),
                    _query("limit", "integer", "1..100 (default 100)"),
                    _query("nextToken"),
                ],
            ),
        },
    )
    spec.path(
        "/sandboxes/{sandboxID}",
        operations={
            "get": _op("getSandboxesSandboxID", _ok("200", "SandboxDetail")),
            "delete": _op("deleteSandboxesSandboxID", _NO_CONTENT),
        },
    )
    spec.path(
        "/sandboxes/{sandboxID}/timeout",
        operations={
            "post": _op("postSandboxesSandboxIDTimeout", _NO_CONTENT, "SandboxTimeoutRequest")
        },
    )
    spec.path(
        "/sandboxes/{sandboxID}/refreshes",
        operations={
            "post": _op(
                "postSandboxesSandboxIDRefreshes",
                _NO_CONTENT,
                "SandboxRefreshRequest",
                optional_body=True,
            )
        },
    )
    spec.path(
        "/sandboxes/{sandboxID}/pause",
        operations={
            "post": _op(
                "postSandboxesSandboxIDPause",
                _NO_CONTENT,
                "SandboxPauseRequest",
                optional_body=True,
            )
        },
    )
    spec.path(
        "/sandboxes/{sandboxID}/resume",
        operations={
            "post": _op(
                "postSandboxesSandboxIDResume", created, "ResumedSandbox", optional_body=True
            )
        },
    )
    connected = {**_ok("200", "Sandbox"), **created}
    connects = (("", "postSandboxesSandboxIDConnect"), ("/v2", "postV2SandboxesSandboxIDConnect"))
    for prefix, op_id in connects:
        spec.path(
            f"{prefix}/sandboxes/{{sandboxID}}/connect",
            operations={"post": _op(op_id, connected, "ConnectSandbox", optional_body=True)},
        )
    spec.path(
        "/sandboxes/{sandboxID}/metrics",
        operations={
            "get": _op(
                "getSandboxesSandboxIDMetrics",
                _ok("200", _list("SandboxMetric")),
                params=[
                    _ID,
                    _query("start", "integer", "Unix seconds"),
                    _query("end", "integer", "Unix seconds"),
                ],
            )
        },
    )
