"""`make up`'s runtime half (scripts/up.sh) for real: it starts every component, the README's
two curls answer as the seed shows, login works with the secrets it generated, Flower asks for
the login it generated, logs are private, a component killed with -9 is restarted by the
supervisor without touching Redis or dockerd, and Ctrl-C / SIGTERM stop what it started and
nothing else.
(`make test` itself runs the install and image half.)"""

from __future__ import annotations

import base64
import contextlib
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

from devstack.stack import ROOT, free_port, redis_argv
from shared import keys
from shared.settings import Settings
from workers.backends.docker.egress import Egress
from workers.backends.docker.storage import SandboxStorage


def _up_env(tmp_path: Path, redis_port: int, port: int, flower: int, instance: str) -> dict:
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
    return env


def _secrets(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k: v for k, v in pairs}


def _private(path: Path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) == 0o600


def test_up_runs_the_stack_restarts_a_dead_worker_and_ctrl_c_stops_only_what_it_started(
    tmp_path: Path,
) -> None:
    redis_port, port, flower = free_port(), free_port(), free_port()
    rds = subprocess.Popen(
        redis_argv(redis_port, tmp_path),
        stdout=subprocess.DEVNULL,
    )
    # A Redis "bootstrap started" (its pid file in the run dir): Ctrl-C stops it, a dead
    # component does not. The stack's own Redis above is someone else's: never stopped.
    (tmp_path / "boot").mkdir()
    booted = subprocess.Popen(redis_argv(free_port(), tmp_path / "boot"), stdout=subprocess.DEVNULL)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "redis.pid").write_text(f"{booted.pid}\n")
    instance = "up" + secrets.token_hex(3)
    env = _up_env(tmp_path, redis_port, port, flower, instance)
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
                ).exists(keys.host(f"uphost-{instance}")):
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
        # Generated secrets: private, and good enough for a login (dev log mailer).
        secrets_file = tmp_path / "data" / "secrets.env"
        assert _private(secrets_file)
        # Flower: no login, no page; the generated one opens it.
        generated = _secrets(secrets_file)
        login = (generated["PADDOCK_FLOWER_USER"], generated["PADDOCK_FLOWER_PASSWORD"])
        assert len(login[1]) >= 24
        flower_url = f"http://127.0.0.1:{flower}/"
        assert requests.get(flower_url, timeout=10).status_code == 401
        assert requests.get(flower_url, auth=(login[0], "wrong"), timeout=10).status_code == 401
        assert requests.get(flower_url, auth=login, timeout=10).status_code == 200
        # Logs are private.
        logs = list((tmp_path / "data" / "log").glob("*.log"))
        assert {p.name for p in logs} >= {"web.log", "control.log", "flower.log"}
        assert all(_private(p) for p in logs), [(p.name, oct(p.stat().st_mode)) for p in logs]
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
        # kill -9 of the host worker: the supervisor starts a new one, which heartbeats again;
        # Redis, dockerd and the other components keep their pids.
        dockerd = _dockerd_pid()
        others = {
            p: _cmdline(p) for p in _processes_of(instance) if "workers host" not in _cmdline(p)
        }
        (old,) = [p for p in _processes_of(instance) if "-m workers host" in _cmdline(p)]
        r = redis.Redis(port=redis_port)
        os.kill(old, signal.SIGKILL)
        r.delete(keys.host(f"uphost-{instance}"))  # only the new worker can bring it back
        new: list[int] = []
        while time.monotonic() < deadline + 60:
            new = [p for p in _processes_of(instance) if "-m workers host" in _cmdline(p)]
            if new and new != [old] and r.exists(keys.host(f"uphost-{instance}")):
                break
            time.sleep(0.3)
        assert new and old not in new and r.exists(keys.host(f"uphost-{instance}"))
        assert up.poll() is None and rds.poll() is None and booted.poll() is None
        assert _dockerd_pid() == dockerd
        assert {p: _cmdline(p) for p in others} == others  # none of them was restarted
        out = requests.post(
            f"{url}/sessions/{sid}/processes?wait=true",
            json={"cmd": "echo back", "rootdir": "/"},
            timeout=60,
        ).json()
        assert [o["line"] for o in out["stdout"]] == ["back"]
        # Ctrl-C (SIGINT to the foreground process group).
        os.killpg(up.pid, signal.SIGINT)
        output, _ = up.communicate(timeout=90)
        assert "up: stopped" in output
        # The death and the restart are in the supervisor's log (printed and kept).
        assert f"exited: worker-uphost-{instance} (terminated by SIGKILL" in output
        supervisord_log = (tmp_path / "data" / "log" / "supervisord.log").read_text()
        assert f"spawned: 'worker-uphost-{instance}'" in supervisord_log
        assert booted.wait(30) == 0  # bootstrap's Redis: stopped
        assert _dockerd_pid() == dockerd
        # The banner says where Flower's login is, never the password itself.
        assert str(secrets_file) in output and login[1] not in output
        assert _processes_of(instance) == []
        assert rds.poll() is None  # not ours to stop
        assert redis.Redis(port=redis_port).ping()
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
        rds.terminate()
        booted.kill()
        client = docker.from_env()
        for c in client.containers.list(
            all=True, filters={"label": f"paddock.instance={instance}"}
        ):
            c.remove(force=True)
        settings = Settings.from_env(env)
        try:
            SandboxStorage(settings).release_instance()  # mounted on the host
        finally:
            Egress(client, settings).teardown()  # kept by the worker if sandboxes outlived it


def test_up_adds_a_flower_login_to_an_older_secrets_file_and_hides_old_logs(
    tmp_path: Path,
) -> None:
    """A checkout set up before Flower had a login: its secrets file gains one (the secrets it
    had are kept: they encrypt stored data), and logs an older version left 0644 become 0600."""
    redis_port, port, flower = free_port(), free_port(), free_port()
    rds = subprocess.Popen(redis_argv(redis_port, tmp_path), stdout=subprocess.DEVNULL)
    instance = "up" + secrets.token_hex(3)
    data = tmp_path / "data"
    (data / "log").mkdir(parents=True)
    old_log = data / "log" / "worker-old.log"
    old_log.write_text("from an older run\n")
    old_log.chmod(0o644)
    secrets_file = data / "secrets.env"
    before = {
        "PADDOCK_JWT_SECRET": secrets.token_hex(32),
        "PADDOCK_SECRET_KEY": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
    }
    secrets_file.write_text("".join(f"{k}={v}\n" for k, v in before.items()))
    secrets_file.chmod(0o600)
    up = subprocess.Popen(
        ["bash", "scripts/up.sh"],
        cwd=ROOT,
        env=_up_env(tmp_path, redis_port, port, flower, instance),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        after: dict[str, str] = {}
        deadline = time.monotonic() + 90
        while "PADDOCK_FLOWER_PASSWORD" not in after and time.monotonic() < deadline:
            assert up.poll() is None
            time.sleep(0.2)
            after = _secrets(secrets_file)
        assert {k: after[k] for k in before} == before
        assert after["PADDOCK_FLOWER_USER"] and len(after["PADDOCK_FLOWER_PASSWORD"]) >= 24
        assert _private(secrets_file) and _private(old_log)
        login = (after["PADDOCK_FLOWER_USER"], after["PADDOCK_FLOWER_PASSWORD"])
        status = 0
        while status != 200 and time.monotonic() < deadline:
            with contextlib.suppress(requests.RequestException):
                status = requests.get(
                    f"http://127.0.0.1:{flower}/", auth=login, timeout=5
                ).status_code
            time.sleep(0.3)
        assert status == 200
        # SIGTERM (a service manager, `kill`) stops it like Ctrl-C does.
        os.killpg(up.pid, signal.SIGTERM)
        assert up.wait(90) == 0
        assert _processes_of(instance) == []
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
        rds.terminate()
        env = _up_env(tmp_path, redis_port, port, flower, instance)
        Egress(docker.from_env(), Settings.from_env(env)).teardown()


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


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _dockerd_pid() -> int:
    """The engine's pid (the one behind the default socket; a test must not change it)."""
    return int(Path("/var/run/docker.pid").read_text())
