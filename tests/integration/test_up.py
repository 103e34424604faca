"""`make up`'s runtime half (scripts/up.sh) for real: it starts every component, the README's
two curls answer as the seed shows, login works with the secrets it generated, and Ctrl-C stops
what it started and nothing else. (`make test` itself runs the install and image half.)"""

from __future__ import annotations

import os
import re
import secrets
import signal
import stat
import subprocess
import time
from pathlib import Path

import docker
import redis
import requests

from tests.stack import ROOT, free_port, redis_argv


def test_up_runs_the_stack_and_ctrl_c_stops_only_what_it_started(tmp_path: Path) -> None:
    redis_port, port, flower = free_port(), free_port(), free_port()
    rds = subprocess.Popen(
        redis_argv(redis_port, tmp_path),
        stdout=subprocess.DEVNULL,
    )
    instance = "up" + secrets.token_hex(3)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PADDOCK_")}
    env.update(
        {
            "PADDOCK_PORT": str(port),
            "PADDOCK_FLOWER_PORT": str(flower),
            "PADDOCK_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "PADDOCK_HOST_ID": f"uphost-{instance}",
            "PADDOCK_INSTANCE": instance,
            "PADDOCK_DATA_DIR": str(tmp_path / "data"),
            "PADDOCK_RUN_DIR": str(tmp_path / "run"),
        }
    )
    up = subprocess.Popen(
        ["bash", "scripts/up.sh"],
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if requests.get(url + "/health", timeout=2).ok and redis.Redis(
                    port=redis_port
                ).exists(f"pdk:host:uphost-{instance}"):
                    break
            except requests.RequestException:
                pass
            assert up.poll() is None, up.stdout.read() if up.stdout else ""
            time.sleep(0.3)
        # The README's two calls.
        sid = requests.post(url + "/sessions", json={"envID": "Nodejs"}, timeout=60).json()["id"]
        out = requests.post(
            f"{url}/sessions/{sid}/processes?wait=true",
            json={"cmd": "echo 22", "rootdir": "/"},
            timeout=60,
        ).json()
        assert [o["line"] for o in out["stdout"]] == ["22"] and out["finished"] is True
        assert requests.get(f"http://127.0.0.1:{flower}/", timeout=10).status_code == 200
        # Generated secrets: private, and good enough for a login (dev log mailer).
        secrets_file = tmp_path / "data" / "secrets.env"
        assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
        assert (
            requests.post(
                url + "/v1/auth/login", json={"email": "up@example.com"}, timeout=10
            ).status_code
            == 200
        )
        code = None
        while code is None and time.monotonic() < deadline:
            m = re.search(
                r"login code for up@example\.com: (\d{6})",
                (tmp_path / "data" / "log" / "control.log").read_text(),
            )
            code = m.group(1) if m else None
            time.sleep(0.2)
        r = requests.post(
            url + "/v1/auth/verify-otp", json={"email": "up@example.com", "code": code}, timeout=10
        )
        assert r.status_code == 200
        # Ctrl-C (SIGINT to the foreground process group).
        os.killpg(up.pid, signal.SIGINT)
        output, _ = up.communicate(timeout=60)
        assert "up: stopped" in output
        assert _processes_of(instance) == []
        assert rds.poll() is None  # not ours to stop
        assert redis.Redis(port=redis_port).ping()
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
        rds.terminate()
        client = docker.from_env()
        for c in client.containers.list(
            all=True, filters={"label": f"paddock.instance={instance}"}
        ):
            c.remove(force=True)


def _processes_of(instance: str) -> list[int]:
    """Live (not zombie) processes whose environment names this instance."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if (proc / "stat").read_text().split(") ")[1].startswith("Z"):
                continue
            if f"PADDOCK_INSTANCE={instance}".encode() in (proc / "environ").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found
