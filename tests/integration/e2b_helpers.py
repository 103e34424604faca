"""The environment the official E2B SDK reads, pointed at a test stack (the tests that drive the
SDK unchanged, as a user would: only environment variables, all loopback)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from e2b import ConnectionConfig, Sandbox
from packaging.version import Version

from devstack.stack import Stack


@contextmanager
def sdk_env(stack: Stack, api_key: str = "") -> Iterator[None]:
    """E2B_API_URL and E2B_SANDBOX_URL set to the stack, E2B_DOMAIN to localhost (loopback, so
    nothing can leave the machine; the control API's answers name the port) and E2B_API_KEY
    to ``api_key`` when given, for the block; the environment as it was afterwards."""
    env = {
        "E2B_API_URL": stack.url,
        "E2B_DOMAIN": "localhost",
        "E2B_SANDBOX_URL": stack.url,
        "NO_PROXY": "127.0.0.1,localhost",
    }
    if api_key:
        env["E2B_API_KEY"] = api_key
    before = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def with_wrong_token(sbx: Sandbox) -> Sandbox:
    """The SDK's own constructor with ``sbx``'s id and an envd access token that is not its
    (every envd call of it must fail to authenticate)."""
    headers = {
        "E2b-Sandbox-Id": sbx.sandbox_id,
        "E2b-Sandbox-Port": str(ConnectionConfig.envd_port),
        "X-Access-Token": "not-the-token",
    }
    return Sandbox(
        sandbox_id=sbx.sandbox_id,
        sandbox_domain=None,
        envd_version=Version(sbx._envd_version.public),
        envd_access_token="not-the-token",
        traffic_access_token=None,
        connection_config=ConnectionConfig(extra_sandbox_headers=headers),
    )
