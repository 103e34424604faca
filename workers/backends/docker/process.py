"""A process started in a Docker sandbox: the ProcessHandle of workers/backends/base.py over an
attached ``docker exec`` socket.

The exec runs driver.py's ``_SPAWN`` script, whose first stderr line is its pid (the process's
group, since ``docker exec`` makes it a group leader); ``frames`` takes that line off the output
and keeps the pid for ``kill``.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Callable, Iterator

import docker.errors

from shared.errors import BackendUnsupported, SandboxError, SandboxGone
from shared.output import STDERR, STDOUT
from workers.backends.docker import docker_exec
from workers.backends.docker.driver import DockerDriver

logger = logging.getLogger(__name__)


class DockerProcess:
    """One spawned process; see ProcessHandle for the contract."""

    def __init__(
        self,
        driver: DockerDriver,
        sandbox_id: str,
        attached: docker_exec.Attached,
        timeout: float = 0.0,
    ):
        self.driver = driver
        self.sandbox_id = sandbox_id
        self.attached = attached
        self._pgid: int | None = None
        self._pgid_known = threading.Event()
        # SpawnOptions.timeout: the worker kills the group (an exec has no deadline of its own).
        self._timer: threading.Timer | None = None
        if timeout > 0:
            self._timer = threading.Timer(timeout, self._time_out)
            self._timer.daemon = True
            self._timer.start()

    def _time_out(self) -> None:
        logger.info("sandbox %s: a process ran past its timeout; killing it", self.sandbox_id)
        try:
            self.kill(5.0)
        except Exception:
            logger.exception("sandbox %s: killing a timed-out process failed", self.sandbox_id)

    @property
    def pgid(self) -> int | None:
        return self._pgid

    # An exec's output cannot be followed again once its socket is gone.
    ref = ""
    seq = 0

    def frames(self, stop: Callable[[], bool]) -> Iterator[tuple[str, bytes]]:
        first_err = bytearray()
        for stream, data in docker_exec.frames(
            self.attached.sock, stop=stop, early=self.attached.early
        ):
            if self._pgid is None and stream == docker_exec.STDERR_STREAM:
                # The first stderr line is the spawn script's pid report, not user output.
                first_err += data
                if b"\n" not in first_err:
                    continue
                head, _, data = bytes(first_err).partition(b"\n")
                self._pgid = int(head) if head.strip().isdigit() else -1
                self._pgid_known.set()
                if not data:
                    continue
            yield (STDOUT if stream == docker_exec.STDOUT_STREAM else STDERR), data

    def ready(self) -> bool:
        return False

    def poll_every(self, seconds: float) -> None:
        self.attached.sock.settimeout(seconds)

    def write_stdin(self, data: bytes) -> None:
        self.attached.sock.sendall(data)

    def exit_code(self) -> int | None:
        # The exec client gives up within the file-operation deadline: a tenant can wedge its
        # own container's engine calls.
        return docker_exec.exit_code(self.driver.exec_client, self.attached.exec_id)

    def kill(self, timeout: float) -> None:
        if self._pgid_known.wait(timeout) and self._pgid is not None:
            try:
                self.driver.kill_group(self.sandbox_id, self._pgid)
            except (SandboxGone, docker.errors.APIError) as exc:
                logger.warning(
                    "sandbox %s: kill of group %s failed: %s", self.sandbox_id, self._pgid, exc
                )

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._pgid_known.set()  # nobody waits for a pgid that will not come
        with contextlib.suppress(OSError):
            self.attached.sock.close()
            self.attached.holder.close()

    def signal(self, name: str) -> None:
        if not (self._pgid_known.wait(5.0) and self._pgid and self._pgid > 0):
            raise SandboxError("the process's group is not known")
        self.driver.kill_group(self.sandbox_id, self._pgid, name.removeprefix("SIG"))

    def resize(self, cols: int, rows: int) -> None:
        raise BackendUnsupported(
            "terminals are not supported by the docker backend (PADDOCK_SANDBOX_BACKEND="
            "supervisor is)"
        )

    def close_stdin(self) -> None:
        self.attached.sock.shutdown(socket.SHUT_WR)
