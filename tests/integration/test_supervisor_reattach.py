"""Reattaching to a supervisor's process (proc.attach): the replay ring, then live output,
exactly once and in order; the truncated case with a tiny ring. The binary runs on the host
as a local subprocess (no container)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.supervisor_helpers import binary, running
from workers.backends.supervisor.channel import Channel, Exit, Output, SupervisorError


@pytest.fixture
def ch(tmp_path: Path) -> Iterator[Channel]:
    with running(tmp_path) as (_, channel):
        yield channel


COUNT = "for i in $(seq 1 300); do echo $i; sleep 0.003; done"
ALL = "".join(f"{i}\n" for i in range(1, 301)).encode()


def test_attach_replays_then_follows(ch: Channel) -> None:
    first = ch.spawn(cmd=COUNT)
    head: list[bytes] = []
    seen = 0
    events = first.events()
    for event in events:
        assert isinstance(event, Output)
        head.append(event.data)
        seen = event.seq
        if b"".join(head).count(b"\n") >= 40:
            break
    events.close()  # stop following: this request's later frames are dropped
    listed = {p["pid"]: p for p in ch.processes()}[first.pid]
    assert listed["exited"] is False and listed["last_seq"] >= seen

    again = ch.attach(first.pid, after_seq=seen)  # a second request on the same channel
    assert (again.truncated, again.pid, again.pgid) == (False, first.pid, first.pid)
    tail, _, exit_ = again.wait(timeout=15)
    assert exit_.code == 0
    assert b"".join(head) + tail == ALL  # N+1..300 exactly once, in order

    # After the exit: the whole ring, then the exit again; list says it exited.
    replay = ch.attach(first.pid, after_seq=0)
    out, _, exit2 = replay.wait()
    assert (out, exit2.code, replay.truncated) == (ALL, 0, False)
    listed = {p["pid"]: p for p in ch.processes()}[first.pid]
    assert listed["exited"] is True and listed["last_seq"] >= seen
    with pytest.raises(SupervisorError) as err:
        ch.attach(first.pid, after_seq=listed["last_seq"] + 1)
    assert err.value.code == "invalid"
    with pytest.raises(SupervisorError) as err:
        ch.attach(999_999_999)
    assert err.value.code == "no_such_process"


def test_two_followers_of_a_running_process(ch: Channel) -> None:
    proc = ch.spawn(cmd="read x; echo got $x", stdin=True)
    follower = ch.attach(proc.pid)
    proc.write_stdin(b"it\n", eof=True)
    out1, _, exit1 = proc.wait()
    out2, _, exit2 = follower.wait()
    assert out1 == out2 == b"got it\n" and exit1.code == exit2.code == 0


def test_truncated_with_a_tiny_ring(tmp_path: Path) -> None:
    with running(tmp_path, "--ring-bytes", "64") as (_, ch):
        proc = ch.spawn(cmd="for i in $(seq 1 50); do echo $i; sleep 0.002; done")
        full, _, _ = proc.wait()
        assert full == "".join(f"{i}\n" for i in range(1, 51)).encode()
        late = ch.attach(proc.pid, after_seq=0)
        assert late.truncated and late.first_seq > 1
        events = list(late.events())
        outputs = [e for e in events if isinstance(e, Output)]
        assert isinstance(events[-1], Exit) and events[-1].code == 0
        assert outputs and outputs[0].seq == late.first_seq
        kept = b"".join(e.data for e in outputs)
        assert 0 < len(kept) <= 64 and full.endswith(kept)


def test_bad_ring_flag(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(binary()), "--ring-bytes", "-1"], cwd=tmp_path, capture_output=True, check=False
    )
    assert done.returncode == 64


def test_ring_of_tiny_frames_is_bounded(tmp_path: Path) -> None:
    """A process writing a byte at a time: each frame counts at least 64 bytes in the ring, so
    the frames kept stay within ring-bytes / 64 however small they are."""
    ring = 4096
    writer = "import os, time\nfor _ in range(2000): os.write(1, b'x'); time.sleep(0.0003)"
    with running(tmp_path, "--ring-bytes", str(ring)) as (_, ch):
        proc = ch.spawn([sys.executable, "-c", writer])
        full, _, _ = proc.wait()
        assert full == b"x" * 2000
        late = ch.attach(proc.pid)
        outputs = [e for e in late.events() if isinstance(e, Output)]
        last = outputs[-1].seq
        assert last > ring // 64, "the writes were coalesced: nothing to bound"
        assert len(outputs) <= ring // 64 and last - outputs[0].seq + 1 == len(outputs)
