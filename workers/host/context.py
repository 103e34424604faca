"""Everything a worker process needs, built once from settings at worker start (not import):
Redis and the stores over it, and (on a host) the sandbox backend and the process runner."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from functools import cached_property

import redis

from shared.crypto import SecretBox
from shared.output import ProcessLog
from shared.redisconn import redis_client
from shared.secrets import SecretBundles
from shared.sessions import Sessions
from shared.settings import Settings
from shared.store import Store
from shared.watches import Watches, WatchLimits
from workers.backends import make_backend
from workers.backends.base import SandboxBackend
from workers.host.capacity import Capacity, host_capacity
from workers.host.runner import ProcessManager
from workers.host.watches import WatchRegistry


@dataclass
class WorkerContext:
    settings: Settings
    # Set when the worker begins to shut down: long agent tasks give their slot back.
    stopping: threading.Event = field(default_factory=threading.Event)
    # Set when a create took from the warm pools: their keeper refills them (workers/host/pool.py).
    pool_wake: threading.Event = field(default_factory=threading.Event)

    @cached_property
    def redis(self) -> redis.Redis:
        return redis_client(
            self.settings.redis_url,
            socket_timeout=30,
            socket_connect_timeout=5,
            health_check_interval=30,
        )

    @cached_property
    def store(self) -> Store:
        return Store(self.redis)

    @cached_property
    def plog(self) -> ProcessLog:
        return ProcessLog(self.redis)

    @cached_property
    def box(self) -> SecretBox:
        return SecretBox(self.settings.secret_key)

    @cached_property
    def secrets(self) -> SecretBundles:
        return SecretBundles(self.redis, self.box)

    @cached_property
    def sessions(self) -> Sessions:
        return Sessions(self.redis)

    @cached_property
    def backend(self) -> SandboxBackend:
        """What runs this host's sandboxes (PADDOCK_SANDBOX_BACKEND)."""
        return make_backend(self.settings)

    @cached_property
    def capacity(self) -> Capacity:
        """Sandboxes this host takes, from its backend's machine (read once, at worker start)."""
        machine = self.backend.machine()
        return host_capacity(self.settings, machine.memory_bytes, machine.cpus)

    @cached_property
    def processes(self) -> ProcessManager:
        return ProcessManager(self.backend, self.plog, self.settings)

    @cached_property
    def watches(self) -> WatchRegistry:
        """The directory watches this host drains into Redis (workers/host/watches.py)."""
        log = Watches(self.redis, WatchLimits.of(self.settings))
        return WatchRegistry(self.backend, log, self.settings.host_id)
