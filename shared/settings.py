"""Typed settings, read once from ``PADDOCK_*`` environment variables and passed in."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from shared.egress import parse_cidrs
from shared.errors import ConfigError
from shared.pools import parse_pool_sizes
from shared.redisconn import parse_redis_url, redact_url

SANDBOX_NETWORKS = ("none", "internet")
# What runs the sandboxes (workers/backends/): Docker containers; "fake" runs nothing (the scale
# harness's, workers/backends/fake/) and is refused without PADDOCK_ALLOW_FAKE_BACKEND.
SANDBOX_BACKENDS = ("docker", "supervisor", "fake")
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_DNS_NAME = re.compile(rf"{_LABEL}(\.{_LABEL})*")


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {raw!r}")


def _size(raw: str) -> int:
    """Parse ``512m``, ``1g``, ``65536`` into bytes."""
    value = raw.strip().lower()
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    if value and value[-1] in units:
        return int(float(value[:-1]) * units[value[-1]])
    return int(value)


@dataclass(frozen=True)
class Settings:
    """Every knob of Paddock. Field name ``x_y`` is read from ``PADDOCK_X_Y``."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    # Celery's broker (its queues) on a Redis of its own, same URL form as redis_url; empty:
    # redis_url's Redis. State and output stay on redis_url (which can then become a Redis
    # Cluster: kombu's Redis transport cannot use one). See broker_redis_url.
    broker_url: str = ""
    host_id: str = ""
    port: int = 3000
    auth: bool = True
    proxy_hops: int = 0
    # Host names this server answers for with keys off (comma-separated; localhost, 127.0.0.1,
    # [::1] and PADDOCK_PUBLIC_URL's host always), and browser origins allowed to call the API.
    allowed_hosts: str = ""
    cors_origins: str = ""
    # Accounts and secrets
    jwt_secret: str = ""
    secret_key: str = ""
    smtp_url: str = ""
    smtp_ca_file: str = ""
    mail_from: str = "Paddock <paddock@localhost>"
    max_api_keys: int = 20
    # Agent sessions
    public_url: str = ""
    llm_allowed_hosts: str = ""
    llm_timeout: float = 120.0
    agent_max_turns: int = 25
    agent_command_timeout: float = 900.0
    agent_history_bytes: int = 1 << 20
    session_ttl: int = 3600
    session_max_ttl: int = 7200
    ws_max_connections: int = 5
    ws_max_frame_bytes: int = 256 << 10
    ws_max_prompt_bytes: int = 64 << 10
    ws_messages_per_10s: int = 30
    ws_ping_interval: float = 25.0
    instance: str = "default"
    data_dir: str = ".paddock"
    # Sandboxes
    idle_timeout: int = 600
    sandbox_max_lifetime: int = 86400
    # What runs the sandboxes on a host: supervisor (workers/backends/supervisor/: containers
    # with Paddock's resident supervisor, one channel per sandbox) or docker
    # (workers/backends/docker/: a `docker exec` per operation).
    sandbox_backend: str = "supervisor"
    # The fake backend (workers/backends/fake/: no sandbox, commands simulated in memory, for
    # bench/scale) is chosen only when this is set too: one variable alone never picks it.
    allow_fake_backend: bool = False
    # The supervisor binary sandboxes mount (a path on the engine's host); empty: built from
    # supervisor/ and cached by its source's hash (workers/backends/supervisor/build.py).
    supervisor_binary: str = ""
    # internet (through the host's egress policy, workers/backends/docker/egress.py) or none:
    # the mode of a sandbox whose create does not say.
    sandbox_network: str = "internet"
    # Egress policy (shared/egress.py): CIDRs no sandbox may reach (on top of the built-in
    # ones), private CIDRs a sandbox's allow_out may open, DNS servers for sandboxes (default:
    # the host's), and a CA bundle (PEM) sandboxes trust instead of their image's, for networks
    # that inspect TLS (mounted read-only over /etc/ssl/certs/ca-certificates.crt).
    egress_deny: str = ""
    # Connections (conntrack flows) one sandbox may have open at once: the host's conntrack
    # table is shared by every sandbox and the host itself (262,144 entries by default).
    sandbox_max_flows: int = 2048
    egress_private_allowed: str = ""
    sandbox_dns: str = ""
    sandbox_ca_bundle: str = ""
    sandbox_memory: int = 1 << 30
    sandbox_cpus: float = 1.0
    sandbox_pids: int = 512
    # Cap on everything a sandbox can write (home, /workspace, /tmp, /var/tmp, /dev/shm): a
    # loop-mounted ext4 image of this size (workers/backends/docker/storage.py). 0: no disk,
    # those paths are a tmpfs counted in the sandbox's memory.
    sandbox_disk: int = 2 << 30
    # Where the per-sandbox writable storage lives on the host (default <data_dir>/storage).
    storage_dir: str = ""
    # Warm pools (workers/host/pool.py): started, idle sandboxes each host keeps per template
    # ("Template=N,..."; 0 or off: none), in the mode of PADDOCK_SANDBOX_NETWORK, so a
    # create claims one instead of starting a container. They hold host slots, no tenant's.
    pool_sizes: str = "Bash=2,Python3=1,Nodejs=1,standard=1"
    image_prefix: str = "paddock"
    # The image builder (python -m workers.images, make images): the template directories
    # (separated by ':'), build arguments ("NAME=VALUE ...", space-separated: each reaches the
    # templates declaring ARG NAME and is part of their hash) and the Debian mirror debootstrap
    # uses for the base (empty: templates/base/debootstrap.conf's; not part of the hash).
    templates_dir: str = "templates"
    build_args: str = ""
    debian_mirror: str = ""
    # Hosts. Capacity (sandboxes per host) follows from the engine's memory and CPUs and the
    # sandbox limits (workers/host/capacity.py): memory limits add up to at most the machine's
    # memory less host_reserved_memory, times host_memory_overcommit; CPU limits to its CPUs
    # times host_cpu_overcommit. A positive host_capacity overrides both.
    host_capacity: int = 0
    host_reserved_memory: int = 2 << 30
    host_memory_overcommit: float = 1.0
    host_cpu_overcommit: float = 8.0
    heartbeat_interval: float = 5.0
    worker_concurrency: int = 8
    reaper_interval: float = 10.0
    # Dead sandboxes (workers/host/reconcile.py check_engine): each host compares its records
    # with one container listing of its engine this often; a sandbox whose container stopped
    # is `lost`, its slots are freed at once and its record stays this long
    # (GET /v1/sandboxes/{id} says `lost`) before the reaper purges it.
    reconcile_interval: float = 10.0
    lost_keep: float = 120.0
    # A host whose worker has sent no heartbeat for this long is dead (its machine, engine or
    # worker is gone): the control worker marks its sandboxes `lost` (slots freed, 404 on the
    # E2B API). Longer than a supervisor's restart of a worker, so a restart loses nothing.
    host_dead_after: float = 60.0
    # Requests and processes
    max_body_bytes: int = 16 << 20
    max_file_bytes: int = 16 << 20
    max_output_bytes: int = 16 << 20
    wait_timeout: float = 3600.0
    # Quotas and fair shares (one tenant must never exhaust what the others need).
    sandbox_output_bytes: int = 64 << 20
    session_output_bytes: int = 64 << 20
    session_max_queued_tasks: int = 100
    tenant_output_bytes: int = 256 << 20
    tenant_max_sandboxes: int = 10
    tenant_max_sessions: int = 5
    sandbox_max_processes: int = 32
    tenant_max_waits: int = 100
    tenant_max_streams: int = 32
    tenant_max_sockets: int = 100
    sandbox_worker_share: int = 2
    # Host worker threads one tenant's tasks may hold at once on a host; 0: half of
    # worker_concurrency, at least 1 (set in __post_init__).
    tenant_worker_share: int = 0
    fs_timeout: float = 10.0
    task_timeout: float = 60.0
    create_timeout: float = 120.0
    log_level: str = "INFO"
    # Metrics (web/metrics.py, workers/host/metrics.py). A bearer token every /metrics asks for when
    # set (empty: the web's /metrics answers loopback clients only while keys are on). Each
    # host worker serves its own /metrics on this address and port (0: not served).
    metrics_token: str = ""
    metrics_addr: str = "127.0.0.1"
    metrics_port: int = 9464
    # Ports (web/ports/, workers/host/relay.py): the web proxies `Host: {port}-{sandbox id}.
    # <preview_domain>` to that port of that sandbox, through a relay each host worker runs on
    # relay_addr:relay_port (0: a free port), announced in its heartbeat as
    # relay_advertise:port (empty: relay_addr), for the web tier to reach.
    preview_domain: str = "localhost"
    relay_addr: str = "127.0.0.1"
    relay_port: int = 0
    relay_advertise: str = ""
    relay_max_connections: int = 1024
    # Seconds a proxied connection may pass no byte either way before it is closed.
    proxy_idle_timeout: float = 300.0
    tenant_max_proxied: int = 100
    # Directory watchers (shared/watches.py, workers/host/watches.py): at most so many per
    # sandbox, per tenant and per host (each a host thread and, in the sandbox, an inotify
    # instance of up to 4096 directories); each keeps at most watch_max_events unread events
    # in Redis and is written at most watch_events_per_second (a stream's worth at once).
    sandbox_max_watchers: int = 16
    tenant_max_watchers: int = 64
    host_max_watchers: int = 512
    watch_events_per_second: float = 200.0
    watch_max_events: int = 1000

    def __repr__(self) -> str:
        # Settings get logged; secrets must not be.
        hidden = {"jwt_secret", "secret_key", "smtp_url", "metrics_token"}
        shown = ", ".join(
            f"{f.name}="
            + (
                "'***'"
                if f.name in hidden and getattr(self, f.name)
                # The Redis URLs' host and options help a reader; their password is masked.
                else repr(redact_url(getattr(self, f.name)))
                if f.name in ("redis_url", "broker_url")
                else repr(getattr(self, f.name))
            )
            for f in fields(self)
        )
        return f"Settings({shown})"

    @property
    def broker_redis_url(self) -> str:
        """The Redis that holds Celery's queues: PADDOCK_BROKER_URL, else PADDOCK_REDIS_URL."""
        return self.broker_url or self.redis_url

    @property
    def broker_var(self) -> str:
        """The variable broker_redis_url comes from, for messages."""
        return "PADDOCK_BROKER_URL" if self.broker_url else "PADDOCK_REDIS_URL"

    def __post_init__(self) -> None:
        if self.broker_url:
            parse_redis_url(self.broker_url, "PADDOCK_BROKER_URL")  # raises, password masked
        if not self.host_id:
            object.__setattr__(self, "host_id", socket.gethostname())
        if self.tenant_worker_share <= 0:
            share = max(1, self.worker_concurrency // 2)
            object.__setattr__(self, "tenant_worker_share", share)
        if self.sandbox_backend not in SANDBOX_BACKENDS:
            raise ConfigError(
                f"PADDOCK_SANDBOX_BACKEND must be one of {', '.join(SANDBOX_BACKENDS)}"
            )
        if self.sandbox_backend == "fake" and not self.allow_fake_backend:
            raise ConfigError(
                "PADDOCK_SANDBOX_BACKEND=fake runs no sandboxes (a simulation for bench/scale): "
                "it also needs PADDOCK_ALLOW_FAKE_BACKEND=1"
            )
        if self.sandbox_network not in SANDBOX_NETWORKS:
            raise ConfigError(
                f"PADDOCK_SANDBOX_NETWORK must be one of {', '.join(SANDBOX_NETWORKS)}"
            )
        parse_pool_sizes(self.pool_sizes)
        for name in ("egress_deny", "egress_private_allowed", "sandbox_dns"):
            parse_cidrs(getattr(self, name), f"PADDOCK_{name.upper()}")
        for name in (
            "idle_timeout",
            "sandbox_pids",
            "sandbox_cpus",
            "host_memory_overcommit",
            "host_cpu_overcommit",
            "sandbox_memory",
            "sandbox_max_flows",
            "host_dead_after",
            "relay_max_connections",
            "proxy_idle_timeout",
            "tenant_max_proxied",
            "sandbox_max_watchers",
            "tenant_max_watchers",
            "host_max_watchers",
            "watch_events_per_second",
            "watch_max_events",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"PADDOCK_{name.upper()} must be positive")
        for name in ("host_capacity", "host_reserved_memory"):
            if getattr(self, name) < 0:
                raise ConfigError(f"PADDOCK_{name.upper()} must be 0 or more")
        if not 0 <= self.relay_port <= 65535:
            raise ConfigError("PADDOCK_RELAY_PORT must be 0..65535")
        domain = self.preview_domain.strip(".").lower()
        if not _DNS_NAME.fullmatch(domain):
            raise ConfigError("PADDOCK_PREVIEW_DOMAIN must be a DNS name (like localhost)")
        object.__setattr__(self, "preview_domain", domain)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``environ`` (default ``os.environ``).

        Raises ConfigError on a value that does not parse.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f"PADDOCK_{f.name.upper()}")
            if raw is None or raw == "":
                continue
            try:
                values[f.name] = _parse(f.name, f.type, raw)
            except ValueError as exc:
                raise ConfigError(f"PADDOCK_{f.name.upper()}: {exc}") from exc
        return cls(**values)


def _parse(name: str, typ: Any, raw: str) -> Any:
    if typ in (bool, "bool"):
        return _bool(raw)
    if typ in (int, "int"):
        sizes = ("sandbox_memory", "sandbox_disk", "host_reserved_memory", "max_")
        if name.startswith(sizes) or name.endswith("_bytes"):
            return _size(raw)
        return int(raw)
    if typ in (float, "float"):
        return float(raw)
    return raw
