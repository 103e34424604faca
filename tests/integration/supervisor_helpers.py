"""The supervisor binary run on the host as a local subprocess (no container), for the
test_supervisor_* files: built once per test process (and cached by a hash of its source)."""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from workers.backends.supervisor.build import build
from workers.backends.supervisor.channel import Channel

binary = functools.cache(build)


@contextmanager
def running(cwd: Path, *args: str) -> Iterator[tuple[subprocess.Popen[bytes], Channel]]:
    """A supervisor started in ``cwd`` with ``args``, and its channel. On leaving, its stdin is
    closed and it must exit with status 0."""
    proc = subprocess.Popen(
        [str(binary()), *args], cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert proc.stdin and proc.stdout
    channel = Channel(proc.stdout, proc.stdin, timeout=10)
    try:
        yield proc, channel
    finally:
        channel.close()
    assert proc.wait(5) == 0


class Attachable:
    """A supervisor whose stdio outlives its peers, like a container's attached stdio: its
    stdin stays open, and a relay thread hands its stdout to the peer attached at the time or
    drops it while none is (as the engine does). ``attach`` gives a new peer its two streams;
    ``detach`` ends the current peer's reader (EOF), as a worker's crash would."""

    def __init__(self, cwd: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [str(binary()), *args], cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        assert self.proc.stdin and self.proc.stdout
        self.stdin = self.proc.stdin
        self._out = self.proc.stdout.fileno()
        self._lock = threading.Lock()
        self._peer: int | None = None  # the write end of the attached peer's stdout pipe
        self._skip = 0  # bytes still to drop after an attach (the peer starts mid-frame)
        self.dropped = 0
        self._relay = threading.Thread(target=self._run, daemon=True)
        self._relay.start()

    def _run(self) -> None:
        while data := os.read(self._out, 65536):
            with self._lock:
                skip = min(self._skip, len(data))
                self._skip -= skip
                self.dropped += skip
                data = data[skip:]
                if self._peer is None:
                    self.dropped += len(data)
                    continue
                with contextlib.suppress(OSError):
                    os.write(self._peer, data)
        self.detach()

    def attach(self, skip: int = 0) -> tuple[IO[bytes], IO[bytes]]:
        """A new peer's (reader, writer). With ``skip``, the attach happens that many bytes
        into the supervisor's output (which must be flowing): they are dropped before this
        returns, so the peer's first byte is most likely inside a frame."""
        r, w = os.pipe()
        with self._lock:
            assert self._peer is None, "detach the old peer first"
            self._peer, self._skip = w, skip
        deadline = time.monotonic() + 10
        while self._skip and time.monotonic() < deadline:
            time.sleep(0.005)
        assert not self._skip, "the supervisor's output did not flow"
        return os.fdopen(r, "rb"), self.stdin

    def detach(self) -> None:
        with self._lock:
            if self._peer is not None:
                os.close(self._peer)
                self._peer = None

    def send(self, data: bytes) -> None:
        """Raw bytes on the supervisor's stdin (a peer's half frame, garbage)."""
        self.stdin.write(data)
        self.stdin.flush()

    def stop(self) -> int:
        """Close its stdin (it kills its processes and exits); its exit status."""
        self.detach()
        with contextlib.suppress(OSError):
            self.stdin.close()
        try:
            return self.proc.wait(5)
        finally:
            self._relay.join(5)


@contextmanager
def attachable(cwd: Path, *args: str) -> Iterator[Attachable]:
    """An Attachable supervisor; on leaving it must exit with status 0 once stdin closes."""
    sup = Attachable(cwd, *args)
    try:
        yield sup
    finally:
        status = sup.stop()
    assert status == 0
