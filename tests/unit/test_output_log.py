"""The process output log in Redis (shared/output.py ProcessLog): its round trip and E2B wire
shape, raw chunks read back as bytes or lines, the output budgets and the process quota, and
what purging a sandbox gives back."""

from __future__ import annotations

import functools

import fakeredis
import orjson
import pytest

from shared import keys
from shared.errors import QuotaExceeded
from shared.output import (
    END,
    ENTRY_BYTES,
    PTY,
    RECORD_BYTES,
    STDERR,
    STDOUT,
    Budgets,
    Chunk,
    LineReader,
    Piece,
    ProcessLog,
    paddock_line,
)
from shared.store import Store
from web.api.e2b.schemas import process_json


def test_process_log_round_trip_and_wire_shape() -> None:
    plog = ProcessLog(fakeredis.FakeRedis())
    plog.register("s1", "p1", "echo", "t1")
    plog.append("s1", "p1", [Piece(STDOUT, b"out\n", 1), Piece(STDERR, b"err\n", 2)])
    out = plog.read("s1", "p1")
    assert not out.finished
    upto = plog.last_id("s1", "p1")
    assert b"".join(process_json("p1", functools.partial(plog.entries, "s1", "p1", upto))) == (
        b'{"stdout":[{"type":"Stdout","line":"out","timestamp":1}],'
        b'"stderr":[{"type":"Stderr","line":"err","timestamp":2}],'
        b'"processID":"p1","finished":false}\n'
    )
    plog.finish("s1", "p1", 3)
    assert plog.wait_done("s1", "p1", timeout=1)
    out = plog.read("s1", "p1")
    assert out.finished and out.exit_code == 3
    upto = plog.last_id("s1", "p1")
    answer = orjson.loads(
        b"".join(process_json("p1", functools.partial(plog.entries, "s1", "p1", upto)))
    )
    assert answer == {
        "stdout": [{"type": "Stdout", "line": "out", "timestamp": 1}],
        "stderr": [{"type": "Stderr", "line": "err", "timestamp": 2}],
        "processID": "p1",
        "finished": True,
    }
    plog.forget("s1", "p1")
    assert not plog.exists("s1", "p1")


def test_streamed_answer_is_exact_for_many_entries_and_empty_output() -> None:
    r = fakeredis.FakeRedis()
    plog = ProcessLog(r)
    plog.register("s", "p", "x", "t")
    assert b"".join(process_json("p", functools.partial(plog.entries, "s", "p", "0-0"))) == (
        b'{"stdout":[],"stderr":[],"processID":"p","finished":false}\n'
    )
    expected = []
    for i in range(50):  # more entries than one read takes, lines split across slices
        chunk = [f"{i}-{j}" for j in range(100)]
        plog.append("s", "p", [Piece(STDOUT, "\n".join(chunk).encode() + b"\n", i)])
        expected += [{"type": "Stdout", "line": t, "timestamp": i} for t in chunk]
    upto = plog.last_id("s", "p")
    plog.append("s", "p", [Piece(STDOUT, b"after the snapshot\n", 99)])
    answer = orjson.loads(
        b"".join(process_json("p", functools.partial(plog.entries, "s", "p", upto)))
    )
    assert answer["stdout"] == expected and answer["stderr"] == [] and not answer["finished"]


def test_output_budgets_refuse_whole_chunks_and_forget_gives_bytes_back() -> None:
    r = fakeredis.FakeRedis()
    plog = ProcessLog(r)
    rec = RECORD_BYTES + 1  # a record of command "x"
    e = ENTRY_BYTES  # what each entry costs besides its bytes
    budgets = Budgets(process=1000, sandbox=rec + 10 + 2 * e, tenant=2 * rec + 15 + 3 * e)
    plog.register("s", "a", "x", "t", budgets=budgets)
    plog.register("s2", "b", "x", "t", budgets=budgets)
    assert (
        plog.append_budgeted("s", "a", "t", [Piece(STDOUT, b"12345678\n", 1)], 9, budgets) is None
    )
    refused = plog.append_budgeted("s", "a", "t", [Piece(STDOUT, b"12\n", 2)], 3, budgets)
    assert refused is not None and refused.room == 1 and refused.budget == "sandbox"
    assert plog.append_budgeted("s2", "b", "t", [Piece(STDOUT, b"1234\n", 1)], 5, budgets) is None
    refused = plog.append_budgeted("s2", "b", "t", [Piece(STDOUT, b"1234\n", 2)], 5, budgets)
    assert refused is not None and refused.room == 1 and refused.budget == "tenant"
    assert int(r.get(keys.tenant_output_bytes("t")) or 0) == 2 * rec + 14 + 2 * e
    plog.forget("s", "a")
    assert int(r.get(keys.tenant_output_bytes("t")) or 0) == rec + 5 + e
    assert int(r.get(keys.sandbox_output_bytes("s")) or 0) == 0
    # A forgotten process's late writes are dropped and cost nothing.
    assert plog.append_budgeted("s", "a", "t", [Piece(STDOUT, b"late\n", 3)], 5, budgets) is None
    assert (
        not r.exists(keys.output("s", "a")) and int(r.get(keys.sandbox_output_bytes("s")) or 0) == 0
    )


def test_notices_are_outside_the_budgets_and_a_retried_write_lands_once() -> None:
    r = fakeredis.FakeRedis()
    plog = ProcessLog(r)
    budgets = Budgets(process=1000, sandbox=RECORD_BYTES + 1, tenant=1 << 20)  # no room left
    plog.register("s", "a", "x", "t", budgets=budgets)
    refused = plog.append_budgeted("s", "a", "t", [Piece(STDOUT, b"1\n", 1)], 2, budgets, seq=4)
    assert refused is not None and refused.room == 0
    for _ in range(2):  # the second is a retry after a lost reply
        plog.notice("s", "a", "t", [paddock_line("[paddock] cut", cut=True)], seq=6)
    assert (
        plog.append_budgeted("s", "a", "t", [Piece(STDOUT, b"2\n", 3)], 2, budgets, seq=6) is None
    )
    assert [x.text for x in plog.read("s", "a").stderr] == ["[paddock] cut"]
    assert plog.read("s", "a").stdout == []
    assert int(r.get(keys.sandbox_output_bytes("s")) or 0) == RECORD_BYTES + 1


def test_process_records_are_paid_for_so_finished_ones_cannot_pile_up() -> None:
    r = fakeredis.FakeRedis()
    plog = ProcessLog(r)
    cmd = ": " + "x" * 3000
    rec = RECORD_BYTES + len(cmd)
    budgets = Budgets(process=1000, sandbox=3 * rec, tenant=5 * rec)
    for pid in ("p1", "p2", "p3"):
        plog.register("s", pid, cmd, "t", budgets=budgets)
        plog.finish("s", pid, 0)  # ended: no longer running, but still kept
    with pytest.raises(QuotaExceeded, match="PADDOCK_SANDBOX_OUTPUT_BYTES"):
        plog.register("s", "p4", cmd, "t", budgets=budgets)
    assert not plog.exists("s", "p4") and plog.process_ids("s") == ["p1", "p2", "p3"]
    plog.register("s2", "q1", cmd, "t", budgets=budgets)
    plog.register("s2", "q2", cmd, "t", budgets=budgets)
    with pytest.raises(QuotaExceeded, match="PADDOCK_TENANT_OUTPUT_BYTES"):
        plog.register("s3", "z", cmd, "t", budgets=budgets)
    plog.register("s3", "z", cmd, "other-tenant", budgets=budgets)  # others are untouched
    plog.forget("s", "p1")  # deleting a finished process makes room again
    plog.register("s", "p4", cmd, "t", budgets=budgets)


def test_process_quota_counts_running_processes_only() -> None:
    plog = ProcessLog(fakeredis.FakeRedis())
    plog.register("s", "p1", "x", "t", limit=2)
    plog.register("s", "p2", "x", "t", limit=2)
    with pytest.raises(QuotaExceeded, match="PADDOCK_SANDBOX_MAX_PROCESSES"):
        plog.register("s", "p3", "x", "t", limit=2)
    assert not plog.exists("s", "p3")
    plog.finish("s", "p1", 0)
    plog.register("s", "p3", "x", "t", limit=2)
    plog.forget("s", "p2")
    assert plog.running_count("s") == 1


def test_chunks_are_stored_as_they_come_and_read_back_as_lines() -> None:
    r = fakeredis.FakeRedis()
    plog = ProcessLog(r)
    plog.register("s", "p", "x", "t")
    plog.append(
        "s",
        "p",
        [
            Piece(STDOUT, b"a\n\nb", 5),
            Piece(STDERR, b"e\n", 5),
            Piece(STDOUT, b"-continued\nc", 6),
        ],
    )
    assert r.xlen(keys.output("s", "p")) == 3  # one entry per chunk, not per line
    out = plog.read("s", "p")
    assert [x.text for x in out.stdout] == ["a", "", "b-continued"]  # "c" is unfinished
    assert [x.ts_ns for x in out.stdout] == [5, 5, 6]
    assert [x.text for x in out.stderr] == ["e"]
    plog.append("s", "p", [Piece(PTY, b"\r\n", 7)])  # a terminal's output reads as stdout
    plog.finish("s", "p", 0)
    out = plog.read("s", "p")
    assert [x.text for x in out.stdout] == ["a", "", "b-continued", "c\r"] and out.finished


def test_binary_output_round_trips_byte_for_byte_through_chunks() -> None:
    r = fakeredis.FakeRedis()
    plog = ProcessLog(r)
    plog.register("s", "p", "x", "t")
    data = bytes(range(256)) * 3
    budgets = Budgets(1 << 20, 1 << 20, 1 << 20)
    plog.append_budgeted("s", "p", "t", [Piece(STDOUT, data, 1)], len(data), budgets, seq=4)
    plog.append_budgeted("s", "p", "t", [Piece(PTY, b"\xff\x00\r", 2)], 3, budgets, seq=8)
    assert plog.chunks("s", "p", "0-0", block_ms=0) != []
    plog.finish("s", "p", 7, oom_killed=True)
    got = plog.chunks("s", "p", "0-0", block_ms=0)
    assert [(c.kind, c.data) for c in got] == [(STDOUT, data), (PTY, b"\xff\x00\r"), (END, b"")]
    assert got[-1].exit_code == 7 and got[-1].oom_killed
    assert all(isinstance(c, Chunk) and c.id for c in got)
    # Reading on from an id; bounded by count; nothing new: an empty list, at once.
    assert plog.chunks("s", "p", got[0].id, block_ms=0) == got[1:]
    assert plog.chunks("s", "p", "0-0", block_ms=0, count=1) == got[:1]
    assert plog.chunks("s", "p", got[-1].id, block_ms=0) == []
    assert plog.chunks("s", "p", got[-1].id, block_ms=10) == []


def test_entries_of_a_worker_from_before_raw_chunks_still_read() -> None:
    # Such a worker stored whole lines joined by newlines in field "l"; a rolling upgrade
    # mixes them with raw chunks in one stream.
    r = fakeredis.FakeRedis()
    plog = ProcessLog(r)
    key = keys.output("s", "p")
    r.xadd(key, {"k": STDOUT, "l": "old1\nold2", "t": 3})
    r.xadd(key, {"k": STDERR, "l": "[paddock] old notice", "t": 4})
    plog.append("s", "p", [Piece(STDOUT, b"new\n", 5)])
    r.xadd(key, {"k": "x", "c": "0", "m": ""})
    out = plog.read("s", "p")
    assert [x.text for x in out.stdout] == ["old1", "old2", "new"]
    assert [x.text for x in out.stderr] == ["[paddock] old notice"]
    assert out.finished and out.exit_code == 0
    got = plog.chunks("s", "p", "0-0", block_ms=0)
    assert [c.data for c in got] == [b"old1\nold2\n", b"[paddock] old notice\n", b"new\n", b""]


def test_snapshot_answers_and_incremental_reads_agree_on_lines() -> None:
    r = fakeredis.FakeRedis()
    plog = ProcessLog(r)
    plog.register("s", "p", "x", "t")
    plog.append("s", "p", [Piece(STDOUT, b"one\ntw", 1), Piece(STDERR, b"half", 2)])
    upto = plog.last_id("s", "p")
    answer = orjson.loads(
        b"".join(process_json("p", functools.partial(plog.entries, "s", "p", upto)))
    )
    # While it runs, an unfinished line is not shown (it may go on).
    assert [x["line"] for x in answer["stdout"]] == ["one"] and answer["stderr"] == []
    lines = LineReader()
    first = plog.read_new("s", "p", "0-0", 0, lines)
    assert [x.text for x in first.stdout] == ["one"]
    plog.append("s", "p", [Piece(STDOUT, b"o\nthree", 3)])
    plog.notice("s", "p", "t", [paddock_line("[paddock] output truncated", cut=True)], seq=4)
    plog.finish("s", "p", 0)
    later = plog.read_new("s", "p", first.last_id, 0, lines)
    assert [x.text for x in later.stdout] == ["two"] and later.finished
    # The cut dropped the unfinished lines ("three", "half"): a cut line is not a real one.
    assert [x.text for x in later.stderr] == ["[paddock] output truncated"]
    upto = plog.last_id("s", "p")
    answer = orjson.loads(
        b"".join(process_json("p", functools.partial(plog.entries, "s", "p", upto)))
    )
    assert [x["line"] for x in answer["stdout"]] == ["one", "two"] and answer["finished"]
    assert [x["line"] for x in answer["stderr"]] == ["[paddock] output truncated"]


def test_purging_a_sandbox_gives_its_output_back_and_late_writes_cost_nothing() -> None:
    r = fakeredis.FakeRedis()
    plog, store = ProcessLog(r), Store(r)
    budgets = Budgets(process=1000, sandbox=10000, tenant=10000)
    rec = RECORD_BYTES + 1 + ENTRY_BYTES  # a record of command "x", and one entry
    r.hset(keys.sandbox("s1"), mapping={"tenant": "t", "host": "h", "status": "running"})
    for sid, pid, n in (("s1", "a", 100), ("s1", "b", 50), ("s2", "c", 30)):
        plog.register(sid, pid, "x", "t")  # no budgets: the records themselves cost here too
        assert plog.append_budgeted(sid, pid, "t", [Piece(STDOUT, b"x" * n, 1)], n, budgets) is None
    assert int(r.get(keys.tenant_output_bytes("t")) or 0) == 3 * rec + 180
    store.purge_sandbox("s1")
    assert int(r.get(keys.tenant_output_bytes("t")) or 0) == rec + 30
    assert not [k for k in r.scan_iter(f"{keys.PREFIX}:*s1*")]
    # A pump that was still writing for s1 finds its process gone: nothing stored or counted.
    assert plog.append_budgeted("s1", "a", "t", [Piece(STDOUT, b"late\n", 2)], 5, budgets) is None
    assert int(r.get(keys.tenant_output_bytes("t")) or 0) == rec + 30
    assert not [k for k in r.scan_iter(f"{keys.PREFIX}:*s1*")]


class _Counting(fakeredis.FakeRedis):
    """Counts the stream reads the answer makes."""

    reads = 0

    def xrange(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.reads += 1
        return super().xrange(*args, **kwargs)

    def xrevrange(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.reads += 1
        return super().xrevrange(*args, **kwargs)


@pytest.mark.parametrize("chunks", [0, 1, 7, 8, 9, 40])
def test_a_snapshot_answers_what_was_there_and_reads_a_short_output_once(chunks: int) -> None:
    r = _Counting()
    plog = ProcessLog(r)
    plog.register("s1", "p1", "echo", "t1")
    for n in range(chunks):
        kind = STDERR if n % 3 == 0 else STDOUT
        plog.append("s1", "p1", [Piece(kind, b"line%d\n" % n, n)])
    plog.finish("s1", "p1", 0)
    r.reads = 0
    snap = plog.snapshot("s1", "p1")
    # Written after the snapshot: not in the answer, which is the output as it was.
    plog.append("s1", "p1", [Piece(STDOUT, b"late\n", 99)])
    answer = orjson.loads(
        b"".join(process_json("p1", functools.partial(plog.entries, "s1", "p1", snap)))
    )
    want = {
        kind: [f"line{n}" for n in range(chunks) if (n % 3 == 0) == (kind == "stderr")]
        for kind in ("stdout", "stderr")
    }
    assert [o["line"] for o in answer["stdout"]] == want["stdout"]
    assert [o["line"] for o in answer["stderr"]] == want["stderr"]
    assert answer["finished"] is True
    if chunks + 1 < 8:  # the output and its end entry: one read for both streams
        assert r.reads == 1
