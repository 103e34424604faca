"""Errors keep their class, message and details across the worker -> web reply channel, for
every class, wherever it is raised; codes are unique by construction."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from devstack.stack import ROOT
from shared import errors
from shared.errors import (
    PaddockError,
    PathNotFound,
    QuotaExceeded,
    RateLimited,
    SandboxNotFound,
    SessionNotFound,
    ValidationFailed,
    from_wire,
)


def _wire_class(cls: type[PaddockError]) -> type[PaddockError]:
    """The class an error crosses the wire as: itself, or the nearest that declares a code."""
    return next(c for c in cls.__mro__ if "code" in c.__dict__)  # type: ignore[return-value]


def _every_error_class() -> list[type[PaddockError]]:
    found, todo = [], [PaddockError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


def _sample(cls: type[PaddockError]) -> PaddockError:
    if cls is ValidationFailed:
        return ValidationFailed({"cmd": "Missing data for required field."})
    if cls is RateLimited:
        return RateLimited(42, "slow down")
    if issubclass(cls, QuotaExceeded):
        return cls("quota reached (PADDOCK_X)", retry_after=7)
    return cls(f"a {cls.__name__} happened")


@pytest.mark.parametrize("cls", _every_error_class(), ids=lambda c: c.__name__)
def test_every_error_crosses_the_wire_intact(cls: type[PaddockError]) -> None:
    sent = _sample(cls)
    got = from_wire(json.loads(json.dumps(sent.wire())))  # as the reply channel carries it
    assert type(got) is _wire_class(cls)
    assert (got.status, got.code, got.message) == (sent.status, sent.code, sent.message)
    assert got.wire() == sent.wire()
    for attr in ("retry_after", "fields"):
        assert getattr(got, attr, None) == getattr(sent, attr, None)


def test_codes_are_unique_and_name_one_class() -> None:
    classes = [c for c in _every_error_class() if "code" in c.__dict__]
    codes = [c.code for c in classes]
    assert len(codes) == len(set(codes)), sorted(c for c in codes if codes.count(c) > 1)
    # The words that used to share one code are three codes now.
    assert len({SandboxNotFound.code, SessionNotFound.code, errors.SandboxGone.code}) == 3


def test_a_clashing_code_fails_when_the_class_is_made() -> None:
    with pytest.raises(TypeError, match="is SandboxNotFound's"):

        class Clash(PaddockError):
            code = "sandbox_not_found"

    class Finer(SandboxNotFound):  # no code of its own: crosses as its parent
        pass

    got = from_wire(Finer("gone").wire())
    assert type(got) is SandboxNotFound and got.message == "gone"


def test_a_process_that_imported_nothing_else_knows_every_code() -> None:
    # The trap this replaces: a class defined in a module the web had not imported came back
    # as a plain 500 (from_code('secret_not_found') gave PaddockError).
    probe = (
        "from shared.errors import from_wire\n"
        "for code in ('secret_not_found', 'otp_invalid', 'session_not_found',"
        " 'rate_limited', 'sandbox_gone', 'version_mismatch'):\n"
        "    e = from_wire({'error': code, 'message': 'm', 'details': {'retry_after': 3}})\n"
        "    print(code, type(e).__name__, e.status)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:-1] == [
        "secret_not_found BundleNotFound 404",
        "otp_invalid OtpInvalid 401",
        "session_not_found SessionNotFound 404",
        "rate_limited RateLimited 429",
        "sandbox_gone SandboxGone 404",
        "version_mismatch VersionMismatch 412",
    ]


@pytest.mark.parametrize(
    "body",
    [
        {"error": "made-up", "message": "boom"},
        {"message": "no code"},
        {"error": "quota_exceeded", "message": "q", "details": {"retry_after": "soon"}},
        {"error": "validation_failed", "message": "v", "details": {"fields": ["not", "a", "map"]}},
        {"error": "rate_limited", "message": "r", "details": None},
    ],
)
def test_a_malformed_reply_is_still_an_error_never_a_crash(body: dict[str, Any]) -> None:
    err = from_wire(body)
    assert isinstance(err, PaddockError) and 400 <= err.status <= 599


def test_worker_errors_keep_their_class_across_the_wire() -> None:
    err = from_wire(PathNotFound("no such file").wire())
    assert isinstance(err, PathNotFound) and err.status == 404 and err.message == "no such file"
    assert isinstance(from_wire(SandboxNotFound().wire()), SandboxNotFound)
    assert from_wire({"error": "made-up", "message": "boom"}).status == 500
