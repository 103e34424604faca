"""A sandbox's attached stdio as the two byte streams a supervisor Channel reads and writes.

The supervisor is the container's command; the worker reaches it through the engine's attach
endpoint (``stdin``, ``stdout``, ``stderr``, ``stream``), never through anything inside the
sandbox's filesystem or network: the sandbox gets no path, socket or port on the host to aim
at. Without a TTY the engine multiplexes stdout and stderr on the one socket, each chunk behind
an 8-byte header (stream, length); ``read`` takes stdout's bytes out of it and logs what the
supervisor writes on stderr (bounded: the sandbox controls it).

Writes have a deadline: a supervisor that stops reading (its tenant can SIGSTOP it, it runs as
the sandbox user) must not hold a worker thread. A write that cannot finish in time raises
OSError, which ends the channel (the backend then reports the sandbox failed).
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import struct
import time
from typing import Any

import docker

from workers.backends.docker import docker_exec

logger = logging.getLogger(__name__)

_HEADER = struct.Struct(">BxxxI")
_STDOUT, _STDERR = 1, 2
_RECV = 256 << 10
_STDERR_LOG = 4 << 10  # bytes of the supervisor's stderr logged per sandbox; the rest dropped


class AttachedStdio:
    """Reader and writer of one container's attached stdio (``read``/``write``/``flush``)."""

    def __init__(
        self,
        sandbox_id: str,
        sock: socket.socket,
        holder: Any,
        write_timeout: float,
        early: bytes = b"",
    ):
        self.sandbox_id = sandbox_id
        self.sock = sock
        self.holder = holder  # docker's SocketIO: kept so it is not closed under us
        self.write_timeout = write_timeout
        # Received, not yet demultiplexed; first what the HTTP client read with the headers.
        self._buf = bytearray(early)
        self._out = bytearray()  # stdout bytes not yet read
        self._logged = 0
        self._eof = False
        self._demux()

    @classmethod
    def attach(
        cls, client: docker.DockerClient, container: str, sandbox_id: str, write_timeout: float
    ) -> AttachedStdio:
        """Attach to the container's stdio. Raises docker.errors.APIError (NotFound)."""
        holder = client.api.attach_socket(
            container, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}
        )
        sock, early = docker_exec.hijacked(holder)
        sock.settimeout(None)  # the channel's reader thread waits on it as long as it lives
        return cls(sandbox_id, sock, holder, write_timeout, early)

    # -- the supervisor's stdout -------------------------------------------------------------
    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes of the supervisor's stdout; b"" once the stream ended."""
        while not self._out and not self._eof:
            self._fill()
        chunk = bytes(self._out[:n])
        del self._out[:n]
        return chunk

    def _fill(self) -> None:
        try:
            data = self.sock.recv(_RECV)
        except OSError:
            data = b""
        if not data:
            self._eof = True
            return
        self._buf += data
        self._demux()

    def _demux(self) -> None:
        """Move the whole frames received so far to stdout (or the log)."""
        pos = 0
        while len(self._buf) - pos >= _HEADER.size:
            stream, size = _HEADER.unpack_from(self._buf, pos)
            start = pos + _HEADER.size
            if len(self._buf) - start < size:
                break
            if stream == _STDOUT:
                self._out += self._buf[start : start + size]
            elif stream == _STDERR:
                self._log(bytes(self._buf[start : start + size]))
            pos = start + size
        del self._buf[:pos]

    def _log(self, data: bytes) -> None:
        if self._logged >= _STDERR_LOG:
            return
        data = data[: _STDERR_LOG - self._logged]
        self._logged += len(data)
        text = data.decode("utf-8", "replace").strip()
        if text:
            logger.warning("sandbox %s: supervisor says: %s", self.sandbox_id, text[:500])

    # -- the supervisor's stdin --------------------------------------------------------------
    def write(self, data: bytes) -> int:
        """Send all of ``data`` within ``write_timeout``. Raises OSError (TimeoutError)."""
        deadline = time.monotonic() + self.write_timeout
        view = memoryview(data)
        while view:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"the supervisor did not read its input for {self.write_timeout:g}s"
                )
            # poll, not select: a busy worker's descriptors go past select's 1024.
            poller = select.poll()
            poller.register(self.sock, select.POLLOUT)
            if not poller.poll(left * 1000):
                continue
            try:
                sent = self.sock.send(view, socket.MSG_DONTWAIT)
            except BlockingIOError:
                continue
            view = view[sent:]
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        """Let go of the attach connection. The container's stdin stays open (the engine was
        told stdin_once=False), so the supervisor goes on and a later attach finds it."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()
        with contextlib.suppress(OSError):
            self.holder.close()
