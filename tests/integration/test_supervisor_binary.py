"""The supervisor binary run on the host as a local subprocess (no container): processes,
files, multiplexing, and garbage from the peer. Builds the binary first (cached)."""

from __future__ import annotations

import os
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.supervisor_helpers import binary, running
from workers.backends.supervisor.channel import Channel, Process, SupervisorError
from workers.backends.supervisor.frames import MAX_FRAME, SYNC, encode, read_frame


@pytest.fixture
def sup(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Channel]]:
    with running(tmp_path) as started:
        yield started


@pytest.fixture
def ch(sup: tuple[subprocess.Popen[bytes], Channel]) -> Channel:
    return sup[1]


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_idle_rss(sup: tuple[subprocess.Popen[bytes], Channel]) -> None:
    proc, ch = sup
    ch.processes()  # it answers: it is up
    time.sleep(0.3)
    rss = _rss_kb(proc.pid)
    print(f"\nsupervisor: binary {binary().stat().st_size / 1e6:.2f} MB, idle RSS {rss} kB")
    assert rss < 5 * 1024


def test_echo(ch: Channel) -> None:
    out, err, exit_ = ch.spawn(["echo", "hello"]).wait()
    assert (out, err, exit_.code, exit_.signal, exit_.timed_out) == (
        b"hello\n",
        b"",
        0,
        None,
        False,
    )
    assert exit_.ended_at >= exit_.started_at and exit_.duration_ms >= 0


def test_pipeline_env_cwd(ch: Channel, tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    cmd = "echo \"$FOO\"; pwd; printf 'a\\nb\\nc\\n' | grep -v b | wc -l; echo oops >&2; exit 7"
    out, err, exit_ = ch.spawn(cmd=cmd, env={"FOO": "bar baz"}, cwd=str(tmp_path / "sub")).wait()
    assert out.split() == [b"bar", b"baz", str(tmp_path / "sub").encode(), b"2"]
    assert (err, exit_.code) == (b"oops\n", 7)


def test_missing_program(ch: Channel) -> None:
    with pytest.raises(SupervisorError) as err:
        ch.spawn(["no-such-program-here"])
    assert err.value.code == "not_found"


def test_stdin(ch: Channel) -> None:
    proc = ch.spawn(["cat"], stdin=True)
    proc.write_stdin(b"one ")
    proc.write_stdin(b"two", eof=True)
    out, _, exit_ = proc.wait()
    assert (out, exit_.code) == (b"one two", 0)
    with pytest.raises(SupervisorError):
        proc.write_stdin(b"late")


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def test_timeout_kills_the_group(ch: Channel) -> None:
    started = time.monotonic()
    proc = ch.spawn(cmd="sleep 300 & echo $!; wait", timeout=0.5)
    out, _, exit_ = proc.wait()
    assert time.monotonic() - started < 30  # killed at its timeout, far from the sleep's 300 s
    assert (exit_.timed_out, exit_.signal, exit_.code) == (True, "SIGKILL", None)
    child = int(out)
    deadline = time.monotonic() + 3
    while not _gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(child), "the background sleep survived the timeout"


def test_signal_and_list(ch: Channel) -> None:
    proc = ch.spawn(["sleep", "30"])
    assert proc.pid in [p["pid"] for p in ch.processes()]
    assert proc.pgid == proc.pid
    proc.signal("SIGTERM")
    _, _, exit_ = proc.wait()
    assert (exit_.signal, exit_.timed_out) == ("SIGTERM", False)
    listed = {p["pid"]: p for p in ch.processes()}
    assert (listed[proc.pid]["exited"], listed[proc.pid]["stdin"]) == (True, False)
    with pytest.raises(SupervisorError) as err:
        proc.signal("TERM")
    assert err.value.code == "no_such_process"


def test_three_at_once(ch: Channel) -> None:
    results: dict[str, bytes] = {}

    def collect(proc: Process, name: str) -> None:
        out, _, exit_ = proc.wait()
        assert exit_.code == 0
        results[name] = out

    # Each process is consumed from the moment it starts: a request whose frames nobody
    # reads fills its bounded queue, holds up the channel's reader for its stall, then fails.
    threads = []
    for name in "abc":
        proc = ch.spawn(cmd=f"for i in $(seq 1 3000); do echo {name} $i; done")
        threads.append(threading.Thread(target=collect, args=(proc, name)))
        threads[-1].start()
    for t in threads:
        t.join(20)
    for name in "abc":
        assert results[name].decode().splitlines() == [f"{name} {i}" for i in range(1, 3001)]


def test_file_round_trip(ch: Channel, tmp_path: Path) -> None:
    data = os.urandom(3 << 20)
    assert ch.write_file(str(tmp_path / "blob"), data, mode=0o600) == len(data)
    assert b"".join(ch.read_file(str(tmp_path / "blob"))) == data
    entry = ch.stat(str(tmp_path / "blob"))
    assert (entry["type"], entry["size"], entry["mode"]) == ("file", len(data), 0o600)
    assert ch.write_file(str(tmp_path / "empty"), b"") == 0
    assert (tmp_path / "empty").read_bytes() == b""


def _code(call: object, *args: object, **kwargs: object) -> str:
    with pytest.raises(SupervisorError) as err:
        result = call(*args, **kwargs)  # type: ignore[operator]
        if hasattr(result, "__next__"):
            list(result)
    return err.value.code


def test_file_operations(ch: Channel, tmp_path: Path) -> None:
    root = str(tmp_path)
    ch.mkdir(f"{root}/a/b/c", parents=True)
    assert _code(ch.mkdir, f"{root}/a") == "exists"
    assert _code(ch.mkdir, f"{root}/x/y") == "not_found"
    ch.write_file(f"{root}/a/f.txt", b"hi")
    os.symlink("/etc", f"{root}/a/link")
    top = {e["name"]: e for e in ch.list_dir(f"{root}/a")}
    assert {n: e["type"] for n, e in top.items()} == {
        "b": "dir",
        "f.txt": "file",
        "link": "symlink",
    }
    assert top["link"]["target"] == "/etc"
    deep = {e["path"] for e in ch.list_dir(f"{root}/a", depth=3)}
    assert f"{root}/a/b/c" in deep and not any(p.startswith(f"{root}/a/link/") for p in deep)
    assert _code(ch.list_dir, f"{root}/a/f.txt") == "not_dir"
    ch.move(f"{root}/a/f.txt", f"{root}/a/b/g.txt")
    assert (tmp_path / "a/b/g.txt").read_bytes() == b"hi"
    assert _code(ch.move, f"{root}/a/f.txt", f"{root}/z") == "not_found"
    assert _code(ch.stat, f"{root}/missing") == "not_found"
    assert _code(ch.read_file, f"{root}/missing") == "not_found"
    assert _code(ch.read_file, f"{root}/a") == "is_dir"
    assert _code(ch.write_file, f"{root}/a", b"x") == "is_dir"
    assert _code(ch.write_file, f"{root}/nodir/f", b"x") == "not_found"
    assert _code(ch.remove, f"{root}/a") == "not_empty"
    assert _code(ch.remove, f"{root}/missing") == "not_found"
    ch.remove(f"{root}/a", recursive=True)
    assert not (tmp_path / "a").exists() and Path("/etc").is_dir()


def _raw(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def test_garbage_is_refused(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [str(binary())], cwd=tmp_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert proc.stdin and proc.stdout

    def send(data: bytes) -> None:
        assert proc.stdin
        proc.stdin.write(data)
        proc.stdin.flush()

    def answer() -> dict[str, object]:
        assert proc.stdout
        frame = read_frame(proc.stdout.read)
        assert frame is not None
        return frame.header

    bad = [
        (_raw(struct.pack(">I", 4) + b"{!!}"), 0),  # not JSON
        (_raw(struct.pack(">I", 99) + b"{}"), 0),  # header length beyond the frame
        (_raw(struct.pack(">I", 7) + b'{"id":0}'), 0),  # id 0
        (encode({"id": 5, "op": "proc.spawn", "evil": 1}), 5),  # unknown field
        (encode({"id": 6, "op": "fs.stat", "path": "x"}, b"payload"), 6),  # payload where none goes
        (encode({"id": 7, "op": "rm -rf"}), 7),  # unknown op
        (encode({"id": 8, "op": "proc.spawn", "argv": "echo"}), 8),  # wrong type
    ]
    for data, request_id in bad:
        send(data)
        reply = answer()
        assert (reply["type"], reply["id"]) == ("error", request_id), reply
        assert reply["code"] in ("bad_frame", "unknown_op")
    send(encode({"id": 9, "op": "proc.list"}))  # still serving
    assert answer() == {"type": "ok", "id": 9, "processes": []}
    # An oversized length prefix: framing is lost, so it says so once and skips to the next
    # SYNC marker (a request before the marker is skipped with the garbage), then serves on.
    send(struct.pack(">I", MAX_FRAME + 1) + b"x" * 64 + encode({"id": 10, "op": "proc.list"}))
    reply = answer()
    assert (reply["type"], reply["id"], reply["code"]) == ("error", 0, "framing")
    send(SYNC + encode({"id": 11, "op": "proc.list"}))
    assert answer() == {"type": "ok", "id": 11, "processes": []}
    proc.stdin.close()
    assert proc.wait(5) == 0


def test_rss_after_a_large_transfer(
    sup: tuple[subprocess.Popen[bytes], Channel], tmp_path: Path
) -> None:
    proc, ch = sup
    data = os.urandom(3 << 20)
    ch.write_file(str(tmp_path / "blob"), data)
    assert b"".join(ch.read_file(str(tmp_path / "blob"))) == data
    busy = _rss_kb(proc.pid)
    time.sleep(4.5)  # two idle ticks: the memory goes back to the OS
    idle = _rss_kb(proc.pid)
    print(f"\nsupervisor RSS: {busy} kB after a 3 MiB round trip, {idle} kB once idle")
    assert idle < 5 * 1024


def test_an_unread_flood_holds_up_nothing_else(
    sup: tuple[subprocess.Popen[bytes], Channel],
) -> None:
    """A process whose output the worker never reads: the channel fails that one request
    (overflow) after its stall, other requests keep completing, and the supervisor keeps no
    more than its ring of the flood."""
    proc, ch = sup
    ch.stall = 0.5
    flood = ch.spawn(["yes"])
    for _ in range(20):
        out, _, exit_ = ch.spawn(["echo", "hi"]).wait()
        assert (out, exit_.code) == (b"hi\n", 0)
    with pytest.raises(SupervisorError) as err:
        list(flood.events())
    assert err.value.code == "overflow"
    time.sleep(0.5)  # yes keeps flooding; its frames are read and dropped
    assert ch.stat(".")["type"] == "dir"
    rss = _rss_kb(proc.pid)
    print(f"\nsupervisor RSS during an unread flood: {rss} kB")
    assert rss < 32 * 1024
    flood.signal("KILL")


def test_list_and_read_bounds(ch: Channel, tmp_path: Path) -> None:
    """A directory past the entry limit fails instead of growing the answer; devices and FIFOs
    are not read (they may never end or block)."""
    big = tmp_path / "big"
    big.mkdir()
    for i in range(100_001):
        (big / str(i)).touch()
    with pytest.raises(SupervisorError) as err:
        ch.list_dir(str(big))
    assert "100000 entries" in err.value.message
    os.mkfifo(tmp_path / "fifo")
    for path in ("/dev/zero", str(tmp_path / "fifo")):
        assert _code(ch.read_file, path) == "invalid"
    assert ch.stat(str(big / "7"))["type"] == "file"  # still serving


def test_write_replaces_a_symlink_not_its_target(ch: Channel, tmp_path: Path) -> None:
    """The temporary file is created exclusively and renamed onto the path: a symlink there is
    replaced, never written through."""
    target = tmp_path / "target"
    target.write_bytes(b"keep")
    (tmp_path / "link").symlink_to(target)
    ch.write_file(str(tmp_path / "link"), b"new")
    assert not (tmp_path / "link").is_symlink()
    assert ((tmp_path / "link").read_bytes(), target.read_bytes()) == (b"new", b"keep")
