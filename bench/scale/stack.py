"""The stack the scale harness measures, as processes on loopback: one redis-server of its own
(own port, own directory; a second for Celery's broker with ``separate_broker``), the control
worker, the web tier (gunicorn with the one configuration, web/gunicorn_conf.py), and
simulated hosts over the fake backend: many host workers per process (bench/scale/hosts.py),
or one real ``python -m workers host`` (``solo``, the exact production program, for the
per-operation counts)."""

from __future__ import annotations

import base64
import contextlib
import itertools
import os
import queue
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import requests

from devstack.stack import ROOT, VENV_BIN, free_port, raise_open_files, redis_argv
from shared import keys
from shared.redisconn import redis_client

# The settings every component of the harness gets (beside Redis, secrets and the data dir).
SCALE_ENV = {
    "PADDOCK_SANDBOX_BACKEND": "fake",
    "PADDOCK_ALLOW_FAKE_BACKEND": "1",
    "PADDOCK_AUTH": "on",
    "PADDOCK_LOG_LEVEL": "WARNING",
    # Each host's /metrics would need a port each; the port relay stays (a thread and a socket).
    "PADDOCK_METRICS_PORT": "0",
    # Creates are cold (no warm pool), so a create's cost is the same at every step.
    "PADDOCK_POOL_SIZES": "0",
    "PADDOCK_HOST_CAPACITY": "64",
    # One tenant per simulated client: its sandbox, its create-and-delete, its agent session.
    "PADDOCK_TENANT_MAX_SANDBOXES": "8",
    "PADDOCK_TENANT_MAX_SESSIONS": "4",
}


class ScaleStack:
    """Start with ``start()`` (or ``with``); hosts are added with ``add_hosts``."""

    def __init__(
        self,
        workdir: Path,
        host_procs: int = 2,
        env: dict[str, str] | None = None,
        separate_broker: bool = False,
    ):
        self.workdir = workdir
        self.host_procs = host_procs
        self.redis_port = free_port()
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        # separate_broker: Celery's queues on a second redis-server ("redis-broker",
        # PADDOCK_BROKER_URL), so each Redis is counted apart.
        self.broker_port = free_port() if separate_broker else 0
        self.broker_url = f"redis://127.0.0.1:{self.broker_port}/0" if separate_broker else ""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("PADDOCK_")},
            **SCALE_ENV,
            "PADDOCK_REDIS_URL": self.redis_url,
            **({"PADDOCK_BROKER_URL": self.broker_url} if separate_broker else {}),
            "PADDOCK_INSTANCE": "scale" + secrets.token_hex(3),
            "PADDOCK_DATA_DIR": str(workdir),
            "PADDOCK_JWT_SECRET": secrets.token_hex(32),
            "PADDOCK_SECRET_KEY": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.hosts: list[str] = []
        self._ready: queue.Queue[str] = queue.Queue()
        self._next_proc = itertools.cycle(range(host_procs))
        self.redis = redis_client(self.redis_url, socket_timeout=30)
        self.broker_redis = (
            redis_client(self.broker_url, socket_timeout=30) if separate_broker else self.redis
        )

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, solo: bool = False) -> ScaleStack:
        """Redis, control, web, and either ``host_procs`` empty host processes or (``solo``)
        one real host worker, ``solo``. Raises RuntimeError when a component does not come up."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._spawn("redis", redis_argv(self.redis_port, self.workdir))
        self._wait(lambda: self.redis.ping(), "redis")
        if self.broker_port:
            broker_dir = self.workdir / "redis-broker"
            broker_dir.mkdir(exist_ok=True)
            self._spawn("redis-broker", redis_argv(self.broker_port, broker_dir))
            self._wait(lambda: self.broker_redis.ping(), "the broker's redis")
        self._spawn("control", [sys.executable, "-m", "workers", "control"])
        gunicorn = [str(VENV_BIN / "gunicorn"), "-c", "python:web.gunicorn_conf"]
        self._spawn("web", [*gunicorn, "--bind", f"127.0.0.1:{self.port}"])
        http = requests.Session()
        self._wait(lambda: http.get(self.url + "/health", timeout=2).ok, "web")
        if solo:
            self._spawn("host-solo", [sys.executable, "-m", "workers", "host"], "solo")
            self.hosts.append("solo")
            self._wait(lambda: self.alive_hosts() == 1, "the solo host's heartbeat")
        else:
            for i in range(self.host_procs):
                argv = [sys.executable, "-m", "bench.scale.hosts"]
                proc = self._spawn(f"hosts{i}", argv, pipe=True)
                assert proc.stdout is not None
                threading.Thread(target=self._read_ready, args=(proc.stdout,), daemon=True).start()
        return self

    def add_hosts(self, total: int, timeout: float = 300.0) -> float:
        """Start simulated hosts until there are ``total``, spread over the host processes;
        returns once each consumes and heartbeats, with the seconds that took. Raises
        RuntimeError when they do not in ``timeout`` seconds."""
        started = time.monotonic()
        new = [f"sim{n:04d}" for n in range(len(self.hosts), total)]
        for host_id in new:
            proc = self.procs[f"hosts{next(self._next_proc)}"]
            assert proc.stdin is not None
            proc.stdin.write(f"add {host_id}\n".encode())
            proc.stdin.flush()
        waiting = set(new)
        deadline = started + timeout
        while waiting:
            self._check_alive()
            try:
                line = self._ready.get(timeout=max(0.1, min(1.0, deadline - time.monotonic())))
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{len(waiting)} hosts did not start") from None
                continue
            word, _, host_id = line.partition(" ")
            if word == "failed":
                raise RuntimeError(f"host {host_id} failed to start (see hosts*.log)")
            waiting.discard(host_id)
        self.hosts += new
        self._wait(lambda: self.alive_hosts() >= total, "heartbeats", timeout)
        return time.monotonic() - started

    def stop(self) -> None:
        for name, proc in self.procs.items():
            if name.startswith("hosts") and proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.write(b"stop\n")
                    proc.stdin.flush()
        redises = [n for n in self.procs if n.startswith("redis")]
        others = [n for n in self.procs if n not in redises]
        for name in others:
            sig = signal.SIGINT if name == "web" else signal.SIGTERM  # gunicorn: quick
            if not name.startswith("hosts"):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.procs[name].pid, sig)
        deadline = time.monotonic() + 30
        for name in [*others, *redises]:
            proc = self.procs[name]
            if name in redises:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        self.procs.clear()

    def __enter__(self) -> ScaleStack:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- what the measurements need ----------------------------------------------------------
    def alive_hosts(self) -> int:
        ids = [h.decode() for h in self.redis.smembers(keys.hosts())]
        return sum(1 for h in ids if self.redis.exists(keys.host(h)))

    def pids(self, prefix: str) -> list[int]:
        """The pids of the components whose name starts with ``prefix`` (their children not
        included)."""
        return [p.pid for n, p in self.procs.items() if n.startswith(prefix)]

    def log(self, name: str) -> str:
        return (self.workdir / f"{name}.log").read_text(errors="replace")

    # -- internals ---------------------------------------------------------------------------
    def _read_ready(self, out: IO[bytes]) -> None:
        for raw in out:
            self._ready.put(raw.decode(errors="replace").strip())

    def _spawn(
        self, name: str, argv: list[str], host_id: str = "", pipe: bool = False
    ) -> subprocess.Popen[bytes]:
        fd = os.open(self.workdir / f"{name}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        env = {**self.env, **({"PADDOCK_HOST_ID": host_id} if host_id else {})}
        with os.fdopen(fd, "ab") as log:
            proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=env,
                stdin=subprocess.PIPE if pipe else subprocess.DEVNULL,
                stdout=subprocess.PIPE if pipe else log,
                stderr=log,
                start_new_session=True,
                preexec_fn=raise_open_files,
            )
        self.procs[name] = proc
        return proc

    def _check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited: {self.log(name)[-3000:]}")

    def _wait(self, check: Callable[[], Any], what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            with contextlib.suppress(Exception):
                if check():
                    return
            time.sleep(0.2)
        raise RuntimeError(f"timed out waiting for {what}")
