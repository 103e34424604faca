"""One exception hierarchy; each class carries its HTTP status and its own unique code.

Every error a request can meet is defined here, so that any process that imports this module
knows every class. The web layer turns them into each API's envelope; workers raise them and
the reply channel carries ``wire()`` back, from which ``from_wire`` rebuilds the same class
with the same message and details (``retry_after``, a validation's fields).
"""

from __future__ import annotations

from typing import Any


class ConfigError(Exception):
    """A PADDOCK_* variable has a value that cannot be used."""


_BY_CODE: dict[str, type[PaddockError]] = {}


class PaddockError(Exception):
    status = 500
    code = "internal_error"
    message = "Internal Server Error"

    def __init__(self, message: str | None = None, **details: Any) -> None:
        super().__init__(message or self.message)
        self.message = message or self.message
        self.details = details

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # No two classes declare one code: a code names exactly one class on the wire (checked
        # when the class is made, so a clash cannot ship). A subclass that declares none is a
        # finer kind of its parent for the code that raises it (workers.host.shares.ShareUsedUp):
        # it crosses the wire as that parent, with the same code, message and details.
        super().__init_subclass__(**kwargs)
        if "code" in cls.__dict__:
            _claim(cls)

    def wire(self) -> dict[str, Any]:
        """What the reply channel carries (see from_wire)."""
        return {"error": self.code, "message": self.message, "details": self.wire_details()}

    def wire_details(self) -> dict[str, Any]:
        return {}

    @classmethod
    def rebuild(cls, message: str, details: dict[str, Any]) -> PaddockError:
        return cls(message)


def _claim(cls: type[PaddockError]) -> None:
    other = _BY_CODE.setdefault(cls.code, cls)
    same = (other.__module__, other.__qualname__) == (cls.__module__, cls.__qualname__)
    if not same:
        raise TypeError(f"error code {cls.code!r} of {cls.__qualname__} is {other.__qualname__}'s")
    _BY_CODE[cls.code] = cls  # a module reloaded: its new class object


_claim(PaddockError)


class ValidationFailed(PaddockError):
    status = 422
    code = "validation_failed"
    message = "Validation Failed"

    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__("Validation Failed")
        self.fields = fields

    def wire_details(self) -> dict[str, Any]:
        return {"fields": self.fields}

    @classmethod
    def rebuild(cls, message: str, details: dict[str, Any]) -> PaddockError:
        fields = details.get("fields")
        return cls({str(k): str(v) for k, v in fields.items()} if isinstance(fields, dict) else {})


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


class SandboxNotFound(NotFound):
    """No sandbox with this id for this tenant (the E2B API words it "Session not found")."""

    code = "sandbox_not_found"
    message = "Sandbox not found"


class SessionNotFound(NotFound):
    """No agent session with this id for this tenant."""

    code = "session_not_found"
    message = "No session with this id"


class SessionEnded(PaddockError):
    """The agent session has ended: nothing more runs in it (its history stays readable)."""

    status = 409
    code = "session_ended"
    message = "The session has ended"


class QuotaExceeded(PaddockError):
    """A per-tenant or per-sandbox quota is used up; the message names the quota and its
    setting. Answered as 429 with ``Retry-After``, which crosses the wire as a detail (for
    RateLimited too)."""

    status = 429
    code = "quota_exceeded"
    message = "Quota exceeded"

    def __init__(self, message: str | None = None, retry_after: int = 1, **details: Any) -> None:
        super().__init__(message, **details)
        self.retry_after = retry_after

    def wire_details(self) -> dict[str, Any]:
        return {"retry_after": self.retry_after}

    @classmethod
    def rebuild(cls, message: str, details: dict[str, Any]) -> PaddockError:
        return cls(message=message, retry_after=_retry_after(details))


class SandboxStateConflict(PaddockError):
    """The sandbox is not in a state the request can act on (pausing a paused sandbox,
    resuming a running one, changing the lifetime of an agent session's sandbox)."""

    status = 409
    code = "sandbox_state_conflict"
    message = "The sandbox is not in a state this request can act on"


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


class BrokerUnavailable(PaddockError):
    """Celery's broker (the Redis of PADDOCK_BROKER_URL, or PADDOCK_REDIS_URL's) refused or
    did not answer a send (shared.rpc): nothing reached a host. Retry shortly."""

    status = 503
    code = "broker_unavailable"
    message = "The task broker (Redis) is not answering; retry shortly"


class StateUnavailable(PaddockError):
    """The state store (the Redis of PADDOCK_REDIS_URL) stayed down or unanswering past the
    clients' own retries (shared.redisconn). Retry shortly."""

    status = 503
    code = "state_unavailable"
    message = "The state store (Redis) is not answering; retry shortly"


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


class BackendUnsupported(SandboxError):
    """The host's sandbox backend cannot do this (e.g. the envd protocol's file operations
    on the Docker backend: PADDOCK_SANDBOX_BACKEND=supervisor can)."""

    status = 501
    code = "backend_unsupported"


class SandboxTimeout(SandboxError):
    """An operation inside the sandbox did not finish within its deadline (it was killed)."""

    status = 504
    code = "sandbox_timeout"
    message = "The operation did not finish in time inside the sandbox"


class SandboxGone(SandboxError):
    """The sandbox's container is gone or stopped behind Paddock's back (it becomes lost)."""

    status = 404
    code = "sandbox_gone"
    message = "Sandbox not found: its container is gone"


class SandboxPaused(SandboxError):
    """The sandbox's container is paused (frozen, e.g. `docker pause` by an operator): nothing
    runs in it until it is unpaused. Not lost: it keeps its state."""

    status = 409
    code = "sandbox_paused"
    message = "The sandbox is paused; nothing can run in it until it is unpaused"


# Accounts (shared/accounts.py)
class OtpInvalid(PaddockError):
    status = 401
    code = "otp_invalid"
    message = "The code is wrong, expired or already used"


class ApiKeyRevoked(PaddockError):
    status = 401
    code = "api_key_revoked"
    message = "This API key has been revoked"


class ApiKeyExpired(PaddockError):
    status = 401
    code = "api_key_expired"
    message = "This API key has expired"


class RateLimited(QuotaExceeded):
    """Too many requests in a window (a quota of requests): its own code, the same 429."""

    code = "rate_limited"
    message = "Too many requests"

    def __init__(self, retry_after: int, message: str | None = None) -> None:
        super().__init__(message, retry_after=max(1, int(retry_after)))


class LimitExceeded(PaddockError):
    status = 400
    code = "limit_exceeded"


# Secret bundles (shared/secrets.py)
class BundleNotFound(PaddockError):
    status = 404
    code = "secret_not_found"
    message = "No secret bundle with this name"


class BundleExists(PaddockError):
    status = 409
    code = "secret_exists"
    message = "A secret bundle with this name already exists"


class BundleInUse(PaddockError):
    status = 409
    code = "secret_in_use"
    message = "A running session uses this bundle; pass force=true to delete it anyway"


class VersionMismatch(PaddockError):
    status = 412
    code = "version_mismatch"
    message = "If-Match does not match the bundle's current version"


def _retry_after(details: dict[str, Any]) -> int:
    try:
        return max(1, int(details.get("retry_after", 1)))
    except (TypeError, ValueError):
        return 1


def from_wire(body: dict[str, Any]) -> PaddockError:
    """Rebuild the error a worker raised from its wire form (``PaddockError.wire``): the same
    class, message and details; an unknown code is a plain internal error with its message."""
    cls = _BY_CODE.get(str(body.get("error", "")), PaddockError)
    details = body.get("details")
    return cls.rebuild(str(body.get("message", "")), details if isinstance(details, dict) else {})
