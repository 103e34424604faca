"""The web side of sandboxes: look them up (scoped by tenant), place new ones, and send every
command to the owning host's queue."""

from __future__ import annotations

import base64
import logging
from typing import Any

import redis
from celery import Celery

from shared import ids, rpc, tasks
from shared.errors import NoCapacity, PaddockError, ValidationFailed, WorkerTimeout
from shared.lifecycle import HISTORY_AFTER_END
from shared.output import Output, ProcessLog
from shared.sessions import Sessions
from shared.settings import Settings
from shared.store import Sandbox, Store

logger = logging.getLogger(__name__)


class Sandboxes:
    def __init__(self, settings: Settings, r: redis.Redis, celery: Celery) -> None:
        self.settings = settings
        self.r = r
        self.celery = celery
        self.store = Store(r)
        self.plog = ProcessLog(r)
        self.sessions = Sessions(r)

    # -- lifecycle ---------------------------------------------------------------------------
    def create(self, tenant_id: str, template: str, field: str = "body.envID") -> Sandbox:
        """Place and start a sandbox.

        Raises NoCapacity (no live host / all full), ValidationFailed (unknown template),
        WorkerTimeout or the host's error; nothing is left behind on failure.
        """
        if not self.store.alive_hosts():
            raise NoCapacity("No sandbox host is alive; start a worker (make up)")
        if template not in self.store.known_templates():
            raise ValidationFailed({field: f"unknown environment {template!r}"})
        sandbox_id = ids.sandbox_id()
        host = self.store.place(sandbox_id, template)
        sb = self.store.create_sandbox(
            sandbox_id, tenant_id, host, template, self.settings.sandbox_max_lifetime
        )
        try:
            self._call(
                sb,
                tasks.SANDBOX_CREATE,
                {"tenant_id": tenant_id, "template": template},
                timeout=self.settings.create_timeout,
            )
        except WorkerTimeout:
            self._abandon(sb)
            raise
        except PaddockError:
            self.store.purge_sandbox(sandbox_id)
            raise
        logger.info("sandbox %s: created on host %s for tenant %s", sandbox_id, host, tenant_id)
        return sb

    def get(self, tenant_id: str, sandbox_id: str) -> Sandbox:
        """The tenant's sandbox; resets its idle timer. Raises SessionNotFound."""
        sb = self.store.get_sandbox(tenant_id, sandbox_id)
        self.store.touch(sandbox_id)
        return sb

    def of_tenant(self, tenant_id: str) -> list[Sandbox]:
        return self.store.tenant_sandboxes(tenant_id)

    def delete(self, sb: Sandbox) -> None:
        """Destroy the sandbox; an agent session living in it ends with it."""
        session_id = self.store.raw_sandbox(sb.sandbox_id).get("session")
        if not self.store.begin_delete(sb.sandbox_id):
            return
        session = self.sessions.load(session_id) if session_id else None
        if session is not None:
            self.sessions.end(session, keep_for=HISTORY_AFTER_END)
        try:
            self._call(sb, tasks.SANDBOX_DESTROY, {})
        except WorkerTimeout:
            # The reaper sends the destroy again until the host does it.
            logger.warning(
                "sandbox %s: destroy not confirmed by host %s", sb.sandbox_id, sb.host_id
            )

    def _abandon(self, sb: Sandbox) -> None:
        self.store.begin_delete(sb.sandbox_id)
        rpc.send(
            self.celery,
            tasks.host_queue(sb.host_id),
            tasks.SANDBOX_DESTROY,
            {"sandbox_id": sb.sandbox_id},
            expires=self.settings.create_timeout * 10,
        )

    # -- commands ----------------------------------------------------------------------------
    def ports(self, sb: Sandbox) -> list[dict[str, Any]]:
        return list(self._call(sb, tasks.SANDBOX_PORTS, {}))

    def list_dir(self, sb: Sandbox, path: str) -> list[dict[str, Any]]:
        return list(self._call(sb, tasks.FS_LIST, {"path": path}))

    def make_dir(self, sb: Sandbox, path: str) -> None:
        self._call(sb, tasks.FS_MKDIR, {"path": path})

    def remove(self, sb: Sandbox, path: str) -> None:
        self._call(sb, tasks.FS_REMOVE, {"path": path})

    def read_file(self, sb: Sandbox, path: str) -> bytes:
        return base64.b64decode(self._call(sb, tasks.FS_READ, {"path": path})["data"])

    def write_file(self, sb: Sandbox, path: str, data: bytes) -> None:
        self._call(sb, tasks.FS_WRITE, {"path": path, "data": base64.b64encode(data).decode()})

    def start_process(self, sb: Sandbox, cmd: str, env: dict[str, str], cwd: str) -> str:
        process_id = ids.process_id()
        self._call(
            sb, tasks.PROCESS_START, {"process_id": process_id, "cmd": cmd, "env": env, "cwd": cwd}
        )
        return process_id

    def process_exists(self, sb: Sandbox, process_id: str) -> bool:
        return self.plog.exists(sb.sandbox_id, process_id)

    def output(self, sb: Sandbox, process_id: str, wait: bool) -> Output:
        if wait:
            return self.plog.wait(
                sb.sandbox_id,
                process_id,
                self.settings.wait_timeout,
                tick=lambda: self.store.touch(sb.sandbox_id),
            )
        return self.plog.read(sb.sandbox_id, process_id)

    def write_stdin(self, sb: Sandbox, process_id: str, data: str) -> None:
        self._call(sb, tasks.PROCESS_STDIN, {"process_id": process_id, "data": data})

    def stop_process(self, sb: Sandbox, process_id: str) -> Output:
        """Kill the process group, then forget the process; returns its final output."""
        self._call(sb, tasks.PROCESS_KILL, {"process_id": process_id})
        out = self.plog.read(sb.sandbox_id, process_id)
        self.plog.forget(sb.sandbox_id, process_id)
        return out

    def _call(
        self, sb: Sandbox, name: str, kwargs: dict[str, Any], timeout: float | None = None
    ) -> Any:
        reply = rpc.call(
            self.celery,
            self.r,
            sb.host_id,
            name,
            {"sandbox_id": sb.sandbox_id, **kwargs},
            timeout or self.settings.task_timeout,
        )
        return reply["value"]
