"""The sandbox terminal (web/terminal.py): its WebSocket against the real stack without a
browser (tickets, tenants, bounds, resize, the shell's end), and in real headless Chromium
on the console's sandbox page (xterm.js vendored by web/console/vendor.py): type
``echo $((6*7))`` and see ``42`` on the terminal's screen. On the Docker backend the socket
says it has no terminals. Screenshot: tests/screenshots/console-terminal.png."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from devstack.stack import Stack
from tests.integration.accounts_helpers import Inbox
from tests.integration.browser import WAIT, console_errors, fetched, shot, wait_for, wait_text
from tests.integration.client import Client, wait_until
from tests.integration.session_helpers import new_tenant
from web.console import vendor
from web.terminal import (
    MAX_FRAME,
    MAX_FRAMES_PER_10S,
    SANDBOX_MAX_TERMINALS,
    TENANT_MAX_TICKETS,
)

EMAIL = "terminal@example.com"


@pytest.fixture(scope="module")
def v1(tmp_path_factory: pytest.TempPathFactory, smtp: tuple[str, Inbox]) -> Iterator[Client]:
    assert vendor.installed(), "the console's xterm.js is not fetched: run make images"
    url, inbox = smtp
    env = {"PADDOCK_AUTH": "on", "PADDOCK_SMTP_URL": url}
    with Stack(tmp_path_factory.mktemp("terminal"), env=env) as st:
        yield Client(st, inbox=inbox)


@pytest.fixture(scope="module")
def keys(v1: Client) -> dict[str, str]:
    return {"a": new_tenant(v1.stack, "term-a"), "b": new_tenant(v1.stack, "term-b")}


def sandbox(v1: Client, key: str) -> str:
    r = v1.req("POST", "/sessions", json={"envID": "Bash"}, headers={"X-API-Key": key})
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def ticket(v1: Client, sid: str, key: str) -> Any:
    return v1.req("POST", f"/v1/sandboxes/{sid}/terminal", token=key)


def socket(v1: Client, path_sid: str, ticket_value: str, **query: int) -> ClientConnection:
    url = v1.url.replace("http://", "ws://") + f"/v1/sandboxes/{path_sid}/terminal"
    url += f"?ticket={ticket_value}" + "".join(f"&{k}={v}" for k, v in query.items())
    return connect(url, proxy=None, open_timeout=10, max_size=None).__enter__()


def terminal(v1: Client, sid: str, key: str, **query: int) -> ClientConnection:
    """An open terminal on ``sid`` (its ``ready`` frame read)."""
    r = ticket(v1, sid, key)
    assert r.status_code == 201, r.text
    ws = socket(v1, sid, r.json()["ticket"], **query)
    assert json.loads(ws.recv(timeout=WAIT))["type"] == "ready"
    return ws


class Screen:
    """What a terminal socket sent: its output bytes and its JSON frames."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.out = b""
        self.frames: list[dict[str, Any]] = []

    def until(self, needle: bytes, timeout: float = WAIT) -> bytes:
        deadline = time.monotonic() + timeout
        while needle not in self.out:
            left = deadline - time.monotonic()
            assert left > 0, f"{needle!r} never came: {self.out[-2000:]!r} {self.frames}"
            got = self.ws.recv(timeout=left)
            if isinstance(got, bytes):
                self.out += got
            else:
                self.frames.append(json.loads(got))
        return self.out

    def type(self, text: str) -> None:
        self.ws.send(json.dumps({"type": "input", "data": text}))


def closed_with(ws: ClientConnection, timeout: float = WAIT) -> tuple[int | None, list[Any]]:
    """The close code the server sent, and the frames before it."""
    frames: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            got = ws.recv(timeout=max(0.1, deadline - time.monotonic()))
            frames.append(got if isinstance(got, bytes) else json.loads(got))
    except ConnectionClosed as exc:
        return (exc.rcvd.code if exc.rcvd else None), frames


def test_resize_and_the_shell_ends_with_its_socket(v1: Client, keys: dict[str, str]) -> None:
    sid = sandbox(v1, keys["a"])
    ws = terminal(v1, sid, keys["a"], cols=80, rows=24)
    screen = Screen(ws)
    screen.type("stty size; echo $$ > /tmp/shell.pid; echo size-$((2*3))\r")
    assert b"24 80\r\n" in screen.until(b"size-6\r\n")
    ws.send(json.dumps({"type": "resize", "cols": 100, "rows": 30}))
    screen.type("stty size; echo resized-$((3*3))\r")
    screen.until(b"resized-9\r\n")
    assert b"30 100\r\n" in screen.out.split(b"size-6\r\n", 1)[1]
    # A bad size is refused with an error frame; the terminal lives on.
    ws.send(json.dumps({"type": "resize", "cols": 0, "rows": 10**6}))
    screen.type("echo still-$((4*4))\r")
    screen.until(b"still-16\r\n")
    assert [f["code"] for f in screen.frames if f["type"] == "error"] == ["invalid_size"]
    # Closing the socket kills the shell.
    pid = (
        v1.req(
            "GET",
            f"/sessions/{sid}/filesystem/file",
            params={"path": "/tmp/shell.pid"},
            headers={"X-API-Key": keys["a"]},
        )
        .json()["content"]
        .strip()
    )
    assert pid.isdigit()
    ws.close()

    def gone() -> bool:
        r = v1.req(
            "POST",
            f"/sessions/{sid}/processes?wait=true",
            json={"cmd": f"kill -0 {pid} 2>/dev/null && echo alive || echo gone"},
            headers={"X-API-Key": keys["a"]},
        )
        return [o["line"] for o in r.json()["stdout"]] == ["gone"]

    wait_until(gone, "the shell killed after its socket closed")
    # `exit` ends the shell: the exit frame, then close 1000.
    ws = terminal(v1, sid, keys["a"])
    Screen(ws).type("exit 3\r")
    code, frames = closed_with(ws)
    assert code == 1000
    assert {"type": "exit", "exit_code": 3} in [f for f in frames if isinstance(f, dict)]


def test_tickets_and_tenants(v1: Client, keys: dict[str, str]) -> None:
    mine, theirs = sandbox(v1, keys["a"]), sandbox(v1, keys["b"])
    # Another tenant's sandbox is not found, and nothing opens without a key.
    r = ticket(v1, mine, keys["b"])
    assert r.status_code == 404 and r.json()["error"]["code"] == "sandbox_not_found", r.text
    assert v1.req("POST", f"/v1/sandboxes/{mine}/terminal").status_code == 401
    # B's ticket (for B's sandbox) on A's sandbox: closed as not found, and the ticket is
    # spent.
    good = ticket(v1, theirs, keys["b"]).json()["ticket"]
    code, frames = closed_with(socket(v1, mine, good))
    assert code == 4404, frames
    assert frames and frames[0]["code"] == "sandbox_not_found"
    code, _ = closed_with(socket(v1, theirs, good))
    assert code == 4401
    # No ticket, a made-up one: 4401.
    assert closed_with(socket(v1, mine, ""))[0] == 4401
    assert closed_with(socket(v1, mine, "x" * 43))[0] == 4401
    # The ticket route is in the v1 document, the socket too.
    paths = v1.req("GET", "/v1/openapi.json").json()["paths"]
    assert set(paths["/v1/sandboxes/{sandbox_id}/terminal"]) == {"post", "get"}


def test_tickets_a_tenant_is_given_are_bounded(v1: Client) -> None:
    """Each ticket is a Redis key until used or expired: minting them in a loop stops at the
    tenant's limit, with a 429 naming it, and nothing more is stored."""
    key = new_tenant(v1.stack, "term-minter")
    sid = sandbox(v1, key)
    before = len(list(v1.stack.redis.scan_iter("pdk:term-ticket:*", count=1000)))
    for _ in range(TENANT_MAX_TICKETS):
        assert ticket(v1, sid, key).status_code == 201
    r = ticket(v1, sid, key)
    assert r.status_code == 429 and "tickets" in r.json()["error"]["message"], r.text
    after = len(list(v1.stack.redis.scan_iter("pdk:term-ticket:*", count=1000)))
    assert after - before <= TENANT_MAX_TICKETS
    # Another tenant is not held back by it.
    other = new_tenant(v1.stack, "term-bystander")
    assert ticket(v1, sandbox(v1, other), other).status_code == 201


def test_bounds(v1: Client, keys: dict[str, str]) -> None:
    sid = sandbox(v1, keys["a"])
    # An oversized frame closes the socket with 1009.
    ws = terminal(v1, sid, keys["a"])
    ws.send(json.dumps({"type": "input", "data": "x" * (MAX_FRAME + 1)}))
    code, frames = closed_with(ws)
    assert code == 1009
    assert [f["code"] for f in frames if isinstance(f, dict)] == ["frame_too_large"]
    # Too many frames in ten seconds: 4429.
    ws = terminal(v1, sid, keys["a"])
    for _ in range(MAX_FRAMES_PER_10S + 50):
        try:
            ws.send(json.dumps({"type": "ping"}))
        except ConnectionClosed:
            break
    assert closed_with(ws)[0] == 4429
    # A sandbox has a few terminals at most: the next ticket is refused with 429.
    opened = [terminal(v1, sid, keys["a"]) for _ in range(SANDBOX_MAX_TERMINALS)]
    r = ticket(v1, sid, keys["a"])
    assert r.status_code == 429 and "terminals" in r.json()["error"]["message"], r.text
    opened.pop().close()
    wait_until(lambda: ticket(v1, sid, keys["a"]).status_code == 201, "a terminal slot back")
    for ws in opened:
        ws.close()


def test_terminal_in_the_console(v1: Client, chromium: WebDriver) -> None:
    jwt, key = v1.tenant(EMAIL)
    sid = sandbox(v1, key)
    chromium.get(v1.url + "/console/")
    chromium.execute_script(
        "sessionStorage.setItem('pdk.account', arguments[0]);"
        "sessionStorage.setItem('pdk.key', arguments[1]);"
        "sessionStorage.setItem('pdk.email', arguments[2]);",
        jwt,
        key,
        EMAIL,
    )
    chromium.get(f"{v1.url}/console/#/sandbox/{sid}")
    wait_for(chromium, "#terminal[data-state='open']")
    chromium.find_element(By.CSS_SELECTOR, "#terminal .xterm").click()
    ActionChains(chromium).send_keys("echo $((6*7))\n").perform()
    rows = ".xterm-accessibility-tree"
    wait_text(chromium, rows, "echo $((6*7))")

    def answered(d: WebDriver) -> bool:
        lines = d.execute_script(
            "return [...document.querySelectorAll(arguments[0] + ' > div')]"
            ".map(e => e.textContent.trim())",
            rows,
        )
        return "42" in lines

    WebDriverWait(chromium, WAIT).until(answered)
    shot(chromium, "console-terminal")
    # Drawn under the console's CSP (no violation logged), from this origin only; the API
    # key in no URL, the ticket one-use.
    assert console_errors(chromium) == []
    urls = fetched(chromium)
    assert all(u.startswith(v1.url) for u in urls), urls
    assert not [u for u in urls if key in u or jwt in u]
    assert f"{v1.url}/console/assets/xterm.js" in urls
    # The command box is still there, below.
    assert wait_for(chromium, "#cmd").get_attribute("id") == "cmd"
    # Leaving the page ends the shell; the first page never loaded xterm.js.
    chromium.get(f"{v1.url}/console/#/keys")
    chromium.refresh()
    wait_for(chromium, "table#keys")
    assert not [u for u in fetched(chromium) if "xterm" in u]


@pytest.fixture(scope="module")
def docker_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    env = {"PADDOCK_SANDBOX_BACKEND": "docker"}
    with Stack(tmp_path_factory.mktemp("terminal-docker"), hosts=("solo",), env=env) as st:
        yield Client(st)


def test_the_docker_backend_has_no_terminal(docker_stack: Client) -> None:
    key = new_tenant(docker_stack.stack, "term-docker")
    sid = sandbox(docker_stack, key)
    r = ticket(docker_stack, sid, key)
    assert r.status_code == 201, r.text
    code, frames = closed_with(socket(docker_stack, sid, r.json()["ticket"]))
    assert code == 4501
    error = frames[0]
    assert error["code"] == "backend_unsupported" and "terminal" in error["message"], frames
    # The command box's way still works there.
    r = docker_stack.req(
        "POST",
        f"/sessions/{sid}/processes?wait=true",
        json={"cmd": "echo $((6*7))"},
        headers={"X-API-Key": key},
    )
    assert [o["line"] for o in r.json()["stdout"]] == ["42"], r.text
