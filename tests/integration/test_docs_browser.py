"""``/docs`` in real headless Chromium: Swagger UI from this server's own files, both OpenAPI
documents, and "try it" with an API key against the same server."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from devstack.stack import Stack
from tests.integration.accounts_helpers import Inbox
from tests.integration.browser import console_errors, fetched, shot, wait_for, wait_text
from tests.integration.client import Client


@pytest.fixture(scope="module")
def v1(tmp_path_factory: pytest.TempPathFactory, smtp: tuple[str, Inbox]) -> Iterator[Client]:
    url, inbox = smtp
    env = {"PADDOCK_AUTH": "on", "PADDOCK_SMTP_URL": url}
    with Stack(tmp_path_factory.mktemp("docs"), env=env) as st:
        yield Client(st, inbox=inbox)


def test_docs_load_from_this_server_only(v1: Client, chromium: WebDriver) -> None:
    chromium.get(v1.url + "/docs")
    wait_for(chromium, ".opblock-summary-path[data-path='/v1/templates']")
    shot(chromium, "docs-v1")
    origin = urlsplit(v1.url).netloc
    urls = fetched(chromium)
    assert any(u.endswith("/docs/assets/swagger-ui-bundle.js") for u in urls), urls
    assert any(u.endswith("/v1/openapi.json") for u in urls), urls
    assert {urlsplit(u).netloc for u in urls} == {origin}, urls
    # A CSP violation (an inline script or style the policy refuses) is a console error.
    assert console_errors(chromium) == []
    # The other document is one choice away.
    chromium.find_element(By.CSS_SELECTOR, ".topbar select").send_keys("E2B-compatible API")
    wait_for(chromium, ".opblock-summary-path[data-path='/sessions/{sessionID}/processes']")
    shot(chromium, "docs-e2b")
    assert {urlsplit(u).netloc for u in fetched(chromium)} == {origin}


def test_try_it_with_an_api_key(v1: Client, chromium: WebDriver) -> None:
    _jwt, key = v1.tenant("docs@example.com")
    chromium.get(v1.url + "/docs")
    wait_for(chromium, "button.btn.authorize").click()
    field = wait_for(chromium, ".auth-container input")  # the first scheme: apiKey
    field.send_keys(key)
    chromium.find_element(By.CSS_SELECTOR, ".auth-container button.authorize").click()
    chromium.find_element(By.CSS_SELECTOR, "button.btn-done").click()
    chromium.find_element(
        By.CSS_SELECTOR, ".opblock-summary-path[data-path='/v1/templates']"
    ).click()
    wait_for(chromium, ".try-out__btn").click()
    wait_for(chromium, "button.execute").click()
    status = wait_text(chromium, ".live-responses-table .response-col_status", "200")
    assert status.text.strip() == "200"
    body = wait_for(chromium, ".live-responses-table .response-col_description pre")
    assert '"templates"' in body.text
    shot(chromium, "docs-try-it")
    # The key went in a header, never in a URL the page loaded.
    assert not [u for u in fetched(chromium) if key in u]
