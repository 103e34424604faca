"""One exception hierarchy; each class carries its HTTP status.

The web layer turns these into each API's envelope; workers raise them and the reply channel
carries ``(code, message)`` back so the web side can re-raise the same class.
"""

from __future__ import annotations

from typing import Any


class ConfigError(Exception):
    """A PADDOCK_* variable has a value that cannot be used."""


class PaddockError(Exception):
    status = 500
    code = "internal_error"
    message = "Internal Server Error"

    def __init__(self, message: str | None = None, **details: Any) -> None:
        super().__init__(message or self.message)
        self.message = message or self.message
        self.details = details


class ValidationFailed(PaddockError):
    status = 422
    code = "validation_failed"
    message = "Validation Failed"

    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__("Validation Failed")
        self.fields = fields


class BadRequest(PaddockError):
    status = 400
    code = "bad_request"
    message = "Bad request"


class Unauthorized(PaddockError):
    status = 401
    code = "unauthorized"
    message = "Missing or invalid API key"


class NotFound(PaddockError):
    status = 404
    code = "not_found"
    message = "Not found"


class SessionNotFound(NotFound):
    code = "session_not_found"
    message = "Session not found"


class QuotaExceeded(PaddockError):
    """A per-tenant or per-sandbox quota is used up; the message names the quota and its
    setting. Answered as 429 with ``Retry-After``."""

    status = 429
    code = "quota_exceeded"
    message = "Quota exceeded"

    def __init__(self, message: str | None = None, retry_after: int = 1, **details: Any) -> None:
        super().__init__(message, **details)
        self.retry_after = retry_after


class NoCapacity(PaddockError):
    status = 503
    code = "no_capacity"
    message = "No sandbox host is available"


class EgressUnavailable(PaddockError):
    """The host cannot enforce the egress policy (its firewall rules are missing or failed),
    so it gives no sandbox the internet; mode ``none`` still works."""

    status = 503
    code = "egress_unavailable"
    message = "This host cannot give sandboxes the internet"


class EngineUnavailable(PaddockError):
    """The host's container engine does not answer (dockerd stopped or restarting): retry
    shortly."""

    status = 503
    code = "engine_unavailable"
    message = "The sandbox host's container engine is not answering; retry shortly"


class WorkerTimeout(PaddockError):
    status = 504
    code = "worker_timeout"
    message = "The sandbox host did not answer in time"


# Errors from inside a sandbox (filesystem and process operations).
class SandboxError(PaddockError):
    status = 500
    code = "sandbox_error"
    message = "The operation failed inside the sandbox"


class PathNotFound(SandboxError):
    status = 404
    code = "path_not_found"


class NotADirectory(SandboxError):
    status = 400
    code = "not_a_directory"


class IsADirectory(SandboxError):
    status = 400
    code = "is_a_directory"


class PathExists(SandboxError):
    status = 409
    code = "path_exists"


class PermissionDenied(SandboxError):
    status = 403
    code = "permission_denied"


class FileTooLarge(SandboxError):
    status = 413
    code = "file_too_large"


class NotARegularFile(SandboxError):
    """A FIFO, socket or device (or a link to one): reading or writing it could block."""

    status = 400
    code = "not_a_regular_file"


class SandboxTimeout(SandboxError):
    """An operation inside the sandbox did not finish within its deadline (it was killed)."""

    status = 504
    code = "sandbox_timeout"
    message = "The operation did not finish in time inside the sandbox"


class SandboxGone(SandboxError):
    status = 404
    code = "session_not_found"
    message = "Session not found"


class SandboxPaused(SandboxError):
    """The sandbox's container is paused (frozen, e.g. `docker pause` by an operator): nothing
    runs in it until it is unpaused. Not lost: it keeps its state."""

    status = 409
    code = "sandbox_paused"
    message = "The sandbox is paused; nothing can run in it until it is unpaused"


_BY_CODE: dict[str, type[PaddockError]] = {}


def _register(cls: type[PaddockError]) -> None:
    _BY_CODE.setdefault(cls.code, cls)
    for sub in cls.__subclasses__():
        _register(sub)


_register(PaddockError)


def from_code(code: str, message: str) -> PaddockError:
    """Rebuild the error a worker raised from its wire form."""
    cls = _BY_CODE.get(code, PaddockError)
    if cls is ValidationFailed:
        return PaddockError(message)
    return cls(message)
