"""Integration fixtures: a real stack (redis-server, Celery workers, gunicorn, Docker)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.integration.accounts_helpers import Inbox, smtp_server
from tests.stack import Stack


class Api:
    """A thin HTTP client for the E2B API of one stack: the local tenant, or the tenant of
    ``key``."""

    def __init__(self, stack: Stack, key: str | None = None, timeout: float = 120) -> None:
        self.stack = stack
        self.url = stack.url
        self.timeout = timeout
        self.http = requests.Session()
        if key:
            self.http.headers["X-API-Key"] = key

    def req(self, method: str, path: str, **kw: Any) -> requests.Response:
        kw.setdefault("timeout", self.timeout)
        return self.http.request(method, self.url + path, **kw)

    def session(self, env: str = "Bash") -> str:
        r = self.req("POST", "/sessions", json={"envID": env})
        assert r.status_code == 200, r.text
        return str(r.json()["id"])

    def start(self, sid: str, cmd: str, wait: bool = False) -> requests.Response:
        wait_param = "true" if wait else "false"
        return self.req("POST", f"/sessions/{sid}/processes?wait={wait_param}", json={"cmd": cmd})

    def run(self, sid: str, cmd: str, **body: Any) -> dict[str, Any]:
        r = self.req("POST", f"/sessions/{sid}/processes?wait=true", json={"cmd": cmd, **body})
        assert r.status_code == 200, r.text
        out: dict[str, Any] = r.json()
        assert out["finished"] is True
        return out

    def read(self, sid: str, path: str) -> requests.Response:
        return self.req("GET", f"/sessions/{sid}/filesystem/file", params={"path": path})

    def write(self, sid: str, path: str, content: str) -> requests.Response:
        return self.req(
            "PUT",
            f"/sessions/{sid}/filesystem/file",
            params={"path": path},
            json={"content": content},
        )

    def timed_echo(self, sid: str) -> float:
        """Seconds an ``echo`` takes end to end (the victim's view in abuse tests)."""
        started = time.monotonic()
        out = self.run(sid, "echo victim-ok")
        assert [x["line"] for x in out["stdout"]] == ["victim-ok"]
        return time.monotonic() - started


def stdout_lines(process: dict[str, Any]) -> list[str]:
    return [o["line"] for o in process["stdout"]]


def stderr_lines(process: dict[str, Any]) -> list[str]:
    return [o["line"] for o in process["stderr"]]


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(tmp_path_factory.mktemp("stack")) as s:
        yield s


@pytest.fixture(scope="session")
def api(stack: Stack) -> Api:
    return Api(stack)


@pytest.fixture(scope="session")
def sid(api: Api) -> str:
    """One shared Bash sandbox for tests that do not care about isolation."""
    return api.session("Bash")


@pytest.fixture(scope="session")
def smtp() -> Iterator[tuple[str, Inbox]]:
    """A real SMTP server on loopback: (its smtp:// URL, the inbox it fills)."""
    controller, inbox = smtp_server()
    yield f"smtp://127.0.0.1:{controller.port}", inbox
    controller.stop()
