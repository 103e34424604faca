"""Processes on a pseudo-terminal (proc.spawn with pty, proc.resize), the supervisor binary
run on the host as a local subprocess."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.supervisor_helpers import running
from workers.backends.supervisor.channel import Channel, Exit, SupervisorError


@pytest.fixture
def ch(tmp_path: Path) -> Iterator[Channel]:
    with running(tmp_path) as (_, channel):
        yield channel


def test_stty_size_then_resize(ch: Channel) -> None:
    proc = ch.spawn(cmd="test -t 0 && test -t 1 && stty size; read x; stty size", pty=(80, 24))
    seen = b""
    events = proc.events()
    for event in events:
        assert not isinstance(event, Exit), seen
        assert event.stream == "pty"
        seen += event.data
        if b"24 80\r\n" in seen:
            break
    proc.resize(100, 30)
    proc.write_stdin(b"go\n")
    for event in events:
        if isinstance(event, Exit):
            assert event.code == 0
            break
        seen += event.data
    assert seen.index(b"24 80\r\n") < seen.index(b"30 100\r\n")
    with pytest.raises(SupervisorError) as err:
        proc.resize(10, 10)
    assert err.value.code == "no_such_process"


def test_pty_eof_and_no_pty_resize(ch: Channel) -> None:
    proc = ch.spawn(["cat"], pty=(40, 10))
    proc.write_stdin(b"abc\n")
    events = proc.events(timeout=30)
    out = b""
    # cat has the line (its echo came back twice: the terminal's echo and cat's own output)
    # before the ^D, so the ^D lands at the start of a fresh line of a running reader.
    for event in events:
        assert not isinstance(event, Exit), event
        out += event.data
        if out.count(b"abc\r\n") >= 2:
            break
    proc.close_stdin()  # ^D at the start of a line: cat sees end of input
    for event in events:
        if isinstance(event, Exit):
            exit_ = event
            break
        out += event.data
    assert exit_.code == 0, exit_
    plain = ch.spawn(["sleep", "5"])
    with pytest.raises(SupervisorError) as e:
        plain.resize(10, 10)
    assert e.value.code == "invalid"
    plain.signal("KILL")
    plain.wait()
    with pytest.raises(SupervisorError) as e:
        ch.spawn(["true"], pty=(0, 10))
    assert e.value.code == "invalid"
