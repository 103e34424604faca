"""The one place error handlers are registered. PaddockError and HTTP errors become the E2B
envelope on the E2B routes (``{"message": ...}``, with ``details`` for validation) and the v1
envelope under ``/v1`` (``{"error": {type, code, message, param?, request_id}}``). Each
envelope is written by the schema that documents it (web/api/e2b/schemas.py Error and
ValidationError, web/api/v1/schemas.py ErrorResponse), so the documents and the wire agree."""

from __future__ import annotations

import logging
import secrets
from typing import Any

import redis
from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from shared.errors import (
    PaddockError,
    QuotaExceeded,
    RateLimited,
    StateUnavailable,
    ValidationFailed,
)
from web.api.e2b.schemas import Error as E2bError
from web.api.e2b.schemas import ValidationError as E2bValidationError
from web.api.v1.schemas import ErrorResponse

logger = logging.getLogger(__name__)

_HTTP_MESSAGES = {
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Request body too large",
}
_V1_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    412: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "capacity_error",
}
# The E2B API's own words (specs/e2b-compat.md): its sandboxes are "sessions".
_E2B_MESSAGES = {
    "sandbox_not_found": "Session not found",
    "sandbox_gone": "Session not found",
}
_V1_ERROR = ErrorResponse()
_E2B_ERROR = E2bError()
_E2B_VALIDATION = E2bValidationError()


def request_id() -> str:
    rid: str = g.get("request_id") or ""
    if not rid:
        rid = g.request_id = "req_" + secrets.token_hex(12)
    return rid


def _respond(
    status: int, code: str, message: str, fields: dict[str, str] | None = None
) -> Response:
    if request.path.startswith("/v1"):
        err: dict[str, Any] = {
            "type": _V1_TYPES.get(status, "api_error"),
            "code": code,
            "message": message,
        }
        if fields:
            err["param"] = next(iter(fields))
            err["details"] = fields
        err["request_id"] = request_id()
        resp = jsonify(_V1_ERROR.dump({"error": err}))
    else:
        e2b_message = _E2B_MESSAGES.get(code, message)
        if fields is None:
            resp = jsonify(_E2B_ERROR.dump({"message": e2b_message}))
        else:
            details = {k: {"message": v} for k, v in fields.items()}
            resp = jsonify(_E2B_VALIDATION.dump({"message": e2b_message, "details": details}))
    resp.status_code = status
    return resp


def register_error_handlers(app: Flask) -> None:
    @app.after_request
    def add_request_id(resp: Response) -> Response:
        resp.headers["X-Request-Id"] = request_id()
        return resp

    @app.errorhandler(PaddockError)
    def paddock_error(exc: PaddockError) -> Response:
        if exc.status >= 500:
            logger.error("%s %s: %s (%s)", request.method, request.path, exc.message, exc.code)
        else:
            logger.warning("%s %s: %s %s", request.method, request.path, exc.status, exc.message)
        if isinstance(exc, ValidationFailed):
            if request.path.startswith("/v1"):
                # v1: 400 invalid_request_error naming the first bad parameter.
                param, why = next(iter(exc.fields.items()))
                return _respond(400, "invalid_request", f"{param}: {why}", exc.fields)
            return _respond(422, exc.code, "Validation Failed", exc.fields)
        resp = _respond(exc.status, exc.code, exc.message)
        if isinstance(exc, RateLimited | QuotaExceeded):
            resp.headers["Retry-After"] = str(exc.retry_after)
        return resp

    @app.errorhandler(redis.ConnectionError)
    @app.errorhandler(redis.TimeoutError)
    def state_down(exc: redis.RedisError) -> Response:
        # Only the state store's clients raise these here (the broker's errors become
        # BrokerUnavailable in shared.rpc): down past the client's retries, or not answering.
        logger.error(
            "%s %s: the state store is unreachable: %s: %s",
            request.method,
            request.path,
            type(exc).__name__,  # AuthenticationError: a wrong password, not an outage
            exc,
        )
        return _respond(StateUnavailable.status, StateUnavailable.code, StateUnavailable.message)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        logger.warning("%s %s: %s", request.method, request.path, status)
        message = _HTTP_MESSAGES.get(status, exc.name)
        return _respond(status, message.lower().replace(" ", "_"), message)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        logger.exception("%s %s: unhandled error", request.method, request.path)
        return _respond(500, "internal_error", "Internal Server Error")
