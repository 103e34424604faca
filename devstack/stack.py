"""Start a real Paddock stack for integration tests and benchmarks: a private redis-server,
real Celery workers (one per host id, plus control with beat) and gunicorn, all as processes on
loopback. Docker containers are labelled with a per-stack instance id and removed at stop."""

from __future__ import annotations

import base64
import contextlib
import os
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests

from shared import keys
from shared.redisconn import redis_client
from shared.settings import Settings
from workers.backends.docker.egress import Egress
from workers.backends.docker.storage import SandboxStorage

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def redis_argv(
    port: int, workdir: Path, conf: Path | None = None, tls_dir: Path | None = None
) -> list[str]:
    """A throwaway redis-server on loopback: no persistence, data dir in ``workdir``. ``conf``:
    a config file read first (passwords, ACL users); ``tls_dir``: TLS only, on ``port``, with
    its ca.pem, cert.pem and key.pem."""
    listen = ["--port", str(port)]
    if tls_dir:
        listen = ["--port", "0", "--tls-port", str(port), "--tls-auth-clients", "no"]
        for option, name in (("cert", "cert.pem"), ("key", "key.pem"), ("ca-cert", "ca.pem")):
            listen += [f"--tls-{option}-file", str(tls_dir / name)]
    return [
        shutil.which("redis-server") or "redis-server",
        *([str(conf)] if conf else []),
        *listen,
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(workdir),
        # Room for thousands of waiting clients' connections (the bench holds 2,000).
        "--maxclients",
        "20000",
        # As under `make up`: a memory cap, and state is never evicted.
        "--maxmemory",
        "2gb",
        "--maxmemory-policy",
        "noeviction",
    ]


@dataclass(frozen=True)
class RedisOptions:
    """The private Redis of a stack that tests Redis across machines: ``conf`` holds
    redis.conf lines (requirepass, ACL users; written to a 0600 file, not argv), ``userinfo``
    what the components' URL carries before "@" (percent-encoded), ``tls_dir`` the TLS files
    (then the URL is rediss:// with that CA)."""

    conf: str = ""
    userinfo: str = ""
    tls_dir: Path | None = None
    # Persistence as an operator's Redis has it (AOF, fsync per write): what a restart keeps.
    aof: bool = False

    def url(self, port: int) -> str:
        auth = f"{self.userinfo}@" if self.userinfo else ""
        if self.tls_dir:
            return f"rediss://{auth}127.0.0.1:{port}/0?ssl_ca_certs={self.tls_dir / 'ca.pem'}"
        return f"redis://{auth}127.0.0.1:{port}/0"

    def argv(self, port: int, workdir: Path) -> list[str]:
        conf = None
        if self.conf:
            conf = workdir / "redis-auth.conf"
            fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(self.conf)
        argv = redis_argv(port, workdir, conf, self.tls_dir)
        if self.aof:  # later arguments win over redis_argv's "no persistence"
            argv += ["--appendonly", "yes", "--appendfsync", "always"]
        return argv


OPEN_FILES = 65536


def raise_open_files() -> None:
    """In the child before exec: every open long-poll or WebSocket holds a client socket and a
    Redis connection in the web, and one in redis-server, so both need more than the usual
    1,024 descriptors. Up to the hard limit when raising that is not allowed."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (OPEN_FILES, max(hard, OPEN_FILES)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def backend_env() -> dict[str, str]:
    """PADDOCK_SANDBOX_BACKEND from PADDOCK_TEST_BACKEND (default: the product's), and for
    the supervisor backend its binary, built here once rather than by each worker (or taken
    from PADDOCK_TEST_SUPERVISOR_BINARY)."""
    backend = os.environ.get("PADDOCK_TEST_BACKEND") or Settings().sandbox_backend
    env = {"PADDOCK_SANDBOX_BACKEND": backend}
    if backend == "supervisor":
        from workers.backends.supervisor.build import build

        binary = os.environ.get("PADDOCK_TEST_SUPERVISOR_BINARY") or str(build())
        env["PADDOCK_SUPERVISOR_BINARY"] = binary
    return env


class Stack:
    def __init__(
        self,
        workdir: Path,
        hosts: tuple[str, ...] = ("host-a",),
        env: dict[str, str] | None = None,
        redis_options: RedisOptions | None = None,
        host_env: dict[str, dict[str, str]] | None = None,
        web_replicas: int = 1,
        separate_broker: bool = False,
    ) -> None:
        self.workdir = workdir
        self.hosts = hosts
        # Per host id: extra env of its worker (e.g. DOCKER_HOST: its own engine).
        self.host_env = host_env or {}
        self.metrics_ports: dict[str, int] = {}  # host id -> its worker's /metrics port
        self.instance = "t" + secrets.token_hex(4)
        self.redis_port = free_port()
        self.redis_options = redis_options or RedisOptions()
        self.redis_url = self.redis_options.url(self.redis_port)
        # separate_broker: Celery's queues on a second private redis-server (process
        # "broker-redis", PADDOCK_BROKER_URL), state and output on the first.
        self.broker_port = free_port() if separate_broker else None
        self.broker_url = f"redis://127.0.0.1:{self.broker_port}/0" if separate_broker else ""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # Every web replica's URL (the first is ``url``): gunicorns over the same Redis,
        # processes "web", "web2", ...
        self.urls = [self.url] + [f"http://127.0.0.1:{free_port()}" for _ in range(1, web_replicas)]
        self.env = {
            **{
                k: v
                for k, v in os.environ.items()
                if not k.startswith("PADDOCK_") and k != "PROMETHEUS_MULTIPROC_DIR"
            },
            "PADDOCK_REDIS_URL": self.redis_url,
            **({"PADDOCK_BROKER_URL": self.broker_url} if self.broker_url else {}),
            "PADDOCK_INSTANCE": self.instance,
            "PADDOCK_DATA_DIR": str(workdir),
            "PADDOCK_HEARTBEAT_INTERVAL": "1",
            "PADDOCK_REAPER_INTERVAL": "1",
            "PADDOCK_LOG_LEVEL": "INFO",
            "PADDOCK_AUTH": "off",
            # Tests make many short-lived sandboxes; the capacity a host derives from its
            # memory and CPUs (16 on a 2-core machine) is tested in test_hosts.py.
            "PADDOCK_HOST_CAPACITY": "32",
            # No warm pools unless a test asks (tests/integration/test_pools.py): other tests
            # count their containers and slots.
            "PADDOCK_POOL_SIZES": "0",
            # The backend under test: the product's default unless PADDOCK_TEST_BACKEND says
            # otherwise (`make test` runs the E2B API's tests on both).
            **backend_env(),
            "PADDOCK_JWT_SECRET": secrets.token_hex(32),
            "PADDOCK_SECRET_KEY": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.redis = redis_client(self.redis_url, socket_timeout=30)
        # Celery's Redis: the second one with separate_broker, else the same.
        self.broker_redis = (
            redis_client(self.broker_url, socket_timeout=30) if self.broker_url else self.redis
        )
        self.http = requests.Session()

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> Stack:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._spawn("redis", self.redis_options.argv(self.redis_port, self.workdir))
        self._wait(lambda: self.redis.ping(), "redis")
        if self.broker_port:
            self.start_broker()
        for host in self.hosts:
            self.start_host(host)
        self._spawn("control", [sys.executable, "-m", "workers", "control"])
        for i, url in enumerate(self.urls):
            name = "web" if i == 0 else f"web{i + 1}"
            self._spawn(
                name,
                [
                    str(VENV_BIN / "gunicorn"),
                    "-c",
                    "python:web.gunicorn_conf",  # the app and every limit; only the address here
                    "--bind",
                    url.removeprefix("http://"),
                ],
            )
        for url in self.urls:
            self._wait(lambda url=url: self.http.get(url + "/health", timeout=2).ok, "web")
        self._wait(lambda: len(self.alive_hosts()) == len(self.hosts), "hosts heartbeat")
        return self

    def start_host(self, host: str) -> None:
        self._spawn(
            f"worker-{host}",
            [sys.executable, "-m", "workers", "host"],
            {
                "PADDOCK_HOST_ID": host,
                # Its own /metrics port (workers/host/metrics.py), kept across restarts.
                "PADDOCK_METRICS_PORT": str(self.metrics_ports.setdefault(host, free_port())),
                **self.host_env.get(host, {}),
            },
        )

    def stop_process(self, name: str, sig: int = signal.SIGTERM) -> None:
        self.stop_processes([name], sig)

    def stop_processes(
        self, names: list[str], sig: int = signal.SIGTERM, web_sig: int | None = None
    ) -> None:
        """Stop components together (each gets ``sig``, or ``web_sig`` for the web replicas,
        then up to 20 s, then SIGKILL): a stack's stop costs its slowest component's shutdown,
        not the sum of them all."""
        signals = [web_sig if web_sig and name.startswith("web") else sig for name in names]
        procs = [self.procs.pop(name) for name in names]
        # Each component is its own process group: stopping reaches gunicorn's workers too.
        for proc, sent in zip(procs, signals, strict=True):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sent)
        deadline = time.monotonic() + 20
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)

    def restart_redis(self, down_seconds: float = 1.0, sig: int = signal.SIGTERM) -> None:
        """Stop the private redis-server with ``sig``, and after ``down_seconds`` start it
        again on the same port with the same argv; returns once it answers. It keeps its data
        only with RedisOptions(aof=True)."""
        self.stop_process("redis", sig)
        time.sleep(down_seconds)
        self.start_redis()

    def start_redis(self) -> None:
        """Start (again) the private redis-server (state and output) on its port, with the
        same argv; returns once it answers."""
        self._spawn("redis", self.redis_options.argv(self.redis_port, self.workdir))
        self._wait(lambda: self.redis.ping(), "redis")

    def start_broker(self) -> None:
        """Start (again) the broker's redis-server of a separate_broker stack, on its port."""
        assert self.broker_port, "not a separate_broker stack"
        broker_dir = self.workdir / "broker-redis"
        broker_dir.mkdir(exist_ok=True)
        self._spawn("broker-redis", redis_argv(self.broker_port, broker_dir))
        self._wait(lambda: self.broker_redis.ping(), "broker redis")

    def stop(self) -> None:
        # Redis last: the workers write their last state to it as they stop.
        # gunicorn's quick shutdown (SIGINT): a graceful one waits its 10 s graceful_timeout
        # for the keep-alive connections the tests' HTTP sessions hold.
        redises = ("redis", "broker-redis")
        self.stop_processes([n for n in self.procs if n not in redises], web_sig=signal.SIGINT)
        self.stop_processes([n for n in redises if n in self.procs])
        client = docker.from_env(timeout=60)
        for c in self.containers():
            with contextlib.suppress(docker.errors.DockerException):
                c.remove(force=True)
        # The sandboxes' storage is mounted on the host and outlives the worker (as it must
        # across a restart): unmount and delete this stack's.
        SandboxStorage(Settings.from_env(self.env)).release_instance()
        # Each host worker removed its egress rules and network at stop unless sandboxes were
        # still behind them (they were, if a test left some): now there are none.
        for host in self.hosts:
            Egress(client, Settings.from_env({**self.env, "PADDOCK_HOST_ID": host})).teardown()

    def __enter__(self) -> Stack:
        # A start that fails (a component that does not come up in time on a loaded machine)
        # must not leave the components it did start running: their workers would go on
        # installing egress rules and holding ports after the test gave up.
        try:
            return self.start()
        except BaseException:
            with contextlib.suppress(Exception):
                self.stop()
            raise

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- helpers -----------------------------------------------------------------------------
    def alive_hosts(self) -> list[str]:
        return sorted(
            h.decode()
            for h in self.redis.smembers(keys.hosts())
            if self.redis.exists(keys.host(h.decode()))
        )

    def engines(self) -> list[docker.DockerClient]:
        """A client of every engine the hosts use that answers: the machine's, and any
        host's own (DOCKER_HOST in host_env)."""
        urls = {env["DOCKER_HOST"] for env in self.host_env.values() if "DOCKER_HOST" in env}
        clients = [docker.from_env(timeout=60)]
        for url in sorted(urls):
            # (the client asks the engine its API version as it is made)
            with contextlib.suppress(docker.errors.DockerException, requests.RequestException):
                clients.append(docker.DockerClient(base_url=url, timeout=60))
        return clients

    def containers(self) -> list[Any]:
        """This stack's containers on every engine that answers."""
        found = []
        for client in self.engines():
            with contextlib.suppress(docker.errors.DockerException, requests.RequestException):
                found += client.containers.list(
                    all=True, filters={"label": f"paddock.instance={self.instance}"}
                )
        return found

    def log(self, name: str) -> str:
        return (self.workdir / f"{name}.log").read_text(errors="replace")

    def _spawn(self, name: str, argv: list[str], extra: dict[str, str] | None = None) -> None:
        # Logs are 0600 (they name tenants and sandboxes), as under `make up`.
        fd = os.open(self.workdir / f"{name}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "ab") as out:  # the child keeps its own copy
            self.procs[name] = subprocess.Popen(
                argv,
                cwd=ROOT,
                env={**self.env, **(extra or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=raise_open_files,
            )

    def _wait(self, check: Any, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited: {self.log(name)[-3000:]}")
            try:
                if check():
                    return
            except Exception:
                pass
            time.sleep(0.1)
        logs = "\n".join(f"--- {n}\n{self.log(n)[-2000:]}" for n in self.procs)
        raise RuntimeError(f"timed out waiting for {what}\n{logs}")
