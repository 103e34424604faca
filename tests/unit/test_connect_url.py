"""The WebSocket URL a new agent session is given: from PADDOCK_PUBLIC_URL, else the request's
own base URL (ws:// or wss://)."""

from __future__ import annotations

import fakeredis
import pytest

from shared.crypto import new_fernet_key
from shared.settings import Settings
from web.api.v1.sessions import connect_url
from web.app import create_app
from web.services import Services

SECRET = "s" * 40


def _app(**settings: str):  # type: ignore[no-untyped-def]
    s = Settings(jwt_secret=SECRET, secret_key=new_fernet_key(), **settings)  # type: ignore[arg-type]
    return create_app(s, redis_client=fakeredis.FakeRedis())


@pytest.mark.parametrize(
    ("public", "base", "expected"),
    [
        ("", "http://localhost:3000/", "ws://localhost:3000/v1/sessions/ses_1/ws"),
        ("", "https://api.example.com/", "wss://api.example.com/v1/sessions/ses_1/ws"),
        (
            "https://rt.example.com",
            "http://10.0.0.5:3000/",
            "wss://rt.example.com/v1/sessions/ses_1/ws",
        ),
        ("http://box:8080/", "https://x/", "ws://box:8080/v1/sessions/ses_1/ws"),
    ],
)
def test_connect_url(public: str, base: str, expected: str) -> None:
    app = _app(public_url=public)
    svc: Services = app.extensions["paddock"]
    with app.test_request_context("/v1/sessions", base_url=base):
        assert connect_url(svc, "ses_1") == expected
