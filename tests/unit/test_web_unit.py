"""Pure web logic with an app built on fakeredis (no server, no worker)."""

from __future__ import annotations

import fakeredis
import pytest

from shared.crypto import new_fernet_key
from shared.errors import ConfigError
from shared.netpolicy import BaseUrlRefused, check_base_url
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
def testconnect_url(public: str, base: str, expected: str) -> None:
    app = _app(public_url=public)
    svc: Services = app.extensions["paddock"]
    with app.test_request_context("/v1/sessions", base_url=base):
        assert connect_url(svc, "ses_1") == expected


def test_app_refuses_to_start_without_secrets() -> None:
    with pytest.raises(ConfigError):
        create_app(
            Settings(jwt_secret="", secret_key=new_fernet_key()), redis_client=fakeredis.FakeRedis()
        )
    with pytest.raises(ConfigError):
        create_app(Settings(jwt_secret=SECRET, secret_key=""), redis_client=fakeredis.FakeRedis())


@pytest.mark.parametrize(
    ("url", "allowed", "ok"),
    [
        ("http://127.0.0.1:8080/v1", "", False),
        ("http://localhost/v1", "", False),
        ("http://10.1.2.3/v1", "", False),
        ("http://169.254.169.254/", "", False),
        ("http://[::1]:9/", "", False),
        ("ftp://127.0.0.1/", "127.0.0.1", False),
        ("http://127.0.0.1:8080/v1", "127.0.0.1", True),
        ("http://localhost:8080/v1", "localhost", True),
        ("http://10.1.2.3/v1", "10.0.0.0/8", True),
        ("http://10.1.2.3/v1", "192.168.0.0/16", False),
        ("http://8.8.8.8/v1", "", True),
    ],
)
def test_base_url_policy(url: str, allowed: str, ok: bool) -> None:
    # Literal addresses and localhost only: nothing here needs a DNS server.
    if ok:
        check_base_url(url, allowed)
    else:
        with pytest.raises(BaseUrlRefused):
            check_base_url(url, allowed)
