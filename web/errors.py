"""The one place error handlers are registered: PaddockError → the E2B envelope on
``/sessions`` (``{"message": ...}``, with ``details`` for validation)."""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from shared.errors import PaddockError, ValidationFailed

logger = logging.getLogger(__name__)


def _e2b(status: int, message: str, details: dict | None = None) -> Response:
    body: dict = {"message": message}
    if details is not None:
        body["details"] = details
    resp = jsonify(body)
    resp.status_code = status
    return resp


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(PaddockError)
    def paddock_error(exc: PaddockError) -> Response:
        if exc.status >= 500:
            logger.error("%s %s: %s (%s)", request.method, request.path, exc.message, exc.code)
        else:
            logger.warning("%s %s: %s %s", request.method, request.path, exc.status, exc.message)
        if isinstance(exc, ValidationFailed):
            details = {k: {"message": v} for k, v in exc.fields.items()}
            return _e2b(422, "Validation Failed", details)
        return _e2b(exc.status, exc.message)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        messages = {
            404: "Not Found",
            405: "Method Not Allowed",
            413: "Request body too large",
        }
        logger.warning("%s %s: %s", request.method, request.path, status)
        return _e2b(status, messages.get(status, exc.name))

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        logger.exception("%s %s: unhandled error", request.method, request.path)
        return _e2b(500, "Internal Server Error")
