"""Headless Chromium for the browser tests (Debian's ``chromium`` and ``chromium-driver``,
installed by ``scripts/bootstrap.sh --browser``, driven by Selenium), and the few steps the
tests repeat: wait for an element or a text, take a screenshot, read what the page fetched and
what its console said.

No request may leave the machine: the browser resolves every host name but localhost to
nothing (``--host-resolver-rules``), and Chromium's own background services are off.
Screenshots go to ``tests/screenshots/`` (in .gitignore).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

SHOTS = Path(__file__).resolve().parents[1] / "screenshots"
WAIT = 60.0  # seconds; generous (a sandbox start on a busy 2-core machine), never a measure
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",  # the tests run as root, where Chromium's own sandbox cannot start
    "--disable-dev-shm-usage",
    "--disable-gpu",
    "--window-size=1280,1000",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication",
    # Any host but the loopback resolves to nothing: nothing a page asks for can leave.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
)


def chromium_paths() -> tuple[str, str]:
    """(browser, driver) binaries. Raises AssertionError naming the fix when absent."""
    browser = shutil.which("chromium")
    driver = shutil.which("chromedriver")
    assert browser and driver, "no chromium or chromedriver: run scripts/bootstrap.sh --browser"
    return browser, driver


def start_chromium() -> WebDriver:
    browser, driver = chromium_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # Explicit paths: Selenium Manager (which would download a driver) never runs.
    chrome = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    chrome.set_page_load_timeout(WAIT)
    return chrome


def shot(chrome: WebDriver, name: str) -> Path:
    SHOTS.mkdir(exist_ok=True)
    path = SHOTS / f"{name}.png"
    chrome.save_screenshot(str(path))
    return path


def wait_for(chrome: WebDriver, css: str, timeout: float = WAIT) -> WebElement:
    """The first visible element matching ``css``."""
    try:
        return WebDriverWait(chrome, timeout).until(
            ec.visibility_of_element_located((By.CSS_SELECTOR, css))
        )
    except TimeoutException:
        shot(chrome, "timeout")
        page = body_text(chrome)[:2000]
        raise AssertionError(f"no visible {css!r} after {timeout} s: {page}") from None


def wait_text(chrome: WebDriver, css: str, text: str, timeout: float = WAIT) -> WebElement:
    """The first element matching ``css`` once its text contains ``text``."""

    def found(d: Any) -> WebElement | bool:
        for el in d.find_elements(By.CSS_SELECTOR, css):
            if text in el.text:
                return el
        return False

    try:
        # A table the page redraws (the sandboxes list every 5 s) may swap an element out
        # between finding it and reading it: look again.
        got: WebElement = WebDriverWait(
            chrome, timeout, ignored_exceptions=(StaleElementReferenceException,)
        ).until(found)
    except TimeoutException:
        shot(chrome, "timeout")
        raise AssertionError(f"{text!r} never in {css!r}: {body_text(chrome)[:2000]}") from None
    return got


def body_text(chrome: WebDriver) -> str:
    return str(chrome.find_element(By.TAG_NAME, "body").text)


def fetched(chrome: WebDriver) -> list[str]:
    """Every URL the page loaded or requested (the Resource Timing entries) and its own."""
    urls: list[str] = chrome.execute_script(
        "return [location.href].concat(performance.getEntriesByType('resource').map(e => e.name))"
    )
    return urls


def console_errors(chrome: WebDriver) -> list[str]:
    """The page's console messages at level SEVERE since the last call (CSP violations are)."""
    return [e["message"] for e in chrome.get_log("browser") if e["level"] == "SEVERE"]
