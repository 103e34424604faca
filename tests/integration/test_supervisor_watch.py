"""fs.watch on the supervisor binary run on the host as a local subprocess: events for
changes in a directory, subdirectories followed (also those created later), the end when the
directory goes away, bounds, and a kernel queue overflow reported instead of memory growing."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.supervisor_helpers import binary, running
from workers.backends.supervisor.channel import Channel, SupervisorError, Watch, WatchEvent
from workers.backends.supervisor.frames import encode, read_frame


@pytest.fixture
def ch(tmp_path: Path) -> Iterator[Channel]:
    with running(tmp_path) as (_, channel):
        yield channel


def _until(watch: Watch, wanted: set[tuple[str, str]]) -> list[WatchEvent]:
    """Events until every (kind, path) in ``wanted`` came, or the watch ended (an empty
    ``wanted``: until it ends). 10 s without an event fails."""
    seen: list[WatchEvent] = []
    while not watch.ended:
        if wanted and wanted <= {(e.kind, e.path) for e in seen}:
            return seen
        got = next(watch.events(timeout=10), None)
        assert got is not None or watch.ended, (
            f"no more events; missing {wanted - {(e.kind, e.path) for e in seen}}"
        )
        if got is not None:
            seen.append(got)
    assert wanted <= {(e.kind, e.path) for e in seen}
    return seen


def test_events_in_one_directory(ch: Channel, tmp_path: Path) -> None:
    d = tmp_path / "w"
    d.mkdir()
    with ch.watch(str(d)) as watch:
        assert watch.dirs == 1
        (d / "a").write_bytes(b"x")
        (d / "a").chmod(0o600)
        (d / "a").rename(d / "b")
        (d / "b").unlink()
        (d / "sub").mkdir()
        a, b, sub = str(d / "a"), str(d / "b"), str(d / "sub")
        wanted = {("create", a), ("write", a), ("chmod", a), ("rename", a), ("create", b)}
        events = _until(watch, wanted | {("remove", b), ("create", sub)})
        kinds = [(e.kind, e.path) for e in events]
        assert kinds.index(("create", a)) < kinds.index(("rename", a)) < kinds.index(("remove", b))
        assert [e.is_dir for e in events if e.path == sub] == [True]
        (d / "sub" / "deep").write_bytes(b"")  # not recursive: not reported
        (d / "c").write_bytes(b"")
        later = _until(watch, {("create", str(d / "c"))})
        assert all(not e.path.startswith(sub + "/") for e in later)


def test_recursive_follows_new_subdirectories(ch: Channel, tmp_path: Path) -> None:
    d = tmp_path / "r"
    (d / "old").mkdir(parents=True)
    with ch.watch(str(d), recursive=True) as watch:
        assert watch.dirs == 2
        (d / "old" / "f").write_bytes(b"1")
        (d / "x" / "y" / "z").mkdir(parents=True)  # faster than the watches can be added
        (d / "x" / "y" / "z" / "f").write_bytes(b"2")
        (d / "old").rename(d / "moved")
        (d / "moved" / "g").write_bytes(b"3")
        wanted = {
            ("create", str(d / "old" / "f")),
            ("create", str(d / "x" / "y" / "z")),
            ("create", str(d / "x" / "y" / "z" / "f")),
            ("rename", str(d / "old")),
            ("create", str(d / "moved")),
            ("create", str(d / "moved" / "g")),
        }
        _until(watch, wanted)


def test_the_watch_ends_when_the_directory_goes(ch: Channel, tmp_path: Path) -> None:
    d = tmp_path / "gone"
    d.mkdir()
    watch = ch.watch(str(d))
    d.rmdir()
    _until(watch, set())
    assert watch.ended
    assert ch.stat(str(tmp_path))["type"] == "dir"  # still serving


def test_bad_watches(ch: Channel, tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    (tmp_path / "link").symlink_to(tmp_path)
    for path, code in [
        (tmp_path / "missing", "not_found"),
        (tmp_path / "file", "not_dir"),
        (tmp_path / "link", "not_dir"),  # a symlink is not followed
    ]:
        with pytest.raises(SupervisorError) as err:
            ch.watch(str(path))
        assert err.value.code == code
    watches = [ch.watch(str(tmp_path)) for _ in range(64)]
    with pytest.raises(SupervisorError) as err:
        ch.watch(str(tmp_path))
    assert err.value.code == "busy"
    for w in watches:
        w.close()
    ch.hello()  # the cancels are taken in order: all 64 slots free again (eventually)
    for _ in range(50):
        try:
            ch.watch(str(tmp_path)).close()
            break
        except SupervisorError:
            continue
    else:
        raise AssertionError("closed watches did not free their slots")


def test_too_many_directories(ch: Channel, tmp_path: Path) -> None:
    for i in range(4100):
        (tmp_path / "many" / str(i)).mkdir(parents=True)
    with pytest.raises(SupervisorError) as err:
        ch.watch(str(tmp_path / "many"), recursive=True)
    assert err.value.code == "busy"


def test_a_queue_overflow_is_reported(tmp_path: Path) -> None:
    """The supervisor writes events only as fast as its peer reads them: a peer that does not
    read leaves them in the kernel's bounded queue, whose overflow comes as one event."""
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    d = tmp_path / "flood"
    d.mkdir()
    proc = subprocess.Popen(
        [str(binary())], cwd=tmp_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert proc.stdin and proc.stdout
    try:
        proc.stdin.write(encode({"id": 1, "op": "fs.watch", "path": str(d)}))
        proc.stdin.flush()
        first = read_frame(proc.stdout.read)
        assert first is not None and first.type == "watching"
        for i in range(limit + 5000):  # more than the pipe and the queue hold
            os.close(os.open(d / str(i), os.O_CREAT | os.O_WRONLY, 0o644))
        kinds: list[str] = []
        while "overflow" not in kinds and len(kinds) < limit + 5000:
            frame = read_frame(proc.stdout.read)
            assert frame is not None and frame.type == "event", frame
            kinds.append(frame.header["kind"])
        assert "overflow" in kinds and len(kinds) < limit + 5000
        rss = int(Path(f"/proc/{proc.pid}/status").read_text().split("VmRSS:")[1].split()[0])
        print(f"\nsupervisor RSS after a watch overflow: {rss} kB")
        assert rss < 16 * 1024
    finally:
        proc.stdin.close()
        assert proc.wait(5) == 0
        proc.stdout.close()
