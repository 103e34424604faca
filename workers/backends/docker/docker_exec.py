"""Running one command in a container over the Docker API, with stdin and demultiplexed output.

``docker exec`` with an attached socket: the 8-byte frame header says which stream each chunk is
(1 stdout, 2 stderr). Writing to the socket is the process's stdin; a half-close ends it.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import docker

from shared.errors import SandboxTimeout

_HEADER = struct.Struct(">BxxxI")
_POLL = 1.0  # seconds a blocking socket call may take before the deadline is checked again
_SEND_POLL = 0.2  # shorter: a command that exited without reading its input is noticed soon
_MAX_STDERR = 64 << 10  # a short command's error text; more is dropped
STDOUT_STREAM = 1
STDERR_STREAM = 2


@dataclass
class Attached:
    exec_id: str
    sock: socket.socket
    holder: Any  # the SocketIO object docker returned; kept so it is not closed under us
    early: bytes = b""  # output the HTTP client read with the headers (see hijacked)


def hijacked(holder: Any) -> tuple[socket.socket, bytes]:
    """The raw socket of a hijacked engine connection (``socket=True``, ``attach_socket``)
    and the bytes of the stream that the HTTP client already read past the 101 headers.

    The client reads the headers through a buffered reader, which takes whatever the socket
    holds: when the engine's first output arrives with the headers (a command that prints at
    once, a busy worker) those bytes sit in that buffer, not in the socket, and reading the
    socket alone loses them. Taken without blocking: a raw read that would wait gives none.
    """
    sock: socket.socket = getattr(holder, "_sock", holder)
    try:
        buffered = holder._response.raw._fp.fp  # http.client's reader over the socket
    except AttributeError:
        return sock, b""
    if buffered is None:
        return sock, b""
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        waiting = buffered.peek(1)  # what is buffered; a raw read only when nothing is
        early = buffered.read1(len(waiting)) if waiting else b""
    except OSError:
        early = b""
    finally:
        sock.settimeout(timeout)
    return sock, early


def start(
    client: docker.DockerClient,
    container: str,
    argv: list[str],
    user: str,
    env: dict[str, str] | None = None,
    workdir: str | None = None,
    recv_timeout: float = 30.0,
) -> Attached:
    """Create and start an exec with stdin, stdout and stderr attached.

    Raises docker.errors.NotFound when the container is gone, docker.errors.APIError otherwise.
    """
    env_list = [f"{k}={v}" for k, v in (env or {}).items()]
    created = client.api.exec_create(
        container,
        argv,
        stdin=True,
        stdout=True,
        stderr=True,
        tty=False,
        user=user,
        environment=env_list or None,
        workdir=workdir,
    )
    holder = client.api.exec_start(created["Id"], socket=True)
    raw, early = hijacked(holder)
    raw.settimeout(recv_timeout)
    return Attached(exec_id=created["Id"], sock=raw, holder=holder, early=early)


def frames(
    sock: socket.socket, stop: Any = None, early: bytes = b""
) -> Iterator[tuple[int, bytes]]:
    """Yield ``(stream, payload)`` chunks until the exec's output ends, starting with the
    ``early`` bytes (Attached.early).

    A receive timeout only means the process is quiet; ``stop()`` returning True ends early.
    """
    buf = bytearray(early)
    yield from _complete(buf)
    while True:
        try:
            chunk = sock.recv(262144)
        except TimeoutError:
            if stop is not None and stop():
                return
            continue
        except OSError:
            return
        if not chunk:
            return
        buf += chunk
        yield from _complete(buf)


def _complete(buf: bytearray) -> Iterator[tuple[int, bytes]]:
    """The whole frames at the start of ``buf``, taken out of it."""
    pos = 0
    while len(buf) - pos >= _HEADER.size:
        stream, size = _HEADER.unpack_from(buf, pos)
        if len(buf) - pos - _HEADER.size < size:
            break
        start_at = pos + _HEADER.size
        yield stream, bytes(buf[start_at : start_at + size])
        pos = start_at + size
    del buf[:pos]


def close_stdin(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)


def exit_code(client: docker.DockerClient, exec_id: str, wait: float = 5.0) -> int | None:
    """The exec's exit code once Docker has recorded it (briefly after the stream ends)."""
    deadline = time.monotonic() + wait
    while True:
        info = client.api.exec_inspect(exec_id)
        if not info.get("Running") and info.get("ExitCode") is not None:
            return int(info["ExitCode"])
        if time.monotonic() > deadline:
            return None
        time.sleep(0.01)


def run(
    client: docker.DockerClient,
    container: str,
    argv: list[str],
    user: str,
    stdin: bytes | None = None,
    timeout: float = 60.0,
    max_stdout: int | None = None,
) -> tuple[int, bytes, bytes]:
    """Run a short command to completion: ``(exit_code, stdout, stderr)``.

    ``timeout`` bounds the whole call, stdin included, whatever the command does (a process
    stopped or blocked inside the sandbox included): the socket is polled in short steps
    against one deadline. Stdout past ``max_stdout`` bytes is dropped (the caller checks the
    length). Raises SandboxTimeout when it does not finish within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    att = start(client, container, argv, user, recv_timeout=min(timeout, _POLL))
    try:
        if stdin:
            _send(att.sock, stdin, deadline)
        close_stdin(att.sock)
        att.sock.settimeout(min(timeout, _POLL))
        out, err = bytearray(), bytearray()
        expired = lambda: time.monotonic() > deadline  # noqa: E731
        for stream, data in frames(att.sock, stop=expired, early=att.early):
            if stream == STDOUT_STREAM:
                if max_stdout is None or len(out) <= max_stdout:
                    out += data
            elif len(err) < _MAX_STDERR:
                err += data
            if time.monotonic() > deadline:
                break
        left = deadline - time.monotonic()
        if left > 0:  # the output ended (not the deadline): the command is done
            # Docker records the exit code just after the stream ends.
            code = exit_code(client, att.exec_id, wait=min(max(left, 1.0), 5.0))
            if code is not None:
                return code, bytes(out), bytes(err)
        raise SandboxTimeout(f"command did not finish within {timeout:g}s")
    finally:
        att.sock.close()
        att.holder.close()


def _send(sock: socket.socket, data: bytes, deadline: float) -> None:
    """Write ``data`` to the exec's stdin before ``deadline``. A command that exits without
    reading it all (it refused the input) closes the stream: that is not an error here, its
    exit code says what happened. Raises SandboxTimeout."""
    view = memoryview(data)
    while view:
        left = deadline - time.monotonic()
        if left <= 0:
            raise SandboxTimeout("command did not read its input in time")
        sock.settimeout(min(left, _SEND_POLL))
        try:
            sent = sock.send(view[: 1 << 20])
        except TimeoutError:
            continue
        except OSError:
            return  # EPIPE/ECONNRESET: the command ended; read what it said
        view = view[sent:]
