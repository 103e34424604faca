"""A new worker takes over a supervisor's stdio (as after a worker's crash on the container's
attached stdio): the old one may have left half a frame on its stdin, and the new one may
start reading its stdout in the middle of a frame. The SYNC marker and hello bring both
directions back in step; the processes run on throughout and their output is followed again
from the replay ring. The binary runs on the host as a local subprocess behind a relay that
behaves like the engine's attach (tests/integration/supervisor_helpers.py)."""

from __future__ import annotations

import logging
import random
import struct
import time
from pathlib import Path

import pytest

from tests.integration.supervisor_helpers import attachable
from workers.backends.supervisor.channel import Channel, ChannelClosed, Output, SupervisorError
from workers.backends.supervisor.frames import MAX_FRAME, encode

COUNT = "for i in $(seq 1 300); do echo $i; sleep 0.005; done"
ALL = "".join(f"{i}\n" for i in range(1, 301)).encode()


def _head(ch: Channel, cmd: str, lines: int) -> tuple[int, bytes, int]:
    """Spawn cmd and read until ``lines`` lines came: (pid, the bytes, the last seq)."""
    proc = ch.spawn(cmd=cmd)
    got, seq = b"", 0
    for event in proc.events():
        assert isinstance(event, Output)
        got, seq = got + event.data, event.seq
        if got.count(b"\n") >= lines:
            break
    return proc.pid, got, seq


def _running(ch: Channel) -> dict[int, dict[str, object]]:
    return {p["pid"]: p for p in ch.processes() if not p["exited"]}


def test_new_peer_after_a_half_written_frame(tmp_path: Path) -> None:
    with attachable(tmp_path) as sup:
        old = Channel(*sup.attach(), timeout=10, resync=True)
        assert old.info is not None and old.info["processes"] == 0
        sleeper = old.spawn(["sleep", "30"])
        pid, head, seen = _head(old, COUNT, 20)
        # The old worker dies in the middle of writing a request.
        sup.detach()
        frame = encode({"id": 99, "op": "proc.spawn", "cmd": f"touch {tmp_path}/never"})
        sup.send(frame[: len(frame) // 2])
        with pytest.raises(ChannelClosed):
            old.processes()

        new = Channel(*sup.attach(), timeout=10, resync=True)
        assert new.info is not None and new.info["processes"] >= 1
        assert sleeper.pid in _running(new)
        tail, _, exit_ = new.attach(pid, after_seq=seen).wait(timeout=15)
        assert exit_.code == 0 and head + tail == ALL  # every line once, in order
        assert not (tmp_path / "never").exists()  # the half request was never run
        out, _, _ = new.spawn(["echo", "still serving"]).wait()
        assert out == b"still serving\n"
        new.attach(sleeper.pid)  # it is followed again
        new.spawn(["kill", str(sleeper.pid)]).wait()


def test_new_peer_reading_from_the_middle_of_a_frame(tmp_path: Path) -> None:
    with attachable(tmp_path) as sup:
        old = Channel(*sup.attach(), timeout=10, resync=True)
        printer = "for i in $(seq 1 400); do echo line $i; sleep 0.002; done"
        pid, head, seen = _head(old, printer, 10)
        # Output the old peer follows keeps flowing while the new one attaches (the printer's
        # was cancelled when the old peer stopped reading it).
        noise = old.spawn(cmd="while :; do echo noise; sleep 0.001; done")
        sup.detach()
        # The new peer's first bytes are somewhere inside a frame of the running output.
        started = time.monotonic()
        new = Channel(*sup.attach(skip=random.randint(1, 2000)), timeout=10, resync=True)
        print(f"\nresynchronised in {time.monotonic() - started:.3f} s")
        assert sup.dropped > 0
        tail, _, exit_ = new.attach(pid, after_seq=seen).wait(timeout=20)
        expected = "".join(f"line {i}\n" for i in range(1, 401)).encode()
        assert exit_.code == 0 and head + tail == expected
        new.attach(noise.pid).signal("KILL")


def test_garbage_length_prefix_kills_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with attachable(tmp_path) as sup:
        ch = Channel(*sup.attach(), timeout=10)
        sleeper = ch.spawn(["sleep", "30"])
        with caplog.at_level(logging.WARNING):
            sup.send(struct.pack(">I", MAX_FRAME + 1) + b"garbage" * 10)
            # Requests are skipped until a SYNC marker: this one is never answered.
            with pytest.raises(TimeoutError):
                ch.call("proc.list", timeout=1)
        assert any("frame length" in r.getMessage() for r in caplog.records)
        sup.detach()
        again = Channel(*sup.attach(), timeout=10, resync=True)
        assert sleeper.pid in _running(again)
        assert again.hello()["processes"] == 1
        again.attach(sleeper.pid).signal("KILL")


def test_a_frame_that_never_completes_is_dropped(tmp_path: Path) -> None:
    """A prefix that promises 100 kB of which 10 bytes came: after the frame timeout the
    supervisor discards it and waits for a SYNC marker; the new peer's resends find it."""
    with attachable(tmp_path, "--frame-timeout", "1.5") as sup:
        sup.send(struct.pack(">I", 100_000) + b"0123456789")
        ch = Channel(*sup.attach(), timeout=10, resync=True)
        assert ch.info is not None and ch.info["processes"] == 0
        assert ch.stat(str(tmp_path))["type"] == "dir"


def test_hello_on_a_normal_channel(tmp_path: Path) -> None:
    with attachable(tmp_path) as sup:
        ch = Channel(*sup.attach(), timeout=10)
        info = ch.hello()
        assert info["pid"] == sup.proc.pid and info["version"] == "2"
        assert info["processes"] == 0 and info["uptime_s"] >= 0
        for nonce in ("short", "x" * 65, "not-alnum-but-long-enough"):
            with pytest.raises(SupervisorError) as err:
                ch.call("hello", nonce=nonce)
            assert err.value.code == "invalid"
