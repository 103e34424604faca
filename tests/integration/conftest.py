"""Integration fixtures: a real stack (redis-server, Celery workers, gunicorn, Docker)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from selenium.webdriver.remote.webdriver import WebDriver

from devstack.stack import Stack
from tests.integration.accounts_helpers import Inbox, smtp_server
from tests.integration.browser import start_chromium
from tests.integration.client import Client


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(tmp_path_factory.mktemp("stack")) as s:
        yield s


@pytest.fixture(scope="session")
def api(stack: Stack) -> Client:
    return Client(stack)


@pytest.fixture(scope="session")
def sid(api: Client) -> str:
    """One shared Bash sandbox for tests that do not care about isolation."""
    return api.sandbox("Bash")


@pytest.fixture(scope="session")
def smtp() -> Iterator[tuple[str, Inbox]]:
    """A real SMTP server on loopback: (its smtp:// URL, the inbox it fills)."""
    controller, inbox = smtp_server()
    yield f"smtp://127.0.0.1:{controller.port}", inbox
    controller.stop()


@pytest.fixture(scope="module")
def chromium() -> Iterator[WebDriver]:
    """One headless Chromium per test module (tests/integration/browser.py)."""
    chrome = start_chromium()
    yield chrome
    chrome.quit()
