"""The envd protocol's input handling (web/api/envd): paths, users, upload bodies, and the
Connect codes and HTTP statuses Paddock's errors become (what the SDK maps onto its
exceptions)."""

from __future__ import annotations

import base64
import gzip

import pytest
from connectrpc.code import Code
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from shared.errors import (
    BackendUnsupported,
    FileTooLarge,
    NotADirectory,
    PathExists,
    PathNotFound,
    PermissionDenied,
    SandboxGone,
    SandboxNotFound,
    Unauthorized,
    ValidationFailed,
)
from web.api.envd import access, errors, files


@pytest.mark.parametrize(
    ("given", "resolved"),
    [
        ("a.txt", "/home/user/a.txt"),
        ("", "/home/user"),
        ("~", "/home/user"),
        ("~/x/../y", "/home/user/y"),
        ("/etc/passwd", "/etc/passwd"),
        ("//tmp//x/", "/tmp/x"),
        ("../../../..", "/"),
    ],
)
def test_paths_resolve_inside_the_sandbox_like_envd(given: str, resolved: str) -> None:
    assert access.resolve(given) == resolved


@pytest.mark.parametrize("bad", ["a\x00b", "x" * 4097])
def test_bad_paths_are_refused(bad: str) -> None:
    with pytest.raises(ValidationFailed):
        access.resolve(bad)


def _basic(user: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{user}:".encode()).decode()}


def test_users_user_and_root_are_accepted_others_refused() -> None:
    assert access.check_user({}) == "user"
    assert access.check_user(_basic("user")) == "user"
    assert access.check_user(_basic("root")) == "root"
    assert access.check_user({}, "root") == "root"
    for bad in (_basic("nobody"), {"authorization": "Basic !!!"}):
        with pytest.raises(ValidationFailed):
            access.check_user(bad)
    with pytest.raises(ValidationFailed):
        access.check_user({}, "admin")


@pytest.mark.parametrize(
    ("exc", "code", "status"),
    [
        (PathNotFound("x"), Code.NOT_FOUND, 404),
        (Unauthorized("x"), Code.UNAUTHENTICATED, 401),
        (PermissionDenied("x"), Code.PERMISSION_DENIED, 403),
        (PathExists("x"), Code.ALREADY_EXISTS, 409),
        (NotADirectory("x"), Code.INVALID_ARGUMENT, 400),
        (ValidationFailed({"path": "bad"}), Code.INVALID_ARGUMENT, 400),
        (FileTooLarge("x"), Code.FAILED_PRECONDITION, 413),
        (SandboxNotFound("The sandbox s was not found"), Code.UNAVAILABLE, 502),
        (SandboxGone("x"), Code.UNAVAILABLE, 502),
        (BackendUnsupported("x"), Code.UNIMPLEMENTED, 501),
    ],
)
def test_errors_become_the_codes_the_sdk_maps(exc: Exception, code: Code, status: int) -> None:
    assert isinstance(exc, errors.PaddockError)
    assert errors.to_connect(exc).code == code
    assert errors.http_status(exc) == status


def test_a_gone_sandbox_says_was_not_found_as_e2bs_proxy_does() -> None:
    # The SDK tells "sandbox not running" from other unavailability by these words.
    err = errors.to_connect(SandboxNotFound("The sandbox s was not found"))
    assert "was not found" in err.message


def _request(data: bytes, encoding: str | None = None) -> Request:
    headers = {"Content-Encoding": encoding} if encoding else {}
    builder = EnvironBuilder(
        method="POST", data=data, headers=headers, content_type="application/octet-stream"
    )
    return Request(builder.get_environ())


def test_upload_bodies_are_bounded_plain_and_gzip() -> None:
    assert files._body(_request(b"x" * 100), 100) == b"x" * 100
    with pytest.raises(FileTooLarge):
        files._body(_request(b"x" * 101), 100)
    assert files._body(_request(gzip.compress(b"y" * 100), "gzip"), 100) == b"y" * 100
    bomb = gzip.compress(b"\x00" * 100_000)  # small on the wire, large inflated
    with pytest.raises(FileTooLarge):
        files._body(_request(bomb, "gzip"), 1000)
    with pytest.raises(ValidationFailed):
        files._body(_request(b"not gzip", "gzip"), 100)
    with pytest.raises(ValidationFailed):
        files._body(_request(b"x", "br"), 100)
