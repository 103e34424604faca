"""The Docker backend: sandboxes are hardened containers of the local engine (the
SandboxBackend of workers/backends/base.py).

What does what here: ``driver.py`` the containers and every operation inside them,
``docker_exec.py`` one ``docker exec`` with its multiplexed socket, ``process.py`` a spawned
process's handle, ``storage.py`` each sandbox's capped writable storage, ``egress.py`` the
host's firewall for sandboxes with internet. This class puts them together and turns the Docker
SDK's errors into Paddock's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import docker
import docker.errors

from shared.egress import NetworkPolicy
from shared.errors import BackendUnsupported, EngineUnavailable, SandboxError
from shared.settings import Settings
from workers.backends.base import (
    Machine,
    ProcessHandle,
    ResourceUsage,
    SandboxState,
    SpawnOptions,
    TemplateImage,
    WatchHandle,
)
from workers.backends.docker.driver import ALIVE_STATES, ENGINE_ERRORS, DockerDriver
from workers.backends.docker.egress import Egress
from workers.backends.docker.process import DockerProcess
from workers.backends.docker.storage import SandboxStorage
from workers.images.templates import template_catalog

logger = logging.getLogger(__name__)


class DockerBackend:
    """Sandboxes as containers of the engine ``client`` talks to (default: from the env)."""

    def __init__(self, settings: Settings, client: docker.DockerClient | None = None) -> None:
        self.settings = settings
        # max_pool_size: every concurrent exec holds a connection to the engine.
        self.client = client or docker.DockerClient.from_env(timeout=60, max_pool_size=256)
        self.storage = SandboxStorage(settings)
        self.egress = Egress(self.client, settings)
        self.driver = DockerDriver(self.client, settings, self.storage, self.egress)

    @property
    def on_gone(self) -> Callable[[str], None] | None:
        return self.driver.on_gone

    @on_gone.setter
    def on_gone(self, callback: Callable[[str], None] | None) -> None:
        self.driver.on_gone = callback

    # -- the host ------------------------------------------------------------------------------
    def ping(self) -> None:
        self.client.ping()

    def machine(self) -> Machine:
        info = self.client.info()
        return Machine(int(info.get("MemTotal") or 0), int(info.get("NCPU") or 1))

    def check_storage(self, sandboxes: int) -> None:
        self.storage.check(sandboxes)

    def start_network(self) -> None:
        self.driver.start_network()

    def stop_network(self) -> None:
        self.egress.teardown()

    def network_problem(self) -> str | None:
        return self.egress.check()

    def address(self, sandbox_id: str) -> str | None:
        return self.egress.address(sandbox_id)

    def templates(self) -> list[TemplateImage]:
        return template_catalog(self.client, self.settings.image_prefix)

    # -- lifecycle -------------------------------------------------------------------------------
    def create(
        self,
        sandbox_id: str,
        tenant_id: str,
        image: str,
        network: NetworkPolicy,
        warm: bool = False,
    ) -> None:
        try:
            self.driver.create(sandbox_id, tenant_id, image, network, warm=warm)
        except docker.errors.APIError as exc:
            logger.error("sandbox %s: create failed: %s", sandbox_id, exc)
            raise SandboxError(f"could not start the sandbox: {exc.explanation or exc}") from exc

    def claim(self, sandbox_id: str, tenant_id: str, network: NetworkPolicy) -> None:
        self.driver.claim(sandbox_id, network)

    def destroy(self, sandbox_id: str, ref: str | None = None) -> None:
        self.driver.destroy(sandbox_id, ref)

    def sandbox_states(self) -> dict[str, SandboxState]:
        try:
            states = self.driver.container_states()
        except ENGINE_ERRORS as exc:
            raise EngineUnavailable(str(exc)) from exc
        return {
            sid: SandboxState(cid, state, state in ALIVE_STATES)
            for sid, (cid, state) in states.items()
        }

    def storage_ids(self) -> list[str]:
        return self.storage.sandbox_ids()

    def release_storage(self, sandbox_id: str) -> None:
        self.storage.release(sandbox_id)

    def prune(self) -> None:
        self.driver.seeds.prune()

    # -- inside a sandbox ------------------------------------------------------------------------
    def ports(self, sandbox_id: str) -> list[dict[str, Any]]:
        return self.driver.ports(sandbox_id)

    def list_dir(self, sandbox_id: str, path: str) -> list[tuple[str, bool]]:
        return self.driver.list_dir(sandbox_id, path)

    def make_dir(self, sandbox_id: str, path: str) -> None:
        self.driver.make_dir(sandbox_id, path)

    def remove(self, sandbox_id: str, path: str) -> None:
        self.driver.remove(sandbox_id, path)

    def read_file(self, sandbox_id: str, path: str) -> bytes:
        return self.driver.read_file(sandbox_id, path)

    def write_file(self, sandbox_id: str, path: str, data: bytes) -> None:
        self.driver.write_file(sandbox_id, path, data)

    # The envd protocol's whole entries and moves: the supervisor backend has them (its
    # fs.stat/fs.list/fs.move); through docker exec they would cost a process each.
    _ENVD_ONLY = "not supported by the docker backend (PADDOCK_SANDBOX_BACKEND=supervisor is)"

    def stat(self, sandbox_id: str, path: str) -> dict[str, Any]:
        raise BackendUnsupported(f"file information is {self._ENVD_ONLY}")

    def move(self, sandbox_id: str, path: str, dst: str) -> None:
        raise BackendUnsupported(f"moving files is {self._ENVD_ONLY}")

    def entries(self, sandbox_id: str, path: str, depth: int) -> list[dict[str, Any]]:
        raise BackendUnsupported(f"listing entries with details is {self._ENVD_ONLY}")

    def watch(self, sandbox_id: str, path: str, recursive: bool) -> WatchHandle:
        raise BackendUnsupported(f"watching directories is {self._ENVD_ONLY}")

    def spawn(
        self,
        sandbox_id: str,
        cmd: str,
        env: dict[str, str],
        cwd: str,
        options: SpawnOptions | None = None,
    ) -> ProcessHandle:
        """``options``: argv, stdin and timeout (the worker kills the group); a terminal is
        BackendUnsupported (a docker exec with a tty would mix in the spawn script's pid
        report)."""
        o = options or SpawnOptions()
        if o.pty is not None:
            raise BackendUnsupported(f"terminals are {self._ENVD_ONLY}")
        attached = self.driver.spawn(sandbox_id, cmd, env, cwd, argv=o.argv, stdin=o.stdin)
        return DockerProcess(self.driver, sandbox_id, attached, timeout=o.timeout)

    def adopt(self, sandbox_id: str, ref: str, after_seq: int) -> ProcessHandle:
        raise SandboxError("a docker exec's output cannot be followed again")

    def oom_kills(self, sandbox_id: str) -> int | None:
        return self.driver.oom_kills(sandbox_id)

    def pause(self, sandbox_id: str) -> bool:
        return self.driver.pause(sandbox_id)

    def resume(self, sandbox_id: str) -> bool:
        return self.driver.resume(sandbox_id)

    def usage(self, sandbox_id: str) -> ResourceUsage | None:
        return self.driver.usage(sandbox_id)
