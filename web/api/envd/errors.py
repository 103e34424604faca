"""Paddock's errors in the envd protocol's words: a Connect error code for the RPCs, an HTTP
status with ``{"message": ...}`` for ``/files`` and ``/health``, chosen so the SDK raises the
exception a user of E2B expects (its maps: e2b/envd/rpc.py, e2b/envd/api.py):

- a path that is not there: ``not_found``/404 (FileNotFoundException, a NotFoundException);
- a wrong or missing access token: ``unauthenticated``/401 (AuthenticationException);
- bad input, a directory where a file goes and so on: ``invalid_argument``/400;
- a sandbox that is gone: ``unavailable``/502 saying it "was not found", as E2B's proxy
  does (SandboxNotRunningException); a paused one: ``unavailable``/502;
- no room for the file: ``failed_precondition``/413; deadlines: ``deadline_exceeded``/504.
"""

from __future__ import annotations

from connectrpc.code import Code
from connectrpc.errors import ConnectError

from shared.errors import (
    BackendUnsupported,
    BadRequest,
    BrokerUnavailable,
    EngineUnavailable,
    FileTooLarge,
    IsADirectory,
    NoCapacity,
    NotADirectory,
    NotARegularFile,
    NotFound,
    PaddockError,
    PathExists,
    PathNotFound,
    PermissionDenied,
    QuotaExceeded,
    SandboxGone,
    SandboxNotFound,
    SandboxPaused,
    SandboxTimeout,
    StateUnavailable,
    Unauthorized,
    ValidationFailed,
    WorkerTimeout,
)

# First match wins: subclasses before their parents.
_CODES: tuple[tuple[type[PaddockError], Code, int], ...] = (
    (PathNotFound, Code.NOT_FOUND, 404),
    (SandboxNotFound, Code.UNAVAILABLE, 502),
    (SandboxGone, Code.UNAVAILABLE, 502),
    (SandboxPaused, Code.UNAVAILABLE, 502),
    (NotFound, Code.NOT_FOUND, 404),
    (Unauthorized, Code.UNAUTHENTICATED, 401),
    (PermissionDenied, Code.PERMISSION_DENIED, 403),
    (PathExists, Code.ALREADY_EXISTS, 409),
    (NotADirectory, Code.INVALID_ARGUMENT, 400),
    (IsADirectory, Code.INVALID_ARGUMENT, 400),
    (NotARegularFile, Code.INVALID_ARGUMENT, 400),
    (ValidationFailed, Code.INVALID_ARGUMENT, 400),
    (BadRequest, Code.INVALID_ARGUMENT, 400),
    (FileTooLarge, Code.FAILED_PRECONDITION, 413),
    (QuotaExceeded, Code.RESOURCE_EXHAUSTED, 429),
    (SandboxTimeout, Code.DEADLINE_EXCEEDED, 504),
    (WorkerTimeout, Code.DEADLINE_EXCEEDED, 504),
    (BackendUnsupported, Code.UNIMPLEMENTED, 501),
    (EngineUnavailable, Code.UNAVAILABLE, 503),
    (NoCapacity, Code.UNAVAILABLE, 503),
    (BrokerUnavailable, Code.UNAVAILABLE, 503),
    (StateUnavailable, Code.UNAVAILABLE, 503),
)


def message(exc: PaddockError) -> str:
    if isinstance(exc, ValidationFailed):
        return "; ".join(f"{k}: {v}" for k, v in exc.fields.items()) or exc.message
    return exc.message


def to_connect(exc: PaddockError) -> ConnectError:
    for cls, code, _ in _CODES:
        if isinstance(exc, cls):
            return ConnectError(code, message(exc))
    return ConnectError(Code.INTERNAL, message(exc))


def http_status(exc: PaddockError) -> int:
    for cls, _, status in _CODES:
        if isinstance(exc, cls):
            return status
    return 500
