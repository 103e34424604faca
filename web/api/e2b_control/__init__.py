"""Today's E2B control API (``/sandboxes``, ``/v2/sandboxes``...): what the official SDKs
(``pip install e2b``, ``npm install e2b``) call at ``E2B_API_URL`` to create, list, pause and
kill sandboxes. Here a sandbox is a sandbox (the 2023 API's "session" stays in ``api/e2b/``).

``sandboxes.py`` the routes, ``schemas.py`` every body and answer, ``wire.py`` the translation
between E2B's options and Paddock's, ``state.py`` what this API keeps per sandbox (metadata,
tokens, paused, timeout), ``openapi.py`` its paths in the E2B document (``/openapi.json``).

Errors: E2B's body ``{"code": status, "message": ...}``, which the SDK maps by status onto its
exceptions (401 AuthenticationException, 404 NotFound, 429 RateLimitException, 503
ServiceBusyException; 400 the sandbox exception naming the field). Its handlers sit on this
blueprint, so they answer for these routes only (the 2023 routes keep theirs, web/errors.py).
"""

from __future__ import annotations

import logging

from flask import Blueprint, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from shared.errors import PaddockError, QuotaExceeded, ValidationFailed
from shared.store import QUOTA_RETRY_AFTER
from web.api.e2b_control import sandboxes
from web.api.e2b_control.schemas import ControlError

logger = logging.getLogger(__name__)

bp = Blueprint("e2b_control", __name__)
bp.register_blueprint(sandboxes.bp)

_ERROR = ControlError()


def _answer(status: int, message: str) -> Response:
    resp = jsonify(_ERROR.dump({"code": status, "message": message}))
    resp.status_code = status
    return resp


@bp.errorhandler(PaddockError)
def _paddock_error(exc: PaddockError) -> Response:
    if isinstance(exc, ValidationFailed):
        # E2B answers bad input with 400; the message names every bad field.
        why = "; ".join(f"{k}: {v}" for k, v in exc.fields.items())
        logger.warning("%s %s: 400 %s", request.method, request.path, why)
        return _answer(400, f"Validation failed: {why}")
    if exc.status >= 500:
        logger.error("%s %s: %s (%s)", request.method, request.path, exc.message, exc.code)
    else:
        logger.warning("%s %s: %s %s", request.method, request.path, exc.status, exc.message)
    resp = _answer(exc.status, exc.message)
    if isinstance(exc, QuotaExceeded):  # RateLimited too
        resp.headers["Retry-After"] = str(exc.retry_after)
        # The SDK retries a 429 after Retry-After, up to three times, unless told not to:
        # a count quota (sandboxes per tenant) frees only when the tenant removes something,
        # so waiting would only delay the RateLimitException; a fair share frees by itself.
        if exc.retry_after >= QUOTA_RETRY_AFTER:
            resp.headers["Should-Retry"] = "false"
    return resp


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    logger.warning("%s %s: %s", request.method, request.path, status)
    return _answer(status, exc.name)


@bp.errorhandler(Exception)
def _unexpected(exc: Exception) -> Response:
    logger.exception("%s %s: unhandled error", request.method, request.path)
    return _answer(500, "Internal Server Error")
