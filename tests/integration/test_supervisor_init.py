"""The supervisor's --init mode run on the host as a local subprocess: it is not PID 1 here,
but as a child subreaper it gets the orphans of its process groups and must reap them while
the exit statuses of the processes it spawned stay right."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.supervisor_helpers import running
from workers.backends.supervisor.channel import Channel


@pytest.fixture
def sup(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Channel]]:
    with running(tmp_path, "--init") as started:
        yield started


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid), or None once the process is reaped."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return fields[0], int(fields[1])


def _zombie_children(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) and st == ("Z", parent):
            found.append(int(entry.name))
    return found


# The inner shell backgrounds a sleep and exits at once: the sleep is a double-forked orphan.
ORPHAN = "sh -c 'sleep {t} </dev/null >/dev/null 2>&1 & echo $!'"


def test_orphan_is_reaped_and_exit_codes_stay_right(
    sup: tuple[subprocess.Popen[bytes], Channel],
) -> None:
    proc, ch = sup
    out, _, exit_ = ch.spawn(cmd=ORPHAN.format(t=0.8) + "; exit 7").wait()
    assert exit_.code == 7
    orphan = int(out)
    st = _stat(orphan)
    assert st is not None and st[1] == proc.pid, "the orphan was not reparented to --init"
    deadline = time.monotonic() + 5
    while _stat(orphan) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _stat(orphan) is None, f"the orphan stayed: {_stat(orphan)}"

    # Many spawned processes exiting while orphans die around them: every status is theirs.
    procs = [ch.spawn(cmd=ORPHAN.format(t=0.05) + f" >/dev/null; exit {i}") for i in range(30)]
    killed = ch.spawn(cmd="sleep 0.1; kill -TERM $$")
    for i, p in enumerate(procs):
        _, _, e = p.wait()
        assert (e.code, e.signal) == (i, None)
    _, _, e = killed.wait()
    assert (e.code, e.signal) == (None, "SIGTERM")
    deadline = time.monotonic() + 3
    while _zombie_children(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _zombie_children(proc.pid) == []
