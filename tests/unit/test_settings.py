"""Settings are read from PADDOCK_* variables into typed values, bad ones are refused, and the
app will not start without its secrets."""

from __future__ import annotations

import fakeredis
import pytest

from shared.crypto import new_fernet_key
from shared.errors import ConfigError
from shared.settings import Settings
from web.app import create_app


def test_settings_from_env_parses_types_and_sizes() -> None:
    s = Settings.from_env(
        {
            "PADDOCK_PORT": "8080",
            "PADDOCK_AUTH": "ON",
            "PADDOCK_SANDBOX_MEMORY": "512m",
            "PADDOCK_SANDBOX_CPUS": "1.5",
            "PADDOCK_HOST_ID": "h1",
            "PADDOCK_MAX_BODY_BYTES": "1k",
        }
    )
    assert (s.port, s.auth, s.sandbox_memory, s.sandbox_cpus, s.host_id, s.max_body_bytes) == (
        8080,
        True,
        512 << 20,
        1.5,
        "h1",
        1024,
    )
    assert Settings.from_env({}).idle_timeout == 600
    assert Settings.from_env({}).host_id  # defaults to the hostname


@pytest.mark.parametrize(
    "env",
    [
        {"PADDOCK_PORT": "eighty"},
        {"PADDOCK_AUTH": "maybe"},
        {"PADDOCK_SANDBOX_NETWORK": "host"},
        {"PADDOCK_IDLE_TIMEOUT": "0"},
        {"PADDOCK_HOST_DEAD_AFTER": "0"},  # every restart would lose its host's sandboxes
    ],
)
def test_bad_settings_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        Settings.from_env(env)


SECRET = "s" * 40


def test_app_refuses_to_start_without_secrets() -> None:
    with pytest.raises(ConfigError):
        create_app(
            Settings(jwt_secret="", secret_key=new_fernet_key()), redis_client=fakeredis.FakeRedis()
        )
    with pytest.raises(ConfigError):
        create_app(Settings(jwt_secret=SECRET, secret_key=""), redis_client=fakeredis.FakeRedis())
