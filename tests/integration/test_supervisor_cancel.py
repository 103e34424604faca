"""cancel, the idle-write abort, SIGTERM and /proc reads, on the supervisor binary run on
the host as a local subprocess (raw frames where the test must see what the supervisor
sends after a cancel)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.supervisor_helpers import binary, running
from workers.backends.supervisor.channel import Channel, Output
from workers.backends.supervisor.frames import Frame, encode, read_frame


class Raw:
    """A supervisor spoken to frame by frame."""

    def __init__(self, cwd: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [str(binary()), *args], cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        assert self.proc.stdin and self.proc.stdout
        self.stdin, self.stdout = self.proc.stdin, self.proc.stdout

    def send(self, header: dict[str, Any], payload: bytes = b"") -> None:
        self.stdin.write(encode(header, payload))
        self.stdin.flush()

    def frame(self) -> Frame:
        frame = read_frame(self.stdout.read)
        assert frame is not None
        return frame

    def until(self, request_id: int, kind: str) -> list[Frame]:
        """Frames until one of ``kind`` for ``request_id`` (at most 5000)."""
        return self.until_all({(request_id, kind)})

    def until_all(self, ends: set[tuple[int, str]]) -> list[Frame]:
        """Frames until one of each (request id, type) in ``ends`` came, in any order (at
        most 5000)."""
        frames, left = [], set(ends)
        for _ in range(5000):
            frames.append(self.frame())
            left.discard((frames[-1].id, frames[-1].type))
            if not left:
                return frames
        raise AssertionError(f"never came: {left}")

    def close(self) -> int:
        self.stdin.close()
        status = self.proc.wait(5)
        self.stdout.close()
        return status


@pytest.fixture
def raw(tmp_path: Path) -> Iterator[Raw]:
    r = Raw(tmp_path, "--write-idle", "0.5")
    yield r
    assert r.close() == 0


def test_cancel_a_read(raw: Raw, tmp_path: Path) -> None:
    big = tmp_path / "big"
    with big.open("wb") as f:
        f.truncate(256 << 20)  # 1024 data frames if nobody stops it
    raw.send({"id": 5, "op": "fs.read", "path": str(big)})
    assert raw.frame().type == "data"
    raw.send({"id": 6, "op": "cancel", "target": 5})
    # The cancel's ok and the read's end come in either order (the read ends on its own
    # goroutine, at its next chunk).
    frames = raw.until_all({(5, "error"), (6, "ok")})
    assert len(frames) < 100  # the pipe held a few; the rest was never read
    ends = [f for f in frames if f.type != "data"]
    assert sorted((f.id, f.type, f.header.get("code")) for f in ends) == [
        (5, "error", "cancelled"),
        (6, "ok", None),
    ]


def _temps(d: Path) -> list[str]:
    return [p.name for p in d.iterdir() if p.name.startswith(".paddock-write-")]


def test_cancel_a_write(raw: Raw, tmp_path: Path) -> None:
    raw.send({"id": 7, "op": "fs.write", "path": str(tmp_path / "f"), "more": True}, b"half")
    raw.send({"id": 8, "op": "proc.list"})  # taken after the chunk: the temp file exists
    raw.until(8, "ok")
    assert len(_temps(tmp_path)) == 1
    raw.send({"id": 9, "op": "cancel", "target": 7})
    frames = raw.until(9, "ok")
    assert [(f.id, f.type, f.header.get("code")) for f in frames] == [
        (7, "error", "cancelled"),
        (9, "ok", None),
    ]
    assert _temps(tmp_path) == [] and not (tmp_path / "f").exists()
    # Its late chunks are dropped silently; the id then works again.
    raw.send({"id": 7, "op": "fs.write", "more": False}, b"rest")
    raw.send({"id": 7, "op": "fs.write", "path": str(tmp_path / "g")}, b"whole")
    assert raw.until(7, "ok")[-1].header["size"] == 5


def test_an_idle_write_is_aborted(raw: Raw, tmp_path: Path) -> None:
    raw.send({"id": 3, "op": "fs.write", "path": str(tmp_path / "f"), "more": True}, b"x")
    frames = raw.until(3, "error")  # after --write-idle 0.5 s without a frame
    assert frames[-1].header["code"] == "cancelled"
    assert _temps(tmp_path) == [] and not (tmp_path / "f").exists()


def test_cancel_followers_of_a_process(raw: Raw) -> None:
    raw.send({"id": 1, "op": "proc.spawn", "cmd": "while :; do echo tick; sleep 0.01; done"})
    pid = raw.frame().header["pid"]
    raw.send({"id": 2, "op": "proc.attach", "pid": pid})
    raw.until(2, "output")
    raw.send({"id": 3, "op": "cancel", "target": 2})
    raw.until(2, "error")
    raw.send({"id": 4, "op": "cancel", "target": 1})  # the spawn's own stream
    assert raw.until(1, "error")[-1].header["code"] == "cancelled"
    raw.send({"id": 5, "op": "proc.list"})
    frames = raw.until(5, "ok")
    assert {f.id for f in frames} <= {3, 4, 5}  # nothing more for 1 or 2
    listed = {p["pid"]: p for p in frames[-1].header["processes"]}
    assert listed[pid]["exited"] is False  # it runs on
    raw.send({"id": 6, "op": "proc.signal", "pid": pid, "signal": "KILL"})
    raw.until(6, "ok")


def test_client_cancels_when_a_generator_is_closed(tmp_path: Path) -> None:
    with running(tmp_path, "--write-idle", "60") as (_, ch):
        (tmp_path / "big").write_bytes(os.urandom(4 << 20))
        chunks = ch.read_file(str(tmp_path / "big"))
        next(chunks)
        chunks.close()  # type: ignore[attr-defined]  # a generator: closing it cancels

        def failing() -> Iterator[bytes]:
            yield b"x" * 1000
            raise RuntimeError("the upload broke")

        with pytest.raises(RuntimeError):
            ch.write_file(str(tmp_path / "up"), failing())
        ch.hello()  # the cancel came before this: the temp file is gone
        assert _temps(tmp_path) == [] and not (tmp_path / "up").exists()
        assert ch.stat(str(tmp_path / "big"))["size"] == 4 << 20


def test_proc_files_are_read_to_their_end(tmp_path: Path) -> None:
    with running(tmp_path) as (proc, ch):
        status = b"".join(ch.read_file("/proc/self/status"))
        assert f"Pid:\t{proc.pid}\n".encode() in status  # the supervisor's own
        assert ch.stat("/proc/self/status")["size"] == 0
        tcp = b"".join(ch.read_file("/proc/net/tcp"))
        assert tcp.startswith(b"  sl  local_address")


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def test_sigterm_ends_the_groups(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [str(binary())], cwd=tmp_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert proc.stdin and proc.stdout
    ch = Channel(proc.stdout, proc.stdin, timeout=10)
    polite = ch.spawn(["sleep", "30"])
    stubborn = ch.spawn(cmd="trap '' TERM; echo ready; sleep 30 & wait; sleep 30", stdin=False)
    first = next(stubborn.events())
    assert isinstance(first, Output) and first.data == b"ready\n"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    _, _, exit_ = polite.wait()
    assert exit_.signal == "SIGTERM"  # it got the polite one first
    deadline = time.monotonic() + 5
    while not (_gone(polite.pid) and _gone(stubborn.pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(polite.pid) and _gone(stubborn.pid)
    proc.stdin.close()
    proc.stdout.close()
