"""The web console (``/console``) in real headless Chromium against the real stack: log in
with the code the test's SMTP server received, create an API key and see it once, create a
bundle, start a sandbox and run a command in it, upload a file, watch a shell-agent session
live and reload it mid-task, revoke the key, and a second tenant who sees none of it.

The tests run in order and build on each other (one browser, one stack, one tenant A):
``world`` carries what the earlier ones made. Screenshots go to tests/screenshots/.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest
import requests
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select, WebDriverWait

from devstack.stack import Stack
from shared import keys
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
MAX_FILE_BYTES = 1 << 20
FILE = "every-byte.png"
# Every byte value, in a file that starts as a PNG does: text it is not.
EVERY_BYTE = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 64 + bytes(range(255, -1, -1))


@pytest.fixture(scope="module")
def v1(tmp_path_factory: pytest.TempPathFactory, smtp: tuple[str, Inbox]) -> Iterator[Client]:
    url, inbox = smtp
    env = {
        "PADDOCK_AUTH": "on",
        "PADDOCK_SMTP_URL": url,
        "PADDOCK_MAX_FILE_BYTES": str(MAX_FILE_BYTES),
    }
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


def unix(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def envd_file(v1: Client, key: str, sandbox_id: str, path: str) -> requests.Response:
    """``path`` read through envd's ``GET /files`` (bytes as they are), as the SDK reads it."""
    r = v1.req("POST", f"/sandboxes/{sandbox_id}/connect", headers={"X-API-Key": key})
    assert r.status_code in (200, 201), r.text
    headers = {"E2b-Sandbox-Id": sandbox_id, "X-Access-Token": r.json()["envdAccessToken"]}
    return v1.req("GET", "/files", params={"path": path}, headers=headers)


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
    # The tab's own key ends with the login (the account token's end): a tab closed without
    # logging out leaves no working key behind.
    listed = v1.req("GET", "/v1/api-keys", token=kept["pdk.account"]).json()["api_keys"]
    [mine] = [k for k in listed if k["key_id"] == kept["pdk.keyId"]]
    login_ends = pyjwt.decode(kept["pdk.account"], options={"verify_signature": False})["exp"]
    assert login_ends - 60 < unix(mine["expires_at"]) <= login_ends + 2, mine


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
    Select(chromium.find_element(By.ID, "key-life")).select_by_value("604800")
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
    # Made to end in 7 days; the console's own key is marked as this tab's, with its end.
    made = {
        k["key_id"]: k
        for k in v1.req("GET", "/v1/api-keys", token=world["a_account"]).json()["api_keys"]
    }
    assert unix(made[world["key_id"]]["expires_at"]) - time.time() == pytest.approx(
        7 * 86400, abs=120
    )
    assert row.find_element(By.CSS_SELECTOR, ".key-expires").text != "never"
    console_row = wait_for(chromium, f"tr[data-key='{world['console_key_id']}']")
    assert "this console tab" in console_row.text
    assert console_row.find_element(By.CSS_SELECTOR, ".key-expires").text != "never"
    assert console_row.find_elements(By.CSS_SELECTOR, "button.danger") == []
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
    # Upload a binary file (every byte value, a PNG's signature) into /tmp and see it listed;
    # the sandbox has exactly its bytes.
    local = tmp_path / FILE
    local.write_bytes(EVERY_BYTE)
    chromium.find_element(By.ID, "fs-upload").send_keys(str(local))
    submit(chromium, "#fs-send")
    wait_for(chromium, f"table#files tr[data-file='{FILE}']")
    assert envd_file(v1, world["key"], sandbox_id, f"/tmp/{FILE}").content == EVERY_BYTE
    shot(chromium, "console-sandbox")
    # Download it: the same bytes arrive in the browser's download folder.
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    chromium.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
    )
    chromium.find_element(
        By.CSS_SELECTOR, f"tr[data-file='{FILE}'] button[aria-label^='Download']"
    ).click()
    got = downloads / FILE
    WebDriverWait(chromium, WAIT).until(
        lambda _d: got.is_file() and got.stat().st_size == len(EVERY_BYTE)
    )
    assert got.read_bytes() == EVERY_BYTE
    # A file over the server's bound (PADDOCK_MAX_FILE_BYTES): the API's 413 message, and
    # nothing written.
    big = tmp_path / "too-big.bin"
    big.write_bytes(b"\0" * (MAX_FILE_BYTES + 1))
    chromium.find_element(By.ID, "fs-upload").send_keys(str(big))
    submit(chromium, "#fs-send")
    error = wait_text(chromium, "#error", "413").text
    assert f"larger than {MAX_FILE_BYTES} bytes" in error, error
    assert envd_file(v1, world["key"], sandbox_id, "/tmp/too-big.bin").status_code == 404
    # Delete it: gone from the list and from the sandbox.
    wait_for(chromium, f"tr[data-file='{FILE}'] button.danger").click()
    accept_confirm(chromium)
    WebDriverWait(chromium, WAIT).until(
        lambda d: not d.find_elements(By.CSS_SELECTOR, f"tr[data-file='{FILE}']")
    )
    assert envd_file(v1, world["key"], sandbox_id, f"/tmp/{FILE}").status_code == 404
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
    # The bundle page says which session uses the bundle.
    go(chromium, v1, "bundles")
    row = wait_text(chromium, "table#bundles tbody tr", world["bundle"])
    wait_text(chromium, "table#bundles tbody tr", session_id)
    assert session_id in row.text


def exits(chrome: WebDriver) -> list[str]:
    return [e.text for e in chrome.find_elements(By.CSS_SELECTOR, "#transcript li.ev-exit")]


def test_reopen_a_running_session_in_another_tab(
    v1: Client, chromium: WebDriver, world: dict
) -> None:
    # A second tab of the same login (its own sessionStorage: no session token) opens the
    # running session: the whole history, then live, and it sends a task and cancels one.
    # The first tab, still open on the session, sees the same events live.
    session_id = world["session"]
    first = chromium.current_window_handle
    go(chromium, v1, f"session/{session_id}")
    wait_text(chromium, "#ses-conn", "live")
    chromium.switch_to.new_window("tab")
    try:
        _restore(chromium, v1, world)
        assert not [k for k in storage(chromium) if k.startswith("pdk.sess.")]
        go(chromium, v1, f"session/{session_id}")
        wait_text(chromium, "#transcript", "cancelled")
        assert "line1" in chromium.find_element(By.ID, "transcript").text
        wait_text(chromium, "#ses-conn", "live")
        # It asked the API for a session token of its own.
        assert storage(chromium)[f"pdk.sess.{session_id}"].count(".") == 2
        wait_for(chromium, "#task-prompt").send_keys("echo reopened-$((5*5))")
        submit(chromium, "#task-form")
        wait_text(chromium, "#transcript li.ev-stdout", "reopened-25")
        WebDriverWait(chromium, WAIT).until(lambda d: len(exits(d)) == 3)
        shot(chromium, "console-session-reopened")
        wait_for(chromium, "#task-prompt").send_keys("sleep 300")
        submit(chromium, "#task-form")
        WebDriverWait(chromium, WAIT).until(
            lambda d: len(d.find_elements(By.CSS_SELECTOR, "#transcript li.ev-task_started")) == 4
        )
        chromium.find_element(By.ID, "task-cancel").click()
        WebDriverWait(chromium, WAIT).until(lambda d: len(exits(d)) == 4)
        assert "cancelled" in exits(chromium)[-1]
        items = chromium.find_elements(By.CSS_SELECTOR, "#transcript li")
        seqs = [int(li.get_attribute("data-seq") or 0) for li in items]
        assert seqs == list(range(1, len(seqs) + 1)), seqs
    finally:
        chromium.close()
        chromium.switch_to.window(first)
    # The first tab saw it all live, without a reload.
    wait_text(chromium, "#transcript li.ev-stdout", "reopened-25")
    WebDriverWait(chromium, WAIT).until(lambda d: len(exits(d)) == 4)
    # Its sandbox's files are reachable the same way (the control API's connect gives an
    # agent session's sandbox its tokens and leaves its end, the session's, as it was).
    sid = v1.req("GET", f"/v1/sessions/{session_id}", token=world["a_key"]).json()["sandbox_id"]
    before = v1.req("GET", f"/v1/sandboxes/{sid}", token=world["a_key"]).json()["expires_at"]
    put = v1.req(
        "PUT",
        f"/sessions/{sid}/filesystem/file",
        params={"path": "/tmp/s.txt"},
        json={"content": "from the session's sandbox"},
        token=world["a_key"],
    )
    assert put.status_code == 204, put.text
    assert envd_file(v1, world["a_key"], sid, "/tmp/s.txt").content == b"from the session's sandbox"
    after = v1.req("GET", f"/v1/sandboxes/{sid}", token=world["a_key"]).json()["expires_at"]
    assert after == before
    # An ended session: its history, no task box, and no token to be had.
    assert v1.req("DELETE", f"/v1/sessions/{session_id}", token=world["a_key"]).status_code == 204
    r = v1.req("POST", f"/v1/sessions/{session_id}/token", token=world["a_key"])
    assert r.status_code == 409 and r.json()["error"]["code"] == "session_ended", r.text
    chromium.execute_script(f"sessionStorage.removeItem('pdk.sess.{session_id}')")
    chromium.refresh()
    wait_text(chromium, "#ses-conn", "ended")
    assert "reopened-25" in wait_for(chromium, "#transcript").text
    assert chromium.find_elements(By.ID, "task-prompt") == []


def test_kill_a_sandbox_from_the_table(v1: Client, chromium: WebDriver, world: dict) -> None:
    go(chromium, v1, "sandboxes")
    wait_for(chromium, f"tr[data-sandbox='{world['sandbox']}']")
    # The table is live: a sandbox made elsewhere appears without a reload.
    r = v1.req("POST", "/sessions", json={"envID": "Bash"}, token=world["key"])
    assert r.status_code == 200, r.text
    doomed = r.json()["id"]
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


def test_usage_and_templates(v1: Client, chromium: WebDriver, world: dict) -> None:
    go(chromium, v1, "usage")
    row = wait_text(chromium, "table#usage tbody tr", "agent sessions")
    assert "PADDOCK_TENANT_MAX_SESSIONS" in row.text
    sandboxes = wait_text(chromium, "table#usage tbody tr", "sandboxes").text.split()
    assert sandboxes[0] == "sandboxes" and int(sandboxes[1]) >= 1, sandboxes
    bash = wait_text(chromium, "table#templates tbody tr", "Bash")
    assert "bash=" in bash.text
    shot(chromium, "console-usage")


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
    # The page has finished rendering (its title is set, and focus moved to its heading, in the
    # same step): nothing moves focus after the reset below.
    WebDriverWait(chromium, 30).until(lambda c: c.title.startswith("API keys"))
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
        FILE,
        "reopened-25",
    ]

    def shows_none_of_a(page: str) -> None:
        shot(chromium, f"console-b-{page.split('/')[0]}")
        for secret in secrets_of_a:
            assert secret not in chromium.page_source, (page, secret)

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
        shows_none_of_a(page)
    # B's own sandbox page (its terminal open, its files listed, its metrics) and session
    # page (live, a task run): nothing of A's either.
    go(chromium, v1, "sandboxes")
    Select(wait_for(chromium, "#sb-template")).select_by_value("Bash")
    submit(chromium, "#sb-start")
    wait_for(chromium, "#terminal[data-state='open']")
    b_sandbox = chromium.current_url.rsplit("/", 1)[-1]
    r = v1.req(
        "PUT",
        f"/sessions/{b_sandbox}/filesystem/file",
        params={"path": "/tmp/b-own.txt"},
        json={"content": "b\n"},
        token=storage(chromium)["pdk.key"],
    )
    assert r.status_code == 204, r.text
    submit(chromium, "#fs-list")
    wait_for(chromium, "table#files tr[data-file='b-own.txt']")
    wait_text(chromium, "#sb-cpu", "%")
    shows_none_of_a(f"sandbox/{b_sandbox}")
    go(chromium, v1, "sessions")
    Select(wait_for(chromium, "#ses-kind")).select_by_value("shell")
    submit(chromium, "#ses-start")
    wait_text(chromium, "#ses-conn", "live")
    wait_for(chromium, "#task-prompt").send_keys("ls /tmp; echo b-$((1+1))")
    submit(chromium, "#task-form")
    wait_text(chromium, "#transcript li.ev-exit", "exit code 0")
    assert "b-2" in chromium.find_element(By.ID, "transcript").text
    shows_none_of_a("session/b")
    # A's objects by their ids: the API's 404, nothing of them shown, and neither a terminal
    # nor A's files asked for.
    for page in (f"sandbox/{world['sandbox']}", f"session/{world['session']}"):
        go(chromium, v1, page)
        chromium.refresh()
        wait_text(chromium, "#error", "404")
        assert "line1" not in chromium.page_source and FILE not in chromium.page_source
        assert chromium.find_elements(By.ID, "terminal") == []
        lookups = (f"/v1/sandboxes/{world['sandbox']}", f"/v1/sessions/{world['session']}")
        asked = [
            u
            for u in fetched(chromium)[1:]  # (the first is the page's own URL)
            if (world["sandbox"] in u or world["session"] in u) and not u.endswith(lookups)
        ]
        assert asked == [], asked
    # Nor does B's key get A's session token or A's sandbox's envd token from the API.
    b_key = storage(chromium)["pdk.key"]
    r = v1.req("POST", f"/v1/sessions/{world['session']}/token", token=b_key)
    assert r.status_code == 404 and r.json()["error"]["code"] == "session_not_found", r.text
    r = v1.req("POST", f"/sandboxes/{world['sandbox']}/connect", headers={"X-API-Key": b_key})
    assert r.status_code == 404, r.text


def test_an_ended_console_key_ends_the_tab_login(
    v1: Client, chromium: WebDriver, world: dict
) -> None:
    # B's tab (logged in above). An hour later its key has ended: moved to the past here.
    kept = storage(chromium)
    digest = v1.stack.redis.get(keys.api_key_id(kept["pdk.keyId"]))
    assert digest is not None
    v1.stack.redis.hset(keys.api_key(digest.decode()), "expires_at", time.time() - 1)
    r = v1.req("GET", "/v1/sandboxes", token=kept["pdk.key"])
    assert r.status_code == 401 and r.json()["error"]["code"] == "api_key_expired"
    # The next page it loads sends it back to the login page, with the API's message, and the
    # tab keeps no credential.
    go(chromium, v1, "bundles")
    wait_for(chromium, "#login-email")
    error = wait_text(chromium, "#error", "expired").text
    assert "Log in again" in error, error
    assert not [k for k in storage(chromium) if k.startswith("pdk.")]
    shot(chromium, "console-login-ended")
