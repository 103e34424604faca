"""Every environment is real: through the E2B API, each one gets a hello-world program written
with the filesystem API, compiled where its language needs it, and run with the process API,
and its exact output is checked. Also: the `standard` agent image, the template catalog at
/v1/templates, and a custom template that becomes usable by name."""

from __future__ import annotations

import contextlib
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from shared.accounts import Accounts
from tests.integration.client import Client, stderr_lines, stdout_lines
from workers.images.build import build_all
from workers.images.templates import image_ref

ENVIRONMENTS = ("Nodejs", "Go", "Bash", "Rust", "Python3", "PHP", "Java", "Perl", "DotNET")
HOME = "/home/user"
# Compiling on one CPU on a loaded 2-core machine: generous, but bounded.
RUN_TIMEOUT = 600


@dataclass(frozen=True)
class Write:
    path: str
    content: str


@dataclass(frozen=True)
class Run:
    cmd: str
    stdout: list[str] | str  # exact lines, or a regex the whole output must match
    rootdir: str = HOME


HELLO_GO = """package main

import "fmt"

func main() {
\tfmt.Println("Hello from Go", 6*7)
}
"""
HELLO_JAVA = """public class Hello {
    public static void main(String[] args) {
        System.out.println("Hello from Java " + (6 * 7));
    }
}
"""
HELLO_CS = """using System;

class Hello {
    static void Main() {
        Console.WriteLine("Hello from C# " + (6 * 7));
    }
}
"""
GREET_SETUP = (
    'from setuptools import setup\nsetup(name="greet", version="1.0", packages=["greet"])\n'
)
STANDARD_PY = """import json, pathlib
data = pathlib.Path("/workspace/data")
data.mkdir(exist_ok=True)
(data / "numbers.json").write_text(json.dumps(list(range(1, 11))))
print("python wrote", len(json.loads((data / "numbers.json").read_text())), "numbers")
"""
STANDARD_JS = """const fs = require("fs");
const numbers = JSON.parse(fs.readFileSync("/workspace/data/numbers.json", "utf8"));
const sum = numbers.reduce((a, b) => a + b, 0);
fs.writeFileSync("/workspace/data/sum.txt", `sum=${sum}\\n`);
console.log(`node read ${numbers.length} numbers, sum ${sum}`);
"""

CASES: dict[str, list[Write | Run]] = {
    "Bash": [
        Write(
            f"{HOME}/hello.sh", 'name="Bash"\nfor i in 1 2; do echo "Hello from $name $i"; done\n'
        ),
        Run("bash hello.sh", ["Hello from Bash 1", "Hello from Bash 2"]),
    ],
    "Nodejs": [
        Write(f"{HOME}/hello.js", "console.log(`Hello from Node.js ${6 * 7}`);\n"),
        Run("node hello.js", ["Hello from Node.js 42"]),
        Run("npm --version", r"\d+\.\d+\.\d+"),
    ],
    "Python3": [
        Write(f"{HOME}/hello.py", 'print("Hello from Python", 6 * 7)\n'),
        Run("python3 hello.py", ["Hello from Python 42"]),
        # A venv, a local package installed into it (no network: no index), imported from it.
        Write(f"{HOME}/greet/greet/__init__.py", 'def hello():\n    return "Hello from a venv"\n'),
        Write(f"{HOME}/greet/setup.py", GREET_SETUP),
        Run(
            "python3 -m venv venv && venv/bin/pip install -q --no-index --no-build-isolation"
            " ./greet && echo installed",
            ["installed"],
        ),
        # From /tmp, so that the project directory in the home is not importable by accident.
        Run(
            f"{HOME}/venv/bin/python -c 'import greet, sys; "
            "print(greet.hello(), greet.__file__.startswith(sys.prefix))'; "
            "python3 -c 'import greet' 2>/dev/null || echo 'not in the system python'",
            ["Hello from a venv True", "not in the system python"],
            "/tmp",
        ),
    ],
    "Go": [
        Write(f"{HOME}/hello/main.go", HELLO_GO),
        Run(
            "go mod init example.com/hello 2>/dev/null && go run .",
            ["Hello from Go 42"],
            f"{HOME}/hello",
        ),
    ],
    "Rust": [
        Write(f"{HOME}/hello.rs", 'fn main() {\n    println!("Hello from Rust {}", 6 * 7);\n}\n'),
        Run("rustc hello.rs -o hello_rs && ./hello_rs", ["Hello from Rust 42"]),
        Run("cargo new --quiet hello_cargo && echo created", ["created"]),
        Write(
            f"{HOME}/hello_cargo/src/main.rs",
            'fn main() {\n    println!("Hello from Cargo {}", 6 * 7);\n}\n',
        ),
        Run("cargo run --offline --quiet", ["Hello from Cargo 42"], f"{HOME}/hello_cargo"),
    ],
    "PHP": [
        Write(f"{HOME}/hello.php", '<?php\necho "Hello from PHP " . (6 * 7) . "\\n";\n'),
        Run("php hello.php", ["Hello from PHP 42"]),
    ],
    "Java": [
        Write(f"{HOME}/Hello.java", HELLO_JAVA),
        Run("javac Hello.java && ls Hello.class", ["Hello.class"]),
        Run("java Hello", ["Hello from Java 42"]),
    ],
    "Perl": [
        Write(
            f"{HOME}/hello.pl",
            'use strict;\nuse warnings;\nmy $n = 6 * 7;\nprint "Hello from Perl $n\\n";\n',
        ),
        Run("perl hello.pl", ["Hello from Perl 42"]),
    ],
    "DotNET": [
        Write(f"{HOME}/hello.cs", HELLO_CS),
        Run("mcs -out:hello.exe hello.cs && ls hello.exe", ["hello.exe"]),
        Run("mono hello.exe", ["Hello from C# 42"]),
        Run("csc -out:hello2.exe hello.cs && mono hello2.exe", ["Hello from C# 42"]),
    ],
    "standard": [
        Write("/workspace/scripts/make_numbers.py", STANDARD_PY),
        Write("/workspace/scripts/sum.js", STANDARD_JS),
        Run("python scripts/make_numbers.py", ["python wrote 10 numbers"], "/workspace"),
        Run("node scripts/sum.js", ["node read 10 numbers, sum 55"], "/workspace"),
        Run(
            "for t in git curl gcc make jq rg unzip pip npm; do command -v $t >/dev/null "
            "|| echo missing $t; done; echo tools-ok",
            ["tools-ok"],
        ),
    ],
}

# What every image shares: the sandbox user and home, a UTF-8 locale, the base tools and a
# writable /workspace.
COMMON = Run(
    'echo "$(id -un) $(id -u) $HOME $LC_ALL"; for t in bash find ps git; do command -v $t '
    '>/dev/null || echo "missing $t"; done; test -w /workspace && echo workspace-ok; '
    "printf 'h\\xc3\\xa9llo\\n' | wc -m",
    ["user 1000 /home/user C.UTF-8", "workspace-ok", "6"],
    "/",
)


def _check(api: Client, sid: str, step: Run) -> None:
    r = api.req(
        "POST",
        f"/sessions/{sid}/processes?wait=true",
        json={"cmd": step.cmd, "rootdir": step.rootdir},
        timeout=RUN_TIMEOUT,
    )
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["finished"] is True
    lines, errors = stdout_lines(out), stderr_lines(out)
    if isinstance(step.stdout, str):
        assert len(lines) == 1 and re.fullmatch(step.stdout, lines[0]), (step.cmd, lines, errors)
    else:
        assert lines == step.stdout, (step.cmd, lines, errors)


def _write(api: Client, sid: str, step: Write) -> None:
    r = api.req(
        "PUT",
        f"/sessions/{sid}/filesystem/file",
        params={"path": step.path},
        json={"content": step.content},
    )
    assert r.status_code == 204, r.text
    r = api.req("GET", f"/sessions/{sid}/filesystem/file", params={"path": step.path})
    assert r.json() == {"content": step.content}


@pytest.mark.parametrize("env", [*ENVIRONMENTS, "standard"])
def test_environment_compiles_and_runs_hello_world(api: Client, env: str) -> None:
    sid = api.sandbox(env)
    try:
        _check(api, sid, COMMON)
        for step in CASES[env]:
            if isinstance(step, Write):
                _write(api, sid, step)
            else:
                _check(api, sid, step)
        if env == "standard":
            r = api.req(
                "GET",
                f"/sessions/{sid}/filesystem/file",
                params={"path": "/workspace/data/sum.txt"},
            )
            assert r.json() == {"content": "sum=55\n"}
            r = api.req(
                "GET", f"/sessions/{sid}/filesystem/dir", params={"path": "/workspace/data"}
            )
            assert sorted(e["name"] for e in r.json()["entries"]) == ["numbers.json", "sum.txt"]
    finally:
        api.req("DELETE", f"/sessions/{sid}")


@pytest.fixture(scope="module")
def api_key(api: Client) -> str:
    _, key = Accounts(api.stack.redis, "unused").create_api_key("usr_templates", "tests", 5)
    return key


def _catalog(api: Client, key: str) -> dict[str, dict[str, Any]]:
    r = api.req("GET", "/v1/templates", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    return {t["name"]: t for t in r.json()["templates"]}


def test_templates_are_listed_with_image_size_date_and_versions(api: Client, api_key: str) -> None:
    catalog = _catalog(api, api_key)
    assert set(catalog) >= {*ENVIRONMENTS, "standard"}
    expected_versions = {
        "Nodejs": {"node", "npm"},
        "Go": {"go"},
        "Bash": {"bash"},
        "Rust": {"rustc", "cargo"},
        "Python3": {"python", "pip"},
        "PHP": {"php"},
        "Java": {"java", "javac"},
        "Perl": {"perl"},
        "DotNET": {"mono", "mcs"},
        "standard": {"python", "pip", "node", "npm", "gcc", "git"},
    }
    for name, keys in expected_versions.items():
        t = catalog[name]
        assert t["image"] == image_ref("paddock", name)
        assert t["size_bytes"] > 50_000_000
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", t["built_at"]), t
        assert keys <= set(t["versions"]), (name, t["versions"])
        for version in t["versions"].values():
            assert re.match(r"\d+\.\d+", version), (name, t["versions"])
        assert t["hosts"] == ["host-a"]
    r = api.req("GET", "/v1/templates")
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    doc = api.req("GET", "/v1/openapi.json").json()
    assert (
        "TemplateList"
        in doc["paths"]["/v1/templates"]["get"]["responses"]["200"]["content"]["application/json"][
            "schema"
        ]["$ref"]
    )


@pytest.fixture
def tiny(tmp_path: Path) -> Iterator[str]:
    """A custom template in a directory of its own, built like `make images` builds one, under
    the normal prefix (so the session's stack sees it) with a unique name; removed after."""
    name = "Tiny" + secrets.token_hex(4)
    (tmp_path / name).mkdir()
    (tmp_path / name / "Dockerfile").write_text(
        "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN echo tiny > /etc/tiny\n"
    )
    client = docker.from_env(timeout=900)
    results = build_all(client, tmp_path, "paddock", log=lambda _line: None)
    assert [(r.name, r.built) for r in results] == [("base", False), (name, True)]
    try:
        yield name
    finally:
        repo = image_ref("paddock", name).rpartition(":")[0]
        for tag in (f"{repo}:latest", f"{repo}:{results[1].hash[:12]}"):
            with contextlib.suppress(docker.errors.ImageNotFound):
                client.images.remove(tag, force=True)


def test_a_custom_template_becomes_usable_by_name(api: Client, api_key: str, tiny: str) -> None:
    # The host worker finds the new image on its next heartbeat.
    deadline = time.monotonic() + 30
    while tiny not in _catalog(api, api_key):
        assert time.monotonic() < deadline, "the host never published the custom template"
        time.sleep(0.2)
    assert _catalog(api, api_key)[tiny]["versions"] == {}

    sid = api.sandbox(tiny)
    try:
        assert stdout_lines(api.run(sid, "cat /etc/tiny; id -un")) == ["tiny", "user"]
    finally:
        api.req("DELETE", f"/sessions/{sid}")

    r = api.req("POST", "/sessions", json={"envID": tiny + "x"})
    assert r.status_code == 422
    assert r.json() == {
        "message": "Validation Failed",
        "details": {"body.envID": {"message": f"unknown environment '{tiny}x'"}},
    }
