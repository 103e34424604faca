"""The web console (``/console``) in real headless Chromium against the real stack: log in
with the code the test's SMTP server received, create an API key and see it once, create a
bundle, start a sandbox and run a command in it, upload a file, watch a shell-agent session
live and reload it mid-task, revoke the key, and a second tenant who sees none of it.

The tests run in order and build on each other (one browser, one stack, one tenant A):
``world`` carries what the earlier ones made. Screenshots go to tests/screenshots/.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select, WebDriverWait

from devstack.stack import Stack
from tests.integration.accounts_helpers import Inbox
from tests.integration.browser import (
    WAIT,
    console_errors,
    fetched,
    shot,
    wait_for,
    wait_text,
)
from tests.integration.client import Client

A_EMAIL = "alice@example.com"
B_EMAIL = "bob@example.com"


@pytest.fixture(scope="module")
def v1(tmp_path_factory: pytest.TempPathFactory, smtp: tuple[str, Inbox]) -> Iterator[Client]:
    url, inbox = smtp
    env = {"PADDOCK_AUTH": "on", "PADDOCK_SMTP_URL": url}
    with Stack(tmp_path_factory.mktemp("console"), env=env) as st:
        yield Client(st, inbox=inbox)


@pytest.fixture(scope="module")
def world() -> dict[str, Any]:
    """What the earlier tests of this module made (tenant A's objects)."""
    return {}


def go(chrome: WebDriver, v1: Client, page: str) -> None:
    chrome.get(f"{v1.url}/console/#/{page}")


def submit(chrome: WebDriver, form_css: str) -> None:
    chrome.find_element(By.CSS_SELECTOR, f"{form_css} button[type=submit]").click()


def login(chrome: WebDriver, v1: Client, email: str) -> None:
    assert v1.inbox is not None
    before = len(v1.inbox.to(email))
    chrome.get(v1.url + "/console/")
    wait_for(chrome, "#login-email").send_keys(email)
    submit(chrome, "#email-form")
    code = v1.inbox.wait_code(email, before + 1)
    wait_for(chrome, "#login-code").send_keys(code)
    submit(chrome, "#code-form")
    wait_for(chrome, "table#sandboxes")
    assert chrome.find_element(By.ID, "who").text == email


def storage(chrome: WebDriver) -> dict[str, str]:
    got: dict[str, str] = chrome.execute_script(
        "return Object.fromEntries(Object.entries(sessionStorage))"
    )
    return got


def accept_confirm(chrome: WebDriver) -> None:
    WebDriverWait(chrome, WAIT).until(lambda d: d.switch_to.alert).accept()


def test_login_with_the_mailed_code(v1: Client, chromium: WebDriver, world: dict) -> None:
    login(chromium, v1, A_EMAIL)
    shot(chromium, "console-sandboxes-empty")
    kept = storage(chromium)
    # The tokens are in this tab's storage, and in no cookie and no URL the page loaded.
    assert kept["pdk.account"].count(".") == 2 and kept["pdk.key"].startswith("pdk_live_")
    assert chromium.get_cookies() == []
    for token in (kept["pdk.account"], kept["pdk.key"]):
        assert not [u for u in fetched(chromium) if token in u]
    # The page and its files came from this server, and the first page is small.
    sizes: list[int] = chromium.execute_script(
        "return performance.getEntriesByType('navigation').concat("
        "performance.getEntriesByType('resource')).map(e => e.transferSize)"
    )
    assert sum(sizes) < 300_000, sizes
    assert console_errors(chromium) == []
    world["console_key_id"] = kept["pdk.keyId"]
    world["a_key"] = kept["pdk.key"]
    world["a_account"] = kept["pdk.account"]


def test_a_wrong_code_shows_the_api_message(v1: Client, chromium: WebDriver) -> None:
    # A fresh tab state: the login page, a code that is not the one mailed.
    chromium.execute_script("sessionStorage.clear()")
    chromium.get(v1.url + "/console/")
    wait_for(chromium, "#login-email").send_keys("nobody@example.com")
    submit(chromium, "#email-form")
    wait_for(chromium, "#login-code").send_keys("000000")
    submit(chromium, "#code-form")
    error = wait_text(chromium, "#error", "401")
    assert "code" in error.text.lower()
    assert "pdk.account" not in storage(chromium)


def test_create_a_key_and_see_it_once(v1: Client, chromium: WebDriver, world: dict) -> None:
    # Back in as A (the previous test left the tab logged out): the same tenant.
    _restore(chromium, v1, world)
    go(chromium, v1, "keys")
    wait_for(chromium, "#key-name").send_keys("ci <b>bold</b>")
    submit(chromium, "#key-create")
    key = wait_for(chromium, "#new-key-value").text
    assert key.startswith("pdk_live_")
    assert wait_for(chromium, "#copy-key").get_attribute("type") == "button"
    shot(chromium, "console-key-created")
    assert v1.req("GET", "/v1/sandboxes", token=key).status_code == 200
    # The name is shown as the text it is, not as markup.
    row = wait_text(chromium, "table#keys tbody tr", "ci <b>bold</b>")
    assert row.find_elements(By.TAG_NAME, "b") == []
    world["key"], world["key_id"] = key, row.get_attribute("data-key")
    # Gone once the page is left: only its prefix is listed.
    go(chromium, v1, "sandboxes")
    wait_for(chromium, "table#sandboxes")
    go(chromium, v1, "keys")
    wait_text(chromium, "table#keys tbody tr", key[:12])
    assert key not in chromium.page_source
    assert chromium.find_elements(By.ID, "new-key-value") == []
    shot(chromium, "console-keys")


def _restore(chromium: WebDriver, v1: Client, world: dict) -> None:
    """Tenant A's tab storage back (as a reload of A's tab would have it)."""
    chromium.get(v1.url + "/console/")
    chromium.execute_script(
        "sessionStorage.setItem('pdk.account', arguments[0]);"
        "sessionStorage.setItem('pdk.key', arguments[1]);"
        "sessionStorage.setItem('pdk.keyId', arguments[2]);"
        "sessionStorage.setItem('pdk.email', arguments[3]);",
        world["a_account"],
        world["a_key"],
        world["console_key_id"],
        A_EMAIL,
    )


def test_create_a_bundle(v1: Client, chromium: WebDriver, world: dict) -> None:
    go(chromium, v1, "bundles")
    wait_for(chromium, "#bundle-name").send_keys("llm-keys")
    chromium.find_element(By.ID, "nb-k1").send_keys("LLM_API_KEY")
    chromium.find_element(By.ID, "nb-v1").send_keys("sk-very-secret-value")
    submit(chromium, "#bundle-create")
    row = wait_text(chromium, "table#bundles tbody tr", "llm-keys")
    assert "LLM_API_KEY" in row.text and "sk-very-secret-value" not in chromium.page_source
    r = v1.req("GET", "/v1/tenants/me/secrets/llm-keys", token=world["key"])
    assert r.status_code == 200 and r.json()["keys"] == ["LLM_API_KEY"]
    shot(chromium, "console-bundles")
    # The same name again: the API's 409 message is shown, nothing else changes.
    chromium.find_element(By.ID, "bundle-name").send_keys("llm-keys")
    chromium.find_element(By.ID, "nb-k1").send_keys("OTHER")
    submit(chromium, "#bundle-create")
    error = wait_text(chromium, "#error", "409")
    assert "llm-keys" in error.text or "exists" in error.text
    r = v1.req("GET", "/v1/tenants/me/secrets/llm-keys", token=world["key"])
    assert r.json()["version"] == 1 and r.json()["keys"] == ["LLM_API_KEY"]
    world["bundle"] = "llm-keys"
    # Replace the values (write-only fields): version 2, the new keys, no value shown.
    row = wait_for(chromium, "tr[data-bundle='llm-keys']")
    row.find_element(By.CSS_SELECTOR, "button.quiet").click()
    wait_for(chromium, "#eb-k1").send_keys("LLM_API_KEY")
    chromium.find_element(By.ID, "eb-v1").send_keys("sk-rotated-value")
    chromium.find_element(By.CSS_SELECTOR, "#bundle-editor button.quiet").click()  # add a key
    wait_for(chromium, "#eb-k2").send_keys("LLM_MODEL")
    chromium.find_element(By.ID, "eb-v2").send_keys("m-1")
    submit(chromium, "#bundle-editor form")
    wait_text(chromium, "tr[data-bundle='llm-keys']", "LLM_MODEL")
    got = v1.req("GET", "/v1/tenants/me/secrets/llm-keys", token=world["key"]).json()
    assert got["version"] == 2 and sorted(got["keys"]) == ["LLM_API_KEY", "LLM_MODEL"]
    assert "sk-rotated-value" not in chromium.page_source
    # Delete another bundle.
    v1.req(
        "POST",
        "/v1/tenants/me/secrets",
        token=world["key"],
        json={"name": "scratch", "values": {"A": "b"}},
    )
    chromium.refresh()
    wait_for(chromium, "tr[data-bundle='scratch'] button.danger").click()
    accept_confirm(chromium)
    WebDriverWait(chromium, WAIT).until(
        lambda d: not d.find_elements(By.CSS_SELECTOR, "tr[data-bundle='scratch']")
    )
    assert v1.req("GET", "/v1/tenants/me/secrets/scratch", token=world["key"]).status_code == 404


def test_sandbox_command_and_files(
    v1: Client, chromium: WebDriver, world: dict, tmp_path: Path
) -> None:
    go(chromium, v1, "sandboxes")
    Select(wait_for(chromium, "#sb-template")).select_by_value("Bash")
    submit(chromium, "#sb-start")
    cmd = wait_for(chromium, "#cmd")
    sandbox_id = chromium.current_url.rsplit("/", 1)[-1]
    assert re.fullmatch(r"[A-Za-z0-9_-]+", sandbox_id), sandbox_id
    world["sandbox"] = sandbox_id
    cmd.send_keys("echo $((6*7))")
    submit(chromium, "#cmd-form")
    wait_text(chromium, "#cmd-status", "finished")
    assert chromium.find_element(By.ID, "cmd-output").text.strip() == "42"
    # stderr is shown too, apart.
    cmd.clear()
    cmd.send_keys("echo to-err >&2; echo to-out")
    submit(chromium, "#cmd-form")
    wait_text(chromium, "#cmd-status", "finished")
    out = chromium.find_element(By.ID, "cmd-output")
    assert [e.text for e in out.find_elements(By.CSS_SELECTOR, ".stderr")] == ["to-err\n"] or (
        "to-err" in out.find_element(By.CSS_SELECTOR, ".stderr").text
    )
    # Upload a file into /tmp and see it listed; the sandbox has it.
    local = tmp_path / "hello-console.txt"
    local.write_text("uploaded from the console\n")
    chromium.find_element(By.ID, "fs-upload").send_keys(str(local))
    submit(chromium, "#fs-send")
    wait_for(chromium, "table#files tr[data-file='hello-console.txt']")
    r = v1.req(
        "GET",
        f"/sessions/{sandbox_id}/filesystem/file",
        params={"path": "/tmp/hello-console.txt"},
        token=world["key"],
    )
    assert r.status_code == 200 and r.json()["content"] == "uploaded from the console\n"
    shot(chromium, "console-sandbox")
    # Download it: the same bytes arrive in the browser's download folder.
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    chromium.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
    )
    chromium.find_element(
        By.CSS_SELECTOR, "tr[data-file='hello-console.txt'] button[aria-label^='Download']"
    ).click()
    got = downloads / "hello-console.txt"
    WebDriverWait(chromium, WAIT).until(lambda _d: got.is_file() and got.stat().st_size > 0)
    assert got.read_text() == "uploaded from the console\n"
    # Delete it: gone from the list and from the sandbox.
    wait_for(chromium, "tr[data-file='hello-console.txt'] button.danger").click()
    accept_confirm(chromium)
    WebDriverWait(chromium, WAIT).until(
        lambda d: not d.find_elements(By.CSS_SELECTOR, "tr[data-file='hello-console.txt']")
    )
    r = v1.req(
        "GET",
        f"/sessions/{sandbox_id}/filesystem/file",
        params={"path": "/tmp/hello-console.txt"},
        token=world["key"],
    )
    assert r.status_code == 404
    # The sandboxes table lists it with its template and state.
    go(chromium, v1, "sandboxes")
    wait_text(chromium, f"tr[data-sandbox='{sandbox_id}']", "Bash")
    wait_text(chromium, f"tr[data-sandbox='{sandbox_id}']", "running")
    shot(chromium, "console-sandboxes")


def test_shell_session_live_and_reload(v1: Client, chromium: WebDriver, world: dict) -> None:
    go(chromium, v1, "sessions")
    Select(wait_for(chromium, "#ses-kind")).select_by_value("shell")
    chromium.find_element(By.ID, f"ses-b-{world['bundle']}").click()
    submit(chromium, "#ses-start")
    prompt = wait_for(chromium, "#task-prompt")
    session_id = chromium.current_url.rsplit("/", 1)[-1]
    world["session"] = session_id
    wait_text(chromium, "#ses-conn", "live")
    prompt.send_keys("for i in $(seq 1 8); do echo line$i; sleep 1; done")
    submit(chromium, "#task-form")
    # Output appears while the task runs (no exit yet).
    wait_text(chromium, "#transcript", "line2")
    assert chromium.find_elements(By.CSS_SELECTOR, "#transcript li.ev-exit") == []
    shot(chromium, "console-session-live")
    # A reload mid-task: the history, then the rest live, with no gap and nothing twice.
    chromium.refresh()
    wait_text(chromium, "#transcript li.ev-exit", "exit code 0", timeout=WAIT)
    items = chromium.find_elements(By.CSS_SELECTOR, "#transcript li")
    seqs = [int(li.get_attribute("data-seq") or 0) for li in items]
    assert seqs == list(range(1, len(seqs) + 1)), seqs
    out = "".join(
        li.text for li in chromium.find_elements(By.CSS_SELECTOR, "#transcript li.ev-stdout pre")
    )
    assert re.findall(r"line\d", out) == [f"line{i}" for i in range(1, 9)], out
    shot(chromium, "console-session-done")
    # Cancel: a long task ends with stop_reason cancelled.
    wait_for(chromium, "#task-prompt").send_keys("sleep 300")
    submit(chromium, "#task-form")
    wait_text(chromium, "#transcript li.ev-task_started:last-of-type", "started")
    WebDriverWait(chromium, WAIT).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#transcript li.ev-task_started")) == 2
    )
    chromium.find_element(By.ID, "task-cancel").click()
    wait_text(chromium, "#transcript li.ev-exit", "cancelled")
    # Reopened in a tab that did not start it (no session token): the whole history, read
    # through the events route, and no task box.
    chromium.execute_script(f"sessionStorage.removeItem('pdk.sess.{session_id}')")
    chromium.refresh()
    wait_text(chromium, "#transcript", "cancelled")
    assert chromium.find_elements(By.ID, "task-prompt") == []
    assert "line1" in wait_for(chromium, "#transcript").text
    # The bundle page says which session uses the bundle.
    go(chromium, v1, "bundles")
    row = wait_text(chromium, "table#bundles tbody tr", world["bundle"])
    wait_text(chromium, "table#bundles tbody tr", session_id)
    assert session_id in row.text


def test_kill_a_sandbox_from_the_table(v1: Client, chromium: WebDriver, world: dict) -> None:
    r = v1.req("POST", "/sessions", json={"envID": "Bash"}, token=world["key"])
    assert r.status_code == 200, r.text
    doomed = r.json()["id"]
    go(chromium, v1, "sandboxes")
    button = f"tr[data-sandbox='{doomed}'] button.danger"
    wait_for(chromium, button).click()
    WebDriverWait(chromium, WAIT).until(
        lambda d: not d.find_elements(By.CSS_SELECTOR, f"tr[data-sandbox='{doomed}']")
    )
    assert v1.req("GET", f"/v1/sandboxes/{doomed}", token=world["key"]).status_code == 404
    # The other one lives on.
    wait_for(chromium, f"tr[data-sandbox='{world['sandbox']}']")


DURATION = re.compile(r"\d+ (s|min \d+ s|h \d+ min)")
ROW_CELLS = (
    "const r = document.querySelector(`tr[data-sandbox='${arguments[0]}']`);"
    "return r && [r.querySelector('td.metadata').textContent,"
    " r.querySelector('td.idle-left').textContent, document.querySelectorAll('img').length]"
)


def test_metadata_idle_time_and_metrics(v1: Client, chromium: WebDriver, world: dict) -> None:
    # Made through the E2B control API with hostile metadata: shown as text, never as markup.
    hostile = "<img src=x onerror=alert(1)>"
    r = v1.req(
        "POST",
        "/sandboxes",
        headers={"X-API-Key": world["key"]},
        json={"templateID": "Bash", "metadata": {"note": hostile, "team": "red"}},
    )
    assert r.status_code == 201, r.text
    sid = r.json()["sandboxID"]
    go(chromium, v1, "sandboxes")
    wait_text(chromium, f"tr[data-sandbox='{sid}'] td.metadata", "team=red")
    metadata, idle_left, images = chromium.execute_script(ROW_CELLS, sid)
    assert f"note={hostile}" in metadata and images == 0
    assert DURATION.fullmatch(idle_left), idle_left
    # The filter finds it by its metadata and leaves the others out.
    wait_for(chromium, "#sb-filter").send_keys("team=red")
    wait_for(chromium, f"tr[data-sandbox='{sid}']")
    assert chromium.find_elements(By.CSS_SELECTOR, f"tr[data-sandbox='{world['sandbox']}']") == []
    chromium.find_element(By.ID, "sb-filter").send_keys(Keys.BACKSPACE * 3 + "blue")
    WebDriverWait(chromium, WAIT).until(
        lambda d: not d.find_elements(By.CSS_SELECTOR, f"tr[data-sandbox='{sid}']")
    )
    # Its page: the metadata as text, the idle time left, its CPU and memory with units.
    go(chromium, v1, f"sandbox/{sid}")
    assert hostile in wait_text(chromium, "#sb-metadata", "team=red").text
    assert chromium.find_elements(By.CSS_SELECTOR, "main img") == []
    assert DURATION.fullmatch(wait_for(chromium, "#sb-idle-left").text)
    cpu = wait_text(chromium, "#sb-cpu", "%").text
    assert re.fullmatch(r"\d+\.\d % of \d+ vCPU", cpu), cpu
    mem = wait_text(chromium, "#sb-mem", " of ").text
    assert re.fullmatch(r"[\d.]+ (B|KiB|MiB|GiB) of [\d.]+ (KiB|MiB|GiB|TiB)", mem), mem
    shot(chromium, "console-sandbox-metrics")
    # Gone behind the page's back: the next refresh shows the control API's message.
    assert v1.req("DELETE", f"/v1/sandboxes/{sid}", token=world["key"]).status_code == 204
    note = wait_text(chromium, "#sb-metrics-note", "404").text
    assert "Metrics unavailable" in note and "not found" in note.lower(), note


def test_every_control_is_labelled_and_focus_is_visible(
    v1: Client, chromium: WebDriver, world: dict
) -> None:
    unlabelled = (
        "return [...document.querySelectorAll('input, select, textarea')]"
        ".filter(e => !e.labels.length && !e.getAttribute('aria-label')).map(e => e.outerHTML)"
    )
    for page, ready in (
        ("sandboxes", "table#sandboxes"),
        (f"sandbox/{world['sandbox']}", "#cmd"),
        ("sessions", "#ses-kind"),
        (f"session/{world['session']}", "#transcript"),
        ("keys", "#key-name"),
        ("bundles", "#bundle-name"),
        ("usage", "table#usage"),
    ):
        go(chromium, v1, page)
        wait_for(chromium, ready)
        assert chromium.execute_script(unlabelled) == [], page
    # Tab from the top: the skip link first, then the page links, each with a visible ring.
    go(chromium, v1, "keys")
    wait_for(chromium, "#key-name")
    # (Focus back at the top of the document, as a fresh load with no page focus has it.)
    chromium.execute_script(
        "document.body.tabIndex = -1; document.body.focus();"
        "document.body.removeAttribute('tabindex')"
    )
    order = []
    for _ in range(3):
        ActionChains(chromium).send_keys(Keys.TAB).perform()
        el = chromium.switch_to.active_element
        order.append(el.text)
        outline = chromium.execute_script("return getComputedStyle(arguments[0]).outlineStyle", el)
        assert outline not in ("", "none"), (el.text, outline)
    assert order == ["Skip to content", "Sandboxes", "Agent sessions"], order


def test_revoke_the_key(v1: Client, chromium: WebDriver, world: dict) -> None:
    go(chromium, v1, "keys")
    row = wait_for(chromium, f"tr[data-key='{world['key_id']}']")
    row.find_element(By.CSS_SELECTOR, "button.danger").click()
    accept_confirm(chromium)
    wait_text(chromium, f"tr[data-key='{world['key_id']}'] .key-state", "revoked")
    r = v1.req("GET", "/v1/sandboxes", token=world["key"])
    assert r.status_code == 401 and r.json()["error"]["code"] == "api_key_revoked"


def test_tenant_b_sees_none_of_a(v1: Client, chromium: WebDriver, world: dict) -> None:
    chromium.find_element(By.ID, "logout").click()
    wait_for(chromium, "#login-email")
    # Logging out revoked the console's own key.
    r = v1.req("GET", "/v1/sandboxes", token=world["a_key"])
    assert r.status_code == 401
    login(chromium, v1, B_EMAIL)
    secrets_of_a = [
        world["sandbox"],
        world["session"],
        world["bundle"],
        world["key_id"],
        world["console_key_id"],
        world["key"][:12],
        A_EMAIL,
    ]
    for page, ready in (
        ("sandboxes", "table#sandboxes"),
        ("sessions", "table#sessions"),
        ("keys", "table#keys"),
        ("bundles", "table#bundles"),
        ("usage", "table#usage"),
    ):
        go(chromium, v1, page)
        wait_for(chromium, ready)
        # The lists have loaded (the "Loading…" placeholder is gone).
        WebDriverWait(chromium, WAIT).until(lambda d: "Loading" not in d.page_source)
        shot(chromium, f"console-b-{page}")
        for secret in secrets_of_a:
            assert secret not in chromium.page_source, (page, secret)
    # A's objects by their ids: the API's 404, nothing of them shown.
    for page in (f"sandbox/{world['sandbox']}", f"session/{world['session']}"):
        go(chromium, v1, page)
        chromium.refresh()
        wait_text(chromium, "#error", "404")
        assert "line1" not in chromium.page_source and "hello-console" not in chromium.page_source
