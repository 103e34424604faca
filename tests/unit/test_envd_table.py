"""The envd protocol's process table (web/api/envd/table.py): pids the backend gave or counted
ones, lookup by pid and tag, a reused pid, and which exited processes the sweep forgets (the
SDK has no way to delete them)."""

from __future__ import annotations

import fakeredis
import pytest

from shared import keys
from shared.output import ProcessLog
from web.api.envd.table import (
    COUNTED_BASE,
    KEEP_DELIVERED,
    KEEP_EXITED,
    SWEEP_BATCH,
    ProcessTable,
)

pytest.importorskip("lupa", reason="fakeredis runs Lua scripts only with lupa installed")


@pytest.fixture
def plog() -> ProcessLog:
    return ProcessLog(fakeredis.FakeRedis())


def _started(plog: ProcessLog, process_id: str) -> str:
    plog.register("s1", process_id, "cmd", "t1")
    plog.set_fields("s1", process_id, status="running")
    return process_id


def _process(table: ProcessTable, pid: int) -> str | None:
    entry = table.get("s1", pid)
    return entry.process_id if entry is not None else None


def _pids(table: ProcessTable) -> list[int]:
    """The pids in the table (read here whole: the table itself never does)."""
    fields = [f.decode() for f in table.r.hkeys(keys.envd_processes("s1"))]
    return sorted(int(f[2:]) for f in fields if f.startswith("p:"))


def _fields(table: ProcessTable) -> set[str]:
    return {f.decode() for f in table.r.hkeys(keys.envd_processes("s1"))}


def test_pids_given_counted_tags_and_reuse(plog: ProcessLog) -> None:
    table = ProcessTable(plog.r, plog, 3600)
    assert table.add("s1", 321, _started(plog, "p1"), "web") == 321
    counted = table.add("s1", 0, _started(plog, "p2"), None)
    assert counted == COUNTED_BASE + 1
    assert table.add("s1", 0, _started(plog, "p3"), "web") == COUNTED_BASE + 2
    assert _process(table, 321) == "p1"
    assert table.get("s1", 999) is None and table.get("s2", 321) is None
    newest = table.by_tag("s1", "web")
    assert newest is not None and newest.process_id == "p3"
    assert _pids(table) == [321, COUNTED_BASE + 1, COUNTED_BASE + 2]
    assert [e.pid for e in table.running("s1")] == _pids(table)
    assert 0 < plog.r.ttl(keys.envd_processes("s1")) <= 3600 + 3600

    # The sandbox reused pid 321: the process it named before is forgotten.
    plog.finish("s1", "p1", 0)
    table.add("s1", 321, _started(plog, "p4"), None)
    assert _process(table, 321) == "p4"
    assert not plog.exists("s1", "p1")
    assert "i:p1" not in _fields(table) and "i:p4" in _fields(table)
    assert [e.pid for e in table.running("s1")] == _pids(table)  # p1's end left the running
    # A tag names the newest process with it while that one is kept; a pid reused by a
    # process with another tag no longer answers to the old one.
    table.add("s1", 77, _started(plog, "p5"), "solo")
    plog.finish("s1", "p5", 0)
    table.add("s1", 77, _started(plog, "p6"), "other")
    assert table.by_tag("s1", "solo") is None and "t:solo" not in _fields(table)
    tagged = table.by_tag("s1", "other")
    assert tagged is not None and tagged.process_id == "p6"


def test_sweep_forgets_what_was_kept_long_enough(plog: ProcessLog) -> None:
    table = ProcessTable(plog.r, plog, 3600)
    for pid, process_id in ((1, "run"), (2, "told"), (3, "untold"), (4, "gone")):
        table.add("s1", pid, _started(plog, process_id), None)
    for process_id in ("told", "untold"):
        plog.finish("s1", process_id, 0)
    table.delivered("s1", 2)
    plog.forget("s1", "gone")  # deleted through another API
    ended = float(plog.info("s1", "untold")["ended_at"])

    table.sweep("s1", now=ended + 1)
    assert _pids(table) == [1, 2, 3]  # only the gone one's entry left
    table.sweep("s1", now=ended + KEEP_DELIVERED + 1)
    assert _pids(table) == [1, 3]
    assert not plog.exists("s1", "told") and plog.exists("s1", "untold")
    table.sweep("s1", now=ended + KEEP_EXITED + 1)
    assert _pids(table) == [1]  # a running process stays
    assert not plog.exists("s1", "untold") and plog.exists("s1", "run")
    table.delivered("s1", 3)  # an entry no longer there is not brought back
    assert plog.r.hget(keys.envd_processes("s1"), "d:3") is None


def test_sweep_and_list_cost_what_is_live_not_what_ran(plog: ProcessLog) -> None:
    # A sandbox that ran many short processes: each sweep looks at one batch of the table,
    # List reads only the running ones, and the sweeps still go round all of it.
    table = ProcessTable(plog.r, plog, 3600)
    ran = 3 * SWEEP_BATCH
    for pid in range(1, ran + 1):
        table.add("s1", pid, _started(plog, f"p{pid}"), f"tag{pid}")
        plog.finish("s1", f"p{pid}", 0)
    table.add("s1", ran + 1, _started(plog, "live"), None)
    assert [e.process_id for e in table.running("s1")] == ["live"]
    ended = float(plog.info("s1", f"p{ran}")["ended_at"])

    table.sweep("s1", now=ended + KEEP_EXITED + 1)
    left = len(_pids(table))
    assert left >= ran + 1 - SWEEP_BATCH  # one batch at most
    sweeps = 1
    while len(_pids(table)) > 1:
        table.sweep("s1", now=ended + KEEP_EXITED + 1)
        sweeps += 1
        assert sweeps <= 2 * ran // SWEEP_BATCH + 2, "the sweeps did not go round the table"
    assert _pids(table) == [ran + 1] and plog.exists("s1", "live")
    # Nothing of the forgotten processes is left: no index field, no record.
    assert _fields(table) <= {f"p:{ran + 1}", "i:live", "c"}
    assert plog.process_ids("s1") == ["live"]
