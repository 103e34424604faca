"""How the host runner stores a process's output (raw chunks as they come, workers/host/runner.py)
and how they are read back as lines (shared/output.py LineReader): lines spanning chunks, UTF-8
split across chunks, huge lines, the unfinished last line, a terminal's output, Paddock's own
lines."""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import fakeredis
import pytest

from shared import commands as c
from shared import keys
from shared.output import (
    CUT,
    END,
    ENTRY_BYTES,
    MAX_LINE,
    NOTE,
    PTY,
    STDERR,
    STDOUT,
    Chunk,
    Entry,
    LineReader,
    Piece,
    _Stored,
)
from shared.settings import Settings
from tests.unit.fake_backend import FakeBackend
from workers.host import ops
from workers.host.context import WorkerContext
from workers.host.runner import _fit, parse_resume


def _chunks(*items: tuple[str, bytes] | tuple[str, bytes, str]) -> list[_Stored]:
    out = []
    for i, item in enumerate(items):
        kind, data = item[0], item[1]
        notice = item[2] if len(item) == 3 else ""
        if kind == END:
            out.append(_Stored(Chunk(f"{i}-0", END, exit_code=0), 0, ""))
        else:
            out.append(_Stored(Chunk(f"{i}-0", kind, data), i, notice))
    return out


def _lines(entries: Iterable[Entry], kind: str = STDOUT) -> list[str]:
    return [t for e in entries if e.kind == kind for t in e.lines]


def test_lines_span_chunks_and_utf8_split_across_chunks_decodes_whole() -> None:
    reader = LineReader()
    got = list(reader.entries(_chunks((STDOUT, b"a\nb"), (STDOUT, b"c\n\nd\xc3"))))
    assert _lines(got) == ["a", "bc", ""]
    assert [e.ts_ns for e in got] == [0, 1]  # a line is stamped when it is completed
    assert _lines(reader.entries(_chunks((STDOUT, b"\xa9\n")))) == ["d\u00e9"]
    # One entry per chunk, however many lines it holds.
    assert len(list(LineReader().entries(_chunks((STDOUT, b"x\n" * 1000))))) == 1
    # Invalid bytes read as U+FFFD; a line read in many chunks comes out once.
    many = [(STDOUT, bytes([b])) for b in b"one line, byte by byte\xff\n"]
    assert _lines(LineReader().entries(_chunks(*many))) == ["one line, byte by byte\ufffd"]


def test_the_unfinished_last_line_comes_out_only_once_the_process_ended() -> None:
    chunks = _chunks((STDOUT, b"done\npart"), (STDERR, b"err"))
    assert _lines(LineReader().entries(chunks)) == ["done"]  # a snapshot while it runs
    ended = list(LineReader().entries([*chunks, *_chunks((END, b""))]))
    assert _lines(ended) == ["done", "part"] and _lines(ended, STDERR) == ["err"]
    assert ended[-1].kind == END


def test_huge_lines_are_cut_when_read_wherever_the_chunks_break() -> None:
    line = b"x" * (MAX_LINE * 2 + 5) + b"\n"
    whole = _lines(LineReader().entries(_chunks((STDERR, line))), STDERR)
    assert [len(t) for t in whole] == [MAX_LINE, MAX_LINE, 5]
    parts = [(STDERR, line[i : i + 300_000]) for i in range(0, len(line), 300_000)]
    assert _lines(LineReader().entries(_chunks(*parts)), STDERR) == whole
    # Past MAX_LINE an unfinished line is cut even while the process runs.
    running = _lines(LineReader().entries(_chunks((STDOUT, b"y" * (MAX_LINE + 3)))))
    assert [len(t) for t in running] == [MAX_LINE]
    # A chunk bigger than MAX_LINE of short lines is split as usual.
    many = b"ab\n" * (MAX_LINE // 2)
    assert _lines(LineReader().entries(_chunks((STDOUT, many)))) == ["ab"] * (MAX_LINE // 2)
    mixed = b"s\n" + b"z" * (MAX_LINE + 1) + b"\nt\n"
    assert [len(t) for t in _lines(LineReader().entries(_chunks((STDOUT, mixed))))] == [
        1,
        MAX_LINE,
        1,
        1,
    ]


def test_100_mb_without_a_newline_is_read_as_cut_lines_as_it_comes() -> None:
    """A reader (the web's line answers) holds at most one unfinished line and one chunk,
    however long the line: each MAX_LINE comes out as soon as it is read."""
    chunk = b"z" * (64 << 10)
    count = 100_000_000 // len(chunk)
    read = [0]

    def stored() -> Iterator[_Stored]:
        for i in range(count):
            read[0] += len(chunk)
            yield _Stored(Chunk(f"{i}-0", STDOUT, chunk), i, "")
        yield _Stored(Chunk("end", END, exit_code=0), 0, "")

    out, lines = 0, 0
    tracemalloc.start()
    try:
        for entry in LineReader().entries(stored()):
            assert all(len(t) <= MAX_LINE for t in entry.lines)
            out += sum(map(len, entry.lines))
            lines += len(entry.lines)
            assert read[0] - out <= MAX_LINE + len(chunk)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out == count * len(chunk) and lines == -(-out // MAX_LINE)
    assert peak < 8 << 20, peak  # of 100 MB read


def test_a_terminals_output_is_read_as_stdout() -> None:
    got = list(LineReader(STDOUT).entries(_chunks((PTY, b"$ ls\r\nfile"), (PTY, b"\r\n"))))
    assert _lines(got) == ["$ ls\r", "file\r"] and {e.kind for e in got} == {STDOUT}


def test_paddock_lines_end_or_drop_the_unfinished_lines_before_them() -> None:
    note = b"[paddock] killed\n"
    got = list(
        LineReader().entries(_chunks((STDOUT, b"half"), (STDERR, b"e-half"), (STDERR, note, NOTE)))
    )
    assert _lines(got) == ["half"] and _lines(got, STDERR) == ["e-half", "[paddock] killed"]
    cut = b"[paddock] output truncated\n"
    got = list(
        LineReader().entries(
            _chunks((STDOUT, b"ok\nhal"), (STDERR, b"e-hal"), (STDERR, cut, CUT), (END, b""))
        )
    )
    assert _lines(got) == ["ok"] and _lines(got, STDERR) == ["[paddock] output truncated"]


def test_a_reader_of_one_stream_splits_that_stream_only() -> None:
    chunks = _chunks((STDOUT, b"o\n"), (STDERR, b"e\n"), (END, b""))
    assert [e.kind for e in LineReader(STDERR).entries(chunks)] == [STDERR, END]


def _until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _host(settings: Settings, backend: FakeBackend) -> WorkerContext:
    """A worker over fakeredis and ``backend`` with sandbox sb1 of tenant t1 made."""
    pytest.importorskip("lupa", reason="fakeredis runs Lua scripts only with lupa installed")
    ctx = WorkerContext(settings)
    ctx.redis = fakeredis.FakeRedis()  # type: ignore[misc]
    ctx.backend = backend  # type: ignore[misc]
    ctx.store.heartbeat("h1", 10, ["Bash"], ttl=60)
    ctx.store.place("sb1", "t1", "Bash", 5, 3600)
    ops.create_sandbox(ctx, c.SandboxCreate(sandbox_id="sb1", tenant_id="t1", template="Bash"))
    return ctx


_START = c.ProcessStart(sandbox_id="sb1", tenant_id="t1", process_id="p1", cmd="x", env={}, cwd="")


def _runner(limit: int) -> tuple[WorkerContext, FakeBackend]:
    backend = FakeBackend()
    ctx = _host(Settings(host_id="h1", max_output_bytes=limit), backend)
    ops.start_process(ctx, _START)
    return ctx, backend


def test_the_pump_stores_raw_chunks_and_cuts_at_the_process_cap_after_a_whole_line() -> None:
    ctx, backend = _runner(limit=20 + 3 * ENTRY_BYTES)  # each chunk counts ENTRY_BYTES more
    proc = backend.spawned[0]
    proc.feed.put((STDOUT, b"12345\n678"))  # 9 bytes, an unfinished line among them
    proc.feed.put((STDERR, b"\xff\x00bin\n"))  # 6: any bytes
    proc.feed.put((STDOUT, b"90\nabcdef\n"))  # 10: past the cap, "90\n" is kept
    proc.feed.put((STDOUT, b"more\n"))  # discarded
    proc.exit(0)
    _until(lambda: ctx.plog.read("sb1", "p1").finished)
    got = ctx.plog.chunks("sb1", "p1", "0-0", block_ms=0)
    assert [(x.kind, x.data) for x in got[:3]] == [
        (STDOUT, b"12345\n678"),
        (STDERR, b"\xff\x00bin\n"),
        (STDOUT, b"90\n"),
    ]
    assert got[3].kind == STDERR and got[3].data.startswith(b"[paddock] output truncated")
    assert got[3].data.endswith(b"\n") and got[4].kind == END and len(got) == 5
    out = ctx.plog.read("sb1", "p1")
    assert [x.text for x in out.stdout] == ["12345", "67890"]
    assert (
        out.stderr[0].text == "\ufffd\x00bin" and "PADDOCK_MAX_OUTPUT_BYTES" in out.stderr[1].text
    )


def test_a_cut_in_the_middle_of_a_line_drops_the_line_and_a_terminal_is_cut_as_is() -> None:
    ctx, backend = _runner(limit=10 + 2 * ENTRY_BYTES)
    proc = backend.spawned[0]
    proc.feed.put((STDOUT, b"ok\nunfin"))
    proc.feed.put((STDOUT, b"ished-and-too-long\n"))  # no newline within the cap
    proc.exit(0)
    _until(lambda: ctx.plog.read("sb1", "p1").finished)
    out = ctx.plog.read("sb1", "p1")
    assert [x.text for x in out.stdout] == ["ok"]  # "unfin" was cut: it is not a line
    ctx, backend = _runner(limit=10 + ENTRY_BYTES)
    backend.spawned[0].feed.put((PTY, b"$ \x1b[1mprompt"))
    backend.spawned[0].exit(0)
    _until(lambda: ctx.plog.read("sb1", "p1").finished)
    got = ctx.plog.chunks("sb1", "p1", "0-0", block_ms=0)
    assert (got[0].kind, got[0].data) == (PTY, b"$ \x1b[1mprom")


def test_resume_points_old_and_new() -> None:
    assert parse_resume("7") == (7, {})
    # Written by a worker that held unfinished lines back: skip what it stored of them.
    assert parse_resume("3:10:4") == (3, {STDOUT: 10, STDERR: 4})
    assert (
        parse_resume("3:x:4") is None and parse_resume("1:2") is None and parse_resume("") is None
    )


def test_a_budget_refusal_keeps_whole_pieces_then_up_to_a_newline() -> None:
    pieces = [Piece(STDOUT, b"ab\ncd", 1), Piece(STDERR, b"x\ny\nz", 2), Piece(PTY, b"tty", 3)]
    assert _fit(pieces, 9) == ([pieces[0], Piece(STDERR, b"x\ny\n", 2)], 9)
    assert _fit(pieces, 4) == ([Piece(STDOUT, b"ab\n", 1)], 3)
    assert _fit(pieces, 2) is None
    assert _fit(pieces, 11) == ([*pieces[:2], Piece(PTY, b"t", 3)], 11)


def _ran_at_once(output: list[tuple[str, bytes]], code: int, limit: int = 1 << 20) -> Any:
    """A runner whose one process printed ``output`` and exited before the worker read it."""
    backend = FakeBackend()
    backend.ran_at_once = (output, code)
    ctx = _host(Settings(host_id="h1", sandbox_output_bytes=limit), backend)
    finished: list[str] = []
    real_finish = ctx.plog.finish

    def finish(*a: Any, **k: Any) -> None:
        finished.append(a[1])
        real_finish(*a, **k)

    ctx.plog.finish = finish  # type: ignore[method-assign]
    ops.start_process(ctx, _START)
    _until(lambda: ctx.plog.read("sb1", "p1").finished)
    return ctx, finished


def test_the_last_output_and_the_end_are_stored_in_one_trip() -> None:
    ctx, finished = _ran_at_once([(STDOUT, b"22\n")], 3)
    out = ctx.plog.read("sb1", "p1")
    assert [x.text for x in out.stdout] == ["22"] and out.exit_code == 3
    assert finished == []  # ended by the append's own script, not a second call
    info = ctx.plog.info("sb1", "p1")
    assert info["status"] == "exited" and int(info["bytes"]) >= 3 + ENTRY_BYTES
    assert ctx.redis.scard(keys.sandbox_running("sb1")) == 0
    assert ctx.plog.wait_done("sb1", "p1", timeout=1)


def test_a_refused_last_output_is_cut_and_said_before_the_end() -> None:
    # The sandbox's budget has room for the record and a few bytes, not the last chunk.
    ctx, finished = _ran_at_once([(STDOUT, b"ok\n" + b"x" * 5000 + b"\n")], 0, limit=2600)
    got = ctx.plog.chunks("sb1", "p1", "0-0", block_ms=0)
    assert got[-1].kind == END and got[-1].exit_code == 0
    assert b"PADDOCK_SANDBOX_OUTPUT_BYTES" in got[-2].data  # the notice, before the end
    assert finished == ["p1"]  # the slow way: what fits, the notice, then the end
