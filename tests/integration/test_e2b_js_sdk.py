"""The official E2B JS SDK (``npm install e2b``, pinned in tests/js/package-lock.json and
installed by ``scripts/bootstrap.sh --js``), unchanged, run by Node against Paddock's control
API and envd protocol, with only the environment variables a user would set (E2B_API_URL,
E2B_API_KEY, E2B_SANDBOX_URL; all loopback).

Each script in tests/js prints one JSON object: every SDK call's value, or the error it raised
(name, message, and a command's exit code and output)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from devstack.stack import Stack
from tests.integration.session_helpers import new_tenant

JS_DIR = Path(__file__).resolve().parents[1] / "js"
NODE = shutil.which("node")
# The SDK's package.json: "engines": {"node": ">=20.18.1 <21 || >=22"} (its undici needs it).
NODE_MIN = (20, 18, 1)


def _node_version() -> tuple[int, ...]:
    assert NODE
    out = subprocess.run([NODE, "--version"], capture_output=True, text=True, timeout=30).stdout
    m = re.fullmatch(r"v(\d+)\.(\d+)\.(\d+)\s*", out)
    return tuple(int(g) for g in m.groups()) if m else (0, 0, 0)


pytestmark = [
    pytest.mark.skipif(
        os.environ.get("PADDOCK_TEST_BACKEND", "supervisor") != "supervisor",
        reason="the envd calls need the supervisor backend",
    ),
    pytest.mark.skipif(
        NODE is None, reason="no `node` on PATH (scripts/bootstrap.sh --js installs Debian's)"
    ),
    pytest.mark.skipif(
        NODE is not None and _node_version() < NODE_MIN,
        reason=f"the E2B JS SDK needs Node.js >= {'.'.join(map(str, NODE_MIN))}",
    ),
]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(tmp_path_factory.mktemp("e2bjs"), env={"PADDOCK_AUTH": "on"}) as st:
        yield st


@pytest.fixture(scope="module")
def env(stack: Stack) -> dict[str, str]:
    """The environment the scripts run with: nothing of this process's but PATH and HOME."""
    installed = JS_DIR / "node_modules" / "e2b" / "package.json"
    assert installed.is_file(), f"no {installed}: run scripts/bootstrap.sh --js"
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        "E2B_API_URL": stack.url,
        "E2B_SANDBOX_URL": stack.url,
        "E2B_API_KEY": new_tenant(stack, "e2bjs"),
        "E2B_DOMAIN": "localhost",
        "NO_PROXY": "127.0.0.1,localhost",
    }


def node(env: dict[str, str], script: str, *args: str) -> dict[str, Any]:
    """Runs tests/js/SCRIPT with Node and returns the JSON object it printed."""
    assert NODE
    proc = subprocess.run(
        [NODE, script, *args], cwd=JS_DIR, env=env, capture_output=True, text=True, timeout=90
    )
    assert proc.returncode == 0, f"node {script} exited {proc.returncode}: {proc.stderr[-3000:]}"
    lines = proc.stdout.strip().splitlines()
    assert lines, f"node {script} printed nothing; stderr: {proc.stderr[-3000:]}"
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def ok(step: dict[str, Any]) -> Any:
    """A step's value, failing the test with the SDK's error when it raised."""
    assert step["ok"], f"the SDK raised {step['error']}"
    return step["value"]


def _kill(stack: Stack, env: dict[str, str], sandbox_id: str) -> None:
    requests.delete(
        f"{stack.url}/sandboxes/{sandbox_id}", headers={"X-API-Key": env["E2B_API_KEY"]}, timeout=60
    )


@pytest.fixture(scope="module")
def created(stack: Stack, env: dict[str, str]) -> Iterator[dict[str, Any]]:
    """The module's sandbox, made by the JS SDK's Sandbox.create (create.mjs's answer)."""
    value = ok(node(env, "create.mjs", "module")["created"])
    yield value
    _kill(stack, env, value["sandboxId"])


def test_create_default_template_and_metadata(created: dict[str, Any]) -> None:
    assert created["templateId"] == "standard"  # `base`, the SDK's default
    assert created["metadata"] == {"suite": "js-sdk", "tag": "module"}
    assert created["state"] == "running" and created["running"] is True
    assert created["hasAccessToken"] is True
    assert 200 < created["secondsLeft"] <= 300  # timeoutMs: 300_000


def test_files_write_read_list(env: dict[str, str], created: dict[str, Any]) -> None:
    r = node(env, "files.mjs", created["sandboxId"])
    assert ok(r["writeText"]) == {
        "path": "/home/user/js/hello.txt",
        "name": "hello.txt",
        "type": "file",
    }
    assert ok(r["readText"]) == "hello from node\n"
    # A Uint8Array of every byte value, four times: multipart and octet-stream uploads.
    expected = bytes(range(256)) * 4
    assert bytes.fromhex(r["expectedHex"]) == expected
    assert ok(r["writeBinary"]) == "/home/user/js/all.bin"
    assert ok(r["writeOctetStream"]) == "/home/user/js/octet.bin"
    assert ok(r["readBinary"]) == {"isUint8Array": True, "hex": expected.hex()}
    assert ok(r["readOctetStream"]) == expected.hex()
    listed = {e["name"]: e for e in ok(r["list"])}
    assert set(listed) == {"hello.txt", "all.bin", "octet.bin"}
    assert listed["all.bin"] == {
        "name": "all.bin",
        "type": "file",
        "size": 1024,
        "path": "/home/user/js/all.bin",
    }
    assert listed["hello.txt"]["size"] == len("hello from node\n")
    assert not r["readMissing"]["ok"]
    assert r["readMissing"]["error"]["name"] == "FileNotFoundError"


def test_commands_run(env: dict[str, str], created: dict[str, Any]) -> None:
    r = node(env, "commands.mjs", created["sandboxId"])
    assert ok(r["failing"]) == {
        "isCommandExitError": True,
        "exitCode": 3,
        "stdout": "hi\n",
        "stderr": "err\n",
    }
    streamed = ok(r["streamed"])
    # `go seen`: the file the command waited for was written by onStdout, so its first line
    # reached the script while it ran (else `no go` after its 30 s).
    assert r["signalled"] is not None, "onStdout never saw `ready`"
    assert ok(r["signalled"])["path"] == r["go"]
    assert streamed["stdout"] == "ready\ngo seen\nhello from /tmp\n"
    assert "".join(streamed["chunks"]) == streamed["stdout"]
    assert streamed["exitCode"] == 0 and streamed["stderr"] == ""


def test_list_and_kill(stack: Stack, env: dict[str, str], created: dict[str, Any]) -> None:
    sid = ok(node(env, "create.mjs", "doomed")["created"])["sandboxId"]
    try:
        r = node(env, "list_kill.mjs", sid, "doomed")
    finally:
        _kill(stack, env, sid)
    assert ok(r["listed"]) == [
        {"sandboxId": sid, "metadata": {"suite": "js-sdk", "tag": "doomed"}, "state": "running"}
    ]
    assert ok(r["kill"]) is True
    assert ok(r["running"]) is False
    assert ok(r["listedAfter"]) == []
    assert r["getInfoAfter"]["error"]["name"] == "SandboxNotFoundError"
    assert ok(r["killAgain"]) is False
