"""Everything a worker process needs, built once from settings at worker start (not import)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from functools import cached_property

import docker
import redis

from shared.crypto import SecretBox
from shared.output import ProcessLog
from shared.redisconn import redis_client
from shared.secrets import SecretBundles
from shared.sessions import Sessions
from shared.settings import Settings
from shared.store import Store
from workers.capacity import Capacity, host_capacity
from workers.driver import DockerDriver
from workers.egress import Egress
from workers.runner import ProcessManager
from workers.storage import SandboxStorage


@dataclass
class WorkerContext:
    settings: Settings
    # Set when the worker begins to shut down: long agent tasks give their slot back.
    stopping: threading.Event = field(default_factory=threading.Event)

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
    def docker(self) -> docker.DockerClient:
        # max_pool_size: every concurrent exec holds a connection to the engine.
        return docker.DockerClient.from_env(timeout=60, max_pool_size=256)

    @cached_property
    def capacity(self) -> Capacity:
        """Sandboxes this host takes, from its engine's machine (read once, at worker start)."""
        info = self.docker.info()
        mem_total, ncpu = int(info.get("MemTotal") or 0), int(info.get("NCPU") or 1)
        return host_capacity(self.settings, mem_total, ncpu)

    @cached_property
    def storage(self) -> SandboxStorage:
        return SandboxStorage(self.settings)

    @cached_property
    def egress(self) -> Egress:
        return Egress(self.docker, self.settings)

    @cached_property
    def driver(self) -> DockerDriver:
        return DockerDriver(self.docker, self.settings, self.storage, self.egress)

    @cached_property
    def processes(self) -> ProcessManager:
        return ProcessManager(self.docker, self.driver, self.plog, self.settings)
