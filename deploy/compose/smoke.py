"""The API half of `make compose-check`: against a compose stack with auth on, log in by email
code (read from the control container's log mailer), make an API key, create a sandbox with it,
run a process in it, check /health names no problem, and delete the sandbox.

    python3 deploy/compose/smoke.py URL LOGS_COMMAND...

LOGS_COMMAND prints the control service's log (the login code is there). Exits non-zero with
the reason on the first failure. Standard library only.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

EMAIL = "compose-check@example.com"


class Failed(Exception):
    pass


def call(
    url: str, method: str = "GET", body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    """(status, parsed JSON or text); a transport error raises OSError."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if data is not None:
        req.add_header("Content-Type", "application/json")
    req.add_header("Accept", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


def expect(what: str, got: tuple[int, Any], status: int) -> Any:
    if got[0] != status:
        raise Failed(f"{what}: expected {status}, got {got[0]} {got[1]!r}")
    return got[1]


def login_code(logs: list[str], deadline: float) -> str:
    """The newest code the log mailer wrote for EMAIL (the control worker sends it async)."""
    pattern = re.compile(rf"login code for {re.escape(EMAIL)}: (\d+)")
    while time.monotonic() < deadline:
        out = subprocess.run(logs, capture_output=True, text=True, check=False).stdout
        codes = pattern.findall(out)
        if codes:
            return str(codes[-1])
        time.sleep(1)
    raise Failed("no login code in the control worker's log")


def run(url: str, logs: list[str]) -> None:
    deadline = time.monotonic() + 180
    expect("login", call(f"{url}/v1/auth/login", "POST", {"email": EMAIL}), 200)
    code = login_code(logs, deadline)
    token = expect(
        "verify-otp",
        call(f"{url}/v1/auth/verify-otp", "POST", {"email": EMAIL, "code": code}),
        200,
    )["token"]
    key = expect(
        "api key",
        call(f"{url}/v1/api-keys", "POST", headers={"Authorization": f"Bearer {token}"}),
        201,
    )["key"]
    auth = {"X-API-Key": key}
    expect("a keyless request is refused", call(f"{url}/sessions", "POST", {"envID": "Bash"}), 401)

    # The host worker announces itself a little after the web answers: 503 until then.
    while True:
        status, body = call(f"{url}/sessions", "POST", {"envID": "Bash"}, auth)
        if status == 200:
            sid = body["id"]
            break
        if status != 503 or time.monotonic() > deadline:
            raise Failed(f"create sandbox: {status} {body!r}")
        time.sleep(2)
    print(f"smoke: sandbox {sid} created")
    try:
        proc = expect(
            "process",
            call(
                f"{url}/sessions/{sid}/processes?wait=true",
                "POST",
                {"cmd": "echo hello from compose; id -un", "rootdir": "/"},
                auth,
            ),
            200,
        )
        lines = [o["line"] for o in proc["stdout"]]
        if not proc["finished"] or lines != ["hello from compose", "user"]:
            raise Failed(f"process: unexpected result {proc!r}")
        print(f"smoke: process ran: {lines}")
        shown = expect("v1 sandbox", call(f"{url}/v1/sandboxes/{sid}", headers=auth), 200)
        print(f"smoke: v1 shows state={shown.get('state')} network={shown.get('network')}")
        health = expect("health", call(f"{url}/health"), 200)
        if health.get("problems"):
            raise Failed(f"/health names problems: {health['problems']!r}")
    finally:
        expect("delete sandbox", call(f"{url}/sessions/{sid}", "DELETE", headers=auth), 204)
    expect("deleted sandbox is gone", call(f"{url}/sessions/{sid}", headers=auth), 404)
    print("smoke: sandbox deleted")
    ports(url, auth, deadline)


def ports(url: str, auth: dict[str, str], deadline: float) -> None:
    """A sandbox made by the control API serves a port through the web's ports proxy, which
    reaches it through the host worker's relay (web and worker are in different networks)."""
    made = expect(
        "control API create", call(f"{url}/sandboxes", "POST", {"templateID": "base"}, auth), 201
    )
    sid = made["sandboxID"]
    try:
        expect(
            "port server",
            call(
                f"{url}/sessions/{sid}/processes",
                "POST",
                {
                    "cmd": "mkdir -p /tmp/www && echo served > /tmp/www/index.html && "
                    "cd /tmp/www && exec python3 -m http.server 8000",
                    "rootdir": "/",
                },
                auth,
            ),
            200,
        )
        host = {"Host": f"8000-{sid}.localhost"}
        while True:
            status, body = call(f"{url}/index.html", headers=host)
            if status == 200 and str(body).strip() == "served":
                break
            if time.monotonic() > deadline:
                raise Failed(f"ports proxy: {status} {body!r}")
            time.sleep(1)
        print("smoke: port 8000 served through the ports proxy and the host's relay")
    finally:
        expect("control API kill", call(f"{url}/sandboxes/{sid}", "DELETE", headers=auth), 204)


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        run(argv[0].rstrip("/"), argv[1:])
    except (Failed, OSError, KeyError, TypeError) as exc:
        print(f"smoke: FAILED: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
