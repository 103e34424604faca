"""Regressions of what `make fuzz` (tests/fuzz) found: answers that were 500s, or that their
OpenAPI document did not describe. Fast: an app on fakeredis, the driver without Docker."""

from __future__ import annotations

from typing import Any

import docker
import fakeredis
import pytest
import requests
import schemathesis
from flask import Flask

from shared.crypto import new_fernet_key
from shared.errors import PermissionDenied, SandboxError, SandboxGone
from shared.settings import Settings
from web.api.e2b.openapi import build_document
from web.api.v1.openapi import build_spec
from web.api.v1.sessions import MAX_SEQ
from web.app import create_app
from web.services import Services
from workers.backends.docker.driver import DockerDriver


def _app(**settings: Any) -> Flask:
    s = Settings(jwt_secret="s" * 40, secret_key=new_fernet_key(), **settings)
    return create_app(s, redis_client=fakeredis.FakeRedis())


def _api_key(app: Flask) -> str:
    svc: Services = app.extensions["paddock"]
    _key, plain = svc.accounts.create_api_key("usr_fuzz", "k", 5)
    return plain


def _conforms(document: dict[str, Any], path: str, method: str, response: Any) -> None:
    """Raises schemathesis' failure when ``response`` is not what the document says."""
    operation = schemathesis.openapi.from_dict(document)[path][method]
    operation.validate_response(response)


@pytest.mark.parametrize("after", ["²", "\u0661", str(MAX_SEQ + 1), str(2**64), "-1", "1.5", ""])
def test_events_after_that_redis_cannot_take_is_a_400(after: str) -> None:
    # "²" passed str.isdigit and int() raised; 2**64 reached XRANGE: both were 500s.
    app = _app()
    key = _api_key(app)
    r = app.test_client().get(
        "/v1/sessions/ses_x/events",
        query_string={"after": after},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert r.status_code == 400, r.get_data(as_text=True)
    assert r.json is not None and r.json["error"]["param"] == "after"
    _conforms(build_spec(), "/v1/sessions/{session_id}/events", "GET", r)


def test_events_after_in_range_reaches_the_session_lookup() -> None:
    app = _app()
    key = _api_key(app)
    r = app.test_client().get(
        f"/v1/sessions/ses_x/events?after={MAX_SEQ}", headers={"Authorization": f"Bearer {key}"}
    )
    assert r.status_code == 404


def test_v1_validation_error_with_details_matches_the_document() -> None:
    # `details` was sent but not documented (ErrorBody refuses unknown keys).
    app = _app()
    key = _api_key(app)
    r = app.test_client().post(
        "/v1/tenants/me/secrets",
        json={"name": "Bad Name", "values": {"lower": "x"}},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert r.status_code == 400 and r.json is not None and r.json["error"]["details"]
    _conforms(build_spec(), "/v1/tenants/me/secrets", "POST", r)


def test_e2b_401_is_documented_on_every_route() -> None:
    # With auth on, every E2B route answers 401 without a key; the document said 404/422/500.
    ops = [
        (path, method, op)
        for path, item in build_document()["paths"].items()
        if path != "/health"
        for method, op in item.items()
    ]
    assert ops and all("401" in op["responses"] for _path, _method, op in ops)
    r = _app(auth=True).test_client().get("/sessions/nope/filesystem/dir?path=/")
    assert r.status_code == 401
    _conforms(build_document(), "/sessions/{sessionID}/filesystem/dir", "GET", r)


def test_e2b_answers_have_exactly_their_keys() -> None:
    # The generated client raises TypeError on an unknown key (handbook e2b-compat.md).
    schemas = build_document()["components"]["schemas"]
    for name in ("Session", "OpenPort", "Process", "OutStdResponse", "Error"):
        assert schemas[name]["additionalProperties"] is False, name


def test_sandbox_times_may_be_null() -> None:
    # An agent session's sandbox has no idle timer: last_active_at is null in /v1/sandboxes.
    props = build_spec()["components"]["schemas"]["SandboxInfo"]["properties"]
    assert props["last_active_at"]["nullable"] is True
    assert props["expires_at"]["nullable"] is True


def _driver(run: tuple[int, bytes, bytes]) -> DockerDriver:
    driver = DockerDriver.__new__(DockerDriver)  # no Docker: only the error mapping runs
    driver.settings = Settings()
    driver.on_gone = None
    driver._run = lambda *_a, **_k: run  # type: ignore[method-assign]
    return driver


@pytest.mark.parametrize(
    "stderr",
    [
        b"rm: refusing to remove '.' or '..' directory: skipping './.'\n",
        b"rm: cannot remove '/proc/1/ksm_stat': Operation not permitted\n",
        b"refusing to remove the root directory: /\n",
    ],
)
def test_remove_refused_inside_the_sandbox_is_403(stderr: bytes) -> None:
    # The remove script's exit code 86 (rm refused): was SandboxError, a 500.
    with pytest.raises(PermissionDenied):
        _driver((86, b"", stderr)).remove("sbx", "/x")


def test_exec_that_cannot_start_is_a_gone_sandbox() -> None:
    # Exit 126 without a word: the runtime could not start our script (container removal).
    with pytest.raises(SandboxGone):
        _driver((126, b"", b"")).remove("sbx", "/x")
    # ...but a script's own failure keeps its message.
    with pytest.raises(SandboxError, match="boom"):
        _driver((1, b"", b"boom\n")).remove("sbx", "/x")


def test_engine_500_not_running_is_a_gone_sandbox() -> None:
    response = requests.Response()
    response.status_code = 500
    exc = docker.errors.APIError(
        "500 Server Error",
        response=response,
        explanation="Container abc is not running: Removal In Progress",
    )
    assert isinstance(_driver((0, b"", b""))._engine_error("sbx", exc), SandboxGone)
