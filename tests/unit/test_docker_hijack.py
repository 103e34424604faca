"""A hijacked engine connection loses none of the output that came with its headers.

The Docker SDK's HTTP client reads the 101 answer through a buffered reader, which takes
whatever the socket holds: a command that prints at once (or a busy worker) leaves its first
frames in that buffer, not in the socket. A small engine on a Unix socket sends the headers
and the first frames in one write, so the buffer always holds them; the SDK and http.client
are the real ones.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from workers.backends.docker import docker_exec
from workers.backends.supervisor.stdio import AttachedStdio

_UPGRADED = (
    b"HTTP/1.1 101 UPGRADED\r\nContent-Type: application/vnd.docker.raw-stream\r\n"
    b"Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n"
)


def _frame(stream: int, data: bytes) -> bytes:
    return struct.pack(">BxxxI", stream, len(data)) + data


def _read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            want = int(line.split(b":", 1)[1])
            while len(body) < want:
                body += conn.recv(65536)
    return head


class _Engine:
    """Answers an exec create with an id, and an exec start or an attach with the 101 headers
    and ``first`` in one write, then ``rest`` and the end of the stream."""

    def __init__(self, path: Path, first: bytes, rest: bytes) -> None:
        self.path, self.first, self.rest = path, first, rest
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            while True:
                head = _read_request(conn)
                if not head:
                    return
                target = head.split(b" ")[1]
                if target.endswith(b"/exec"):
                    body = json.dumps({"Id": "e1"}).encode()
                    conn.sendall(
                        b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
                        + f"Content-Length: {len(body)}\r\n\r\n".encode()
                        + body
                    )
                    continue
                conn.sendall(_UPGRADED + self.first)
                conn.sendall(self.rest)
                conn.shutdown(socket.SHUT_WR)
                conn.recv(1)  # until the client closes
                return

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[tuple[docker.DockerClient, _Engine]]:
    first = _frame(2, b"4242\n") + _frame(1, b"".join(b"line%d\n" % n for n in range(200)))
    eng = _Engine(tmp_path / "engine.sock", first, _frame(1, b"done\n"))
    client = docker.DockerClient(base_url=f"unix://{eng.path}", version="1.41", timeout=10)
    yield client, eng
    client.close()
    eng.close()


def test_an_exec_keeps_the_output_that_came_with_the_headers(
    engine: tuple[docker.DockerClient, _Engine],
) -> None:
    client, _ = engine
    attached = docker_exec.start(client, "c1", ["sh"], user="user", recv_timeout=5)
    try:
        got = list(docker_exec.frames(attached.sock, early=attached.early))
    finally:
        attached.sock.close()
        attached.holder.close()
    assert got[0] == (2, b"4242\n")
    stdout = b"".join(data for stream, data in got if stream == 1)
    assert stdout == b"".join(b"line%d\n" % n for n in range(200)) + b"done\n"


def test_an_attached_supervisor_reads_what_came_with_the_headers(
    engine: tuple[docker.DockerClient, _Engine],
) -> None:
    client, _ = engine
    stdio = AttachedStdio.attach(client, "c1", "sbx", write_timeout=5)
    try:
        read = b""
        while chunk := stdio.read(65536):
            read += chunk
    finally:
        stdio.sock.close()
    assert read == b"".join(b"line%d\n" % n for n in range(200)) + b"done\n"
