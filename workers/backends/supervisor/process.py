"""A process the sandbox's supervisor started: the ProcessHandle of workers/backends/base.py
over a supervisor Channel.

Output frames carry a seq (1, 2, ... per process); the handle keeps the last one it handed
out, so when the channel is lost (the attach connection dropped, the worker's own write timed
out) it follows the process again on a new channel from the supervisor's replay ring with
``proc.attach(after_seq)``: nothing is lost or repeated while the ring holds it. A restarted
worker adopts a running process the same way (``SupervisorBackend.adopt``).
"""

from __future__ import annotations

import logging
import signal as signals
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from shared.errors import SandboxError
from shared.output import PTY, STDERR, STDOUT
from workers.backends.supervisor.channel import (
    ChannelClosed,
    Exit,
    Output,
    Process,
    SupervisorError,
)

if TYPE_CHECKING:
    from workers.backends.supervisor.backend import SupervisorBackend

logger = logging.getLogger(__name__)

# How long a kill waits for the supervisor's exit report before it gives up on it.
_EXIT_WAIT = 1.0
# Output frames already here are joined up to this many bytes (the supervisor's read size),
# so a process writing a byte at a time costs a stored entry per read of the pump, not one
# per byte (``frames``).
_JOIN = 64 << 10
_GAVE_UP = "killed_from_host"


class SupervisorProcess:
    """One process of a sandbox's supervisor; see ProcessHandle for the contract."""

    def __init__(self, backend: SupervisorBackend, sandbox_id: str, proc: Process) -> None:
        self.backend = backend
        self.sandbox_id = sandbox_id
        self._proc = proc
        self._poll = 30.0
        self._exit: Exit | None = None
        self._exited = threading.Event()
        self._seq = proc.first_seq - 1 if proc.truncated else proc._seq
        # What came after the frames ``_take`` joined (another stream's, the exit, an error).
        self._held: Output | Exit | Exception | None = None
        # Output the ring no longer had when the process was followed again (bytes unknown).
        self.truncated = proc.truncated

    @property
    def pgid(self) -> int | None:
        return self._proc.pgid

    @property
    def ref(self) -> str:
        """What a restarted worker needs to find the process again (its pid in the sandbox)."""
        return str(self._proc.pid)

    @property
    def seq(self) -> int:
        """The seq of the last output chunk handed out (0: none yet)."""
        return self._seq

    def frames(self, stop: Callable[[], bool]) -> Iterator[tuple[str, bytes]]:
        """Consecutive frames of one stream that are already here come as one chunk. Raises
        SandboxError when the process cannot be followed any more (the supervisor died or
        lied, or its ring lost output it had not sent)."""
        while True:
            try:
                event = self._take()
            except TimeoutError:
                if stop():
                    return
                continue
            except SupervisorError as exc:  # ChannelClosed, overflow, or kill's give-up
                if exc.code == _GAVE_UP:
                    self._exit = Exit(None, "SIGKILL", False, 0.0, 0.0, 0.0)
                    return
                self._follow_again(exc)
                continue
            if isinstance(event, Exit):
                self._exit = event
                self._exited.set()
                self._proc.release()
                return
            self._seq = event.seq
            yield self._kind(event), event.data

    def _take(self) -> Output | Exit:
        """The next event (waiting up to the poll interval), an output frame joined with the
        frames of its stream that follow it and are already here (up to _JOIN bytes). Raises
        as Process.next_event."""
        event, self._held = self._held, None
        if event is None:
            event = self._proc.next_event(self._poll)
        elif isinstance(event, Exception):
            raise event
        if isinstance(event, Exit):
            return event
        parts, size, seq = [event.data], len(event.data), event.seq
        while size < _JOIN and self._proc.ready():
            try:
                more = self._proc.next_event(0)
            except (SupervisorError, TimeoutError) as exc:  # raised once these are handed out
                self._held = exc
                break
            if (
                isinstance(more, Exit)
                or more.stream != event.stream
                or size + len(more.data) > _JOIN
            ):
                self._held = more
                break
            parts.append(more.data)
            size += len(more.data)
            seq = more.seq
        if len(parts) == 1:
            return event
        return Output(event.stream, seq, b"".join(parts))

    @staticmethod
    def _kind(event: Output) -> str:
        return {"stderr": STDERR, "pty": PTY}.get(event.stream, STDOUT)

    def _follow_again(self, why: SupervisorError) -> None:
        """Follow the process on a (new) channel from the last seq handed out. Raises
        SandboxError when that cannot be done, or when output was dropped meanwhile."""
        self._proc.release()
        logger.info(
            "sandbox %s process %s: following again after seq %d (%s)",
            self.sandbox_id,
            self._proc.pid,
            self._seq,
            why,
        )
        try:
            proc = self.backend.attach(self.sandbox_id, self._proc.pid, self._seq)
        except (SupervisorError, SandboxError) as exc:
            raise SandboxError(f"lost the process's output: {exc}") from exc
        if proc.truncated:
            proc.release()
            raise SandboxError("lost the process's output: the supervisor no longer had it")
        self._proc = proc

    def ready(self) -> bool:
        return self._held is not None or self._proc.ready()

    def poll_every(self, seconds: float) -> None:
        self._poll = seconds

    def write_stdin(self, data: bytes) -> None:
        try:
            self._proc.write_stdin(data)
        except (SupervisorError, TimeoutError) as exc:
            raise OSError(f"stdin: {exc}") from exc

    def exit_code(self) -> int | None:
        """The exit code, or 128 + the signal's number for a process a signal ended (what a
        shell reports)."""
        if self._exit is None:
            return None
        if self._exit.code is not None:
            return self._exit.code
        name = self._exit.signal or ""
        try:
            return 128 + int(signals.Signals[name])
        except KeyError:
            return None

    def kill(self, timeout: float) -> None:
        # From the host first: the supervisor runs as the tenant's user, which can stop it.
        if self.backend.kill_group_from_host(self.sandbox_id, self._proc.pgid):
            # The group is dead. A supervisor that does not report it soon (its tenant
            # stopped it) is not waited for: the process ends as killed.
            if not self._exited.wait(min(timeout, _EXIT_WAIT)):
                self._proc._waiter.end(SupervisorError(_GAVE_UP, "killed from the host"))
            return
        exc: Exception
        try:
            self._proc.signal("SIGKILL")
        except (SupervisorError, TimeoutError) as first:
            exc = first
            if isinstance(exc, SupervisorError) and exc.code == "no_such_process":
                return
            if isinstance(exc, ChannelClosed):
                # The channel is gone; a new one still reaches the process.
                try:
                    self.backend.signal(self.sandbox_id, self._proc.pid, "SIGKILL")
                    return
                except (SupervisorError, SandboxError, TimeoutError) as again:
                    exc = again
            logger.warning(
                "sandbox %s: kill of group %s failed: %s", self.sandbox_id, self._proc.pgid, exc
            )

    def close(self) -> None:
        self._proc.release()

    def signal(self, name: str) -> None:
        self.backend.signal(self.sandbox_id, self._proc.pid, name)

    def resize(self, cols: int, rows: int) -> None:
        pid = self._proc.pid
        self.backend._call(
            self.sandbox_id, lambda ch: ch.call("proc.resize", pid=pid, cols=cols, rows=rows)
        )

    def close_stdin(self) -> None:
        try:
            self._proc.close_stdin()
        except (SupervisorError, TimeoutError) as exc:
            raise OSError(f"stdin: {exc}") from exc


class NotStarted:
    """A process the system refused to start: its one line of stderr, then exit code 126."""

    pgid = None
    ref = ""
    seq = 0

    def __init__(self, message: str) -> None:
        self.message = message

    def frames(self, stop: Callable[[], bool]) -> Iterator[tuple[str, bytes]]:
        yield STDERR, self.message.encode() + b"\n"

    def ready(self) -> bool:
        return False

    def poll_every(self, seconds: float) -> None:
        pass

    def write_stdin(self, data: bytes) -> None:
        raise OSError("the process did not start")

    def exit_code(self) -> int | None:
        return 126

    def kill(self, timeout: float) -> None:
        pass

    def close(self) -> None:
        pass

    def signal(self, name: str) -> None:
        pass

    def resize(self, cols: int, rows: int) -> None:
        pass

    def close_stdin(self) -> None:
        raise OSError("the process did not start")
