"""The supervisor binary run on the host as a local subprocess (no container), for the
test_supervisor_* files: built once per test process (and cached by a hash of its source)."""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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
