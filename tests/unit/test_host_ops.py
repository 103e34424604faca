"""The host's operations (workers/host/ops.py) and process runner against a fake sandbox backend
that implements the SandboxBackend protocol in memory: no Docker, fakeredis for Redis. Also the
typed commands (shared/commands.py) the web sends and the host parses."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import fakeredis
import pytest

from shared import commands as c
from shared import tasks
from shared.egress import NetworkPolicy
from shared.errors import BadRequest, PathNotFound, SandboxError, SandboxGone
from shared.output import STDERR, STDOUT
from shared.settings import Settings
from tests.unit.fake_backend import FakeBackend
from workers.backends.base import SandboxBackend, SpawnOptions
from workers.host import ops
from workers.host.context import WorkerContext
from workers.host.tasks import HOST_TASKS

pytest.importorskip("lupa", reason="fakeredis runs Lua scripts only with lupa installed")

HOST = "h1"


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def ctx(backend: FakeBackend) -> WorkerContext:
    ctx = WorkerContext(Settings(host_id=HOST))
    ctx.redis = fakeredis.FakeRedis()  # type: ignore[misc]
    ctx.backend = backend  # type: ignore[misc]
    ctx.store.heartbeat(HOST, 10, ["Bash"], ttl=60)
    return ctx


def _sandbox(ctx: WorkerContext, sandbox_id: str = "sb1", tenant: str = "t1") -> str:
    ctx.store.place(sandbox_id, tenant, "Bash", 5, 3600)
    ops.create_sandbox(
        ctx, c.SandboxCreate(sandbox_id=sandbox_id, tenant_id=tenant, template="Bash")
    )
    return sandbox_id


def _until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_the_fake_implements_the_protocol(backend: FakeBackend) -> None:
    implementation: SandboxBackend = backend  # mypy checks the protocol here
    assert implementation.machine().cpus == 4


# -- lifecycle -------------------------------------------------------------------------------
def test_create_starts_the_template_image_and_marks_running(
    ctx: WorkerContext, backend: FakeBackend
) -> None:
    ctx.store.place("sb1", "t1", "Bash", 5, 3600)
    network = NetworkPolicy(mode="none").to_json()
    cmd = c.SandboxCreate(sandbox_id="sb1", tenant_id="t1", template="Bash", network=network)
    assert ops.create_sandbox(ctx, cmd) == c.Created(HOST)
    assert backend.created[0][:3] == ("sb1", "t1", "fake/tpl-bash:latest")
    assert ctx.store.raw_sandbox("sb1")["status"] == "running"


def test_create_refuses_a_template_the_host_lacks(ctx: WorkerContext, backend: FakeBackend) -> None:
    ctx.store.place("sb1", "t1", "Bash", 5, 3600)
    with pytest.raises(BadRequest):
        ops.create_sandbox(ctx, c.SandboxCreate(sandbox_id="sb1", tenant_id="t1", template="Go"))
    assert backend.created == []


def test_a_sandbox_deleted_while_created_is_removed(
    ctx: WorkerContext, backend: FakeBackend
) -> None:
    ctx.store.place("sb1", "t1", "Bash", 5, 3600)
    assert ctx.store.begin_delete("sb1")  # the requester gave up meanwhile
    with pytest.raises(SandboxError):
        ops.create_sandbox(ctx, c.SandboxCreate(sandbox_id="sb1", tenant_id="t1", template="Bash"))
    assert backend.destroyed == ["sb1"]
    assert not ctx.store.raw_sandbox("sb1")


def test_destroy_removes_the_sandbox_its_processes_and_its_record(
    ctx: WorkerContext, backend: FakeBackend
) -> None:
    sid = _sandbox(ctx)
    ops.start_process(ctx, _start(sid, "p1", "sleep 100"))
    assert ops.destroy_sandbox(ctx, c.SandboxDestroy(sandbox_id=sid)).to_json() == {}
    assert backend.destroyed == [sid]
    assert backend.spawned[0].closed, "its output is no longer pumped"
    assert not ctx.store.raw_sandbox(sid)
    ops.destroy_sandbox(ctx, c.SandboxDestroy(sandbox_id=sid))  # idempotent


def test_ports(ctx: WorkerContext) -> None:
    sid = _sandbox(ctx)
    got = ops.ports(ctx, c.SandboxPorts(sandbox_id=sid))
    assert got.to_json() == [{"State": "LISTEN", "Ip": "0.0.0.0", "Port": 8080}]


# -- files -----------------------------------------------------------------------------------
def test_file_operations(ctx: WorkerContext) -> None:
    sid = _sandbox(ctx)
    ops.write_file(ctx, c.FsWrite.of(sid, "t1", "/work/a.txt", b"\x00bytes\xff"))
    assert ops.read_file(ctx, c.FsRead(sandbox_id=sid, path="/work/a.txt")).data == b"\x00bytes\xff"
    assert ops.read_file(ctx, c.FsRead(sandbox_id=sid, path="/work/a.txt")).to_json() == {
        "data": "AGJ5dGVz/w=="
    }
    ops.make_dir(ctx, c.FsMkdir(sandbox_id=sid, path="/work/sub"))
    listing = ops.list_dir(ctx, c.FsList(sandbox_id=sid, path="/work"))
    assert listing.to_json() == [{"name": "a.txt", "isDir": False}, {"name": "sub", "isDir": True}]
    ops.remove(ctx, c.FsRemove(sandbox_id=sid, path="/work/a.txt"))
    with pytest.raises(PathNotFound):
        ops.read_file(ctx, c.FsRead(sandbox_id=sid, path="/work/a.txt"))


def test_a_gone_sandbox_answers_sandbox_gone_and_wakes_the_reconcile(
    ctx: WorkerContext, backend: FakeBackend
) -> None:
    woken: list[str] = []
    backend.on_gone = woken.append
    with pytest.raises(SandboxGone):
        ops.list_dir(ctx, c.FsList(sandbox_id="nope", path="/"))
    assert woken == ["nope"]


# -- processes -------------------------------------------------------------------------------
def _start(sid: str, pid: str, cmd: str) -> c.ProcessStart:
    return c.ProcessStart(sandbox_id=sid, tenant_id="t1", process_id=pid, cmd=cmd, env={}, cwd="")


def test_a_process_output_and_exit_code_reach_redis(
    ctx: WorkerContext, backend: FakeBackend
) -> None:
    sid = _sandbox(ctx)
    ops.start_process(ctx, _start(sid, "p1", "echo hi"))
    proc = backend.spawned[0]
    assert proc.cmd == "echo hi"
    assert ctx.plog.info(sid, "p1")["status"] == "running"
    proc.feed.put((STDOUT, b"hi\nand a partial "))
    proc.feed.put((STDERR, b"oops\n"))
    proc.feed.put((STDOUT, b"line\n"))
    proc.exit(3)
    _until(lambda: ctx.plog.read(sid, "p1").finished)
    out = ctx.plog.read(sid, "p1")
    assert [line.text for line in out.stdout] == ["hi", "and a partial line"]
    assert [line.text for line in out.stderr] == ["oops"]
    assert out.exit_code == 3 and not out.oom_killed
    assert proc.closed
    assert ctx.processes.count() == 0


def test_stdin_and_kill(ctx: WorkerContext, backend: FakeBackend) -> None:
    sid = _sandbox(ctx)
    ops.start_process(ctx, _start(sid, "p1", "cat"))
    proc = backend.spawned[0]
    assert ops.write_stdin(ctx, c.ProcessStdin(sandbox_id=sid, process_id="p1", data="abc"))
    assert bytes(proc.stdin) == b"abc"
    assert ops.kill_process(ctx, c.ProcessKill(sandbox_id=sid, process_id="p1")) == c.Killed(True)
    assert proc.killed
    _until(lambda: ctx.plog.read(sid, "p1").finished)
    assert ctx.plog.read(sid, "p1").exit_code == 137
    # Ended: stdin is refused, a second kill finds nothing.
    written = ops.write_stdin(ctx, c.ProcessStdin(sandbox_id=sid, process_id="p1", data="x"))
    assert written == c.Written(False)
    assert ops.kill_process(ctx, c.ProcessKill(sandbox_id=sid, process_id="p1")) == c.Killed(False)


def test_the_envd_options_signals_size_and_end_of_input(
    ctx: WorkerContext, backend: FakeBackend
) -> None:
    sid = _sandbox(ctx)
    ids = {"sandbox_id": sid, "tenant_id": "t1", "process_id": "p1"}
    start = c.ProcessStart(
        **ids,
        cmd="sh -c 'cat'",
        env={},
        cwd="/",
        argv=["sh", "-c", "cat"],
        pty_cols=80,
        pty_rows=24,
        stdin=False,
        timeout_ms=1500,
        envd="sealed",
    )
    assert ops.start_process(ctx, start) == c.Started(42)  # the fake's pgid
    proc = backend.spawned[0]
    assert proc.options == SpawnOptions(("sh", "-c", "cat"), (80, 24), False, 1.5)
    info = ctx.plog.info(sid, "p1")
    assert (info["pid"], info["envd"]) == ("42", "sealed")
    stdin = c.ProcessStdin.of(sid, "t1", "p1", b"\x03")
    assert ops.write_stdin(ctx, stdin) == c.Written(True)
    assert bytes(proc.stdin) == b"\x03"
    assert ops.resize_process(ctx, c.ProcessResize(**ids, cols=100, rows=30)) == c.Resized(True)
    assert proc.sizes == [(100, 30)]
    with pytest.raises(BadRequest):
        ops.resize_process(ctx, c.ProcessResize(**ids, cols=0, rows=30))
    close = c.ProcessCloseStdin(**ids)
    assert ops.close_stdin(ctx, close) == c.Written(True)
    assert ops.close_stdin(ctx, close) == c.Written(False)  # closed already
    assert ops.signal_process(ctx, c.ProcessSignal(**ids, signal="SIGTERM")) == c.Killed(True)
    assert proc.signals == ["SIGTERM"]
    with pytest.raises(BadRequest):
        ops.signal_process(ctx, c.ProcessSignal(**ids, signal="SIGSTOP"))
    # SIGKILL ends it, and unlike a kill its end is stored as for any exit.
    assert ops.signal_process(ctx, c.ProcessSignal(**ids, signal="SIGKILL")) == c.Killed(True)
    _until(lambda: ctx.plog.read(sid, "p1").finished)
    assert ctx.plog.read(sid, "p1").exit_code == 137
    assert ops.signal_process(ctx, c.ProcessSignal(**ids, signal="SIGKILL")) == c.Killed(False)
    assert ops.resize_process(ctx, c.ProcessResize(**ids, cols=1, rows=1)) == c.Resized(False)

    # A process without a terminal is refused a size.
    ops.start_process(ctx, _start(sid, "p2", "cat"))
    assert backend.spawned[1].options == SpawnOptions()
    with pytest.raises(BadRequest):
        ops.resize_process(ctx, c.ProcessResize(sandbox_id=sid, process_id="p2", cols=9, rows=9))


def test_an_oom_kill_is_reported(ctx: WorkerContext, backend: FakeBackend) -> None:
    sid = _sandbox(ctx)
    ops.start_process(ctx, _start(sid, "p1", "eat memory"))
    backend.ooms += 1  # the kernel's OOM killer ended it
    backend.spawned[0].exit(137)
    _until(lambda: ctx.plog.read(sid, "p1").finished)
    out = ctx.plog.read(sid, "p1")
    assert out.oom_killed
    assert any("ran out of memory" in line.text for line in out.stderr)


def test_a_start_in_a_gone_sandbox_leaves_no_process(ctx: WorkerContext) -> None:
    with pytest.raises(SandboxGone):
        ops.start_process(ctx, _start("nope", "p1", "echo hi"))
    assert not ctx.plog.exists("nope", "p1")


def test_output_stops_being_stored_once_the_sandbox_is_forgotten(
    ctx: WorkerContext, backend: FakeBackend
) -> None:
    sid = _sandbox(ctx)
    ops.start_process(ctx, _start(sid, "p1", "yes"))
    proc = backend.spawned[0]
    proc.feed.put((STDOUT, b"one\n"))
    _until(lambda: len(ctx.plog.read(sid, "p1").stdout) == 1)
    ctx.processes.forget_sandbox(sid)
    _until(lambda: ctx.processes.count() == 0)
    assert proc.closed


# -- the typed commands ----------------------------------------------------------------------
def test_every_host_task_has_its_command_and_they_round_trip() -> None:
    names = {cmd.name for cmd, _fn in HOST_TASKS}
    assert names == {
        tasks.SANDBOX_CREATE,
        tasks.SANDBOX_DESTROY,
        tasks.SANDBOX_PORTS,
        tasks.FS_LIST,
        tasks.FS_MKDIR,
        tasks.FS_REMOVE,
        tasks.FS_READ,
        tasks.FS_WRITE,
        tasks.PROCESS_START,
        tasks.PROCESS_STDIN,
        tasks.PROCESS_KILL,
        tasks.SANDBOX_PAUSE,
        tasks.SANDBOX_RESUME,
        tasks.SANDBOX_USAGE,
        tasks.FS_STAT,
        tasks.FS_MOVE,
        tasks.FS_ENTRIES,
        tasks.FS_WATCH,
        tasks.PROCESS_SIGNAL,
        tasks.PROCESS_RESIZE,
        tasks.PROCESS_CLOSE_STDIN,
    }
    start = _start("sb1", "p1", "ls")
    kwargs = start.to_kwargs()
    assert kwargs == {
        "sandbox_id": "sb1",
        "tenant_id": "t1",
        "process_id": "p1",
        "cmd": "ls",
        "env": {},
        "cwd": "",
        # The envd protocol's options, at their defaults (an older worker ignores them).
        "argv": [],
        "pty_cols": 0,
        "pty_rows": 0,
        "stdin": True,
        "timeout_ms": 0,
        "envd": "",
    }
    assert c.ProcessStart.from_kwargs({**kwargs, "from_a_newer_web": 1}) == start
    older = {k: kwargs[k] for k in ("sandbox_id", "tenant_id", "process_id", "cmd", "env", "cwd")}
    assert c.ProcessStart.from_kwargs(older) == start
    envd = c.ProcessStart(
        sandbox_id="sb1", process_id="p2", cmd="'/bin/bash' -c x", env={}, cwd="/", argv=["a", "b"]
    )
    assert c.ProcessStart.from_kwargs(envd.to_kwargs()) == envd
    with pytest.raises(TypeError):
        c.ProcessStart.from_kwargs({**older, "argv": ["a", 1]})
    for data in (b"text\n", b"\xff\x00\x03"):
        stdin = c.ProcessStdin.of("sb1", "t1", "p1", data)
        assert c.ProcessStdin.from_kwargs(stdin.to_kwargs()).content() == data
    assert c.ProcessStdin.of("sb1", "t1", "p1", b"hi").data == "hi"  # what an older worker reads
    write = c.FsWrite.of("sb1", "t1", "/a", b"\xff")
    assert c.FsWrite.from_kwargs(write.to_kwargs()).content() == b"\xff"
    assert c.AgentDrain(session_id="s1").to_kwargs() == {"session_id": "s1"}
    with pytest.raises(TypeError):
        c.FsRead.from_kwargs({"sandbox_id": "sb1"})  # no path


def test_results_read_back_what_the_host_sent() -> None:
    listing = c.Listing([c.DirEntry("a", False)])
    assert c.Listing.from_json(listing.to_json()) == listing
    ports = c.Ports([c.Port("0.0.0.0", 80)])
    assert c.Ports.from_json(ports.to_json()) == ports
    assert c.FileData.from_json(c.FileData(b"\x00").to_json()).data == b"\x00"
    assert c.Written.from_json({"written": True}) == c.Written(True)
    assert c.Killed.from_json({"killed": False}) == c.Killed(False)
    assert c.Started.from_json(c.Started(4242).to_json()) == c.Started(4242)
    assert c.Resized.from_json({"resized": True}) == c.Resized(True)
    usage = c.Usage(1.5, 2, 3, 4, 5, 6)
    assert c.Usage.from_json(usage.to_json()) == usage
    assert c.Created.from_json({"host": "h"}) == c.Created("h")


def test_the_runner_never_waits_on_a_pgid_after_the_process_ended(
    ctx: WorkerContext, backend: FakeBackend
) -> None:
    sid = _sandbox(ctx)
    ops.start_process(ctx, _start(sid, "p1", "true"))
    backend.spawned[0].exit(0)
    _until(lambda: ctx.plog.read(sid, "p1").finished)
    started = time.monotonic()
    done = threading.Event()
    threading.Thread(target=lambda: (ctx.processes.kill(sid, "p1"), done.set())).start()
    assert done.wait(2) and time.monotonic() - started < 2


def test_a_restarted_worker_follows_a_running_process_and_stores_each_byte_once() -> None:
    """The worker dies while a process prints (its last chunks taken but not stored, lines
    left unfinished on both streams); the next worker adopts the process from the resume
    point kept with the stored output: every line arrives once, unfinished ones whole."""
    backend = FakeBackend(numbered=True)
    redis = fakeredis.FakeRedis()
    first = WorkerContext(Settings(host_id=HOST))
    first.redis = redis  # type: ignore[misc]
    first.backend = backend  # type: ignore[misc]
    first.store.heartbeat(HOST, 10, ["Bash"], ttl=60)
    sid = _sandbox(first)
    ops.start_process(first, _start(sid, "p1", "printer"))
    proc = backend.spawned[0]
    proc.say(STDOUT, b"a1\na2-par")
    proc.say(STDERR, b"e1\ne2-")
    proc.say(STDOUT, b"tial\nb-un")
    _until(lambda: len(first.plog.read(sid, "p1").stdout) == 2)
    # The worker dies: what its pump takes from now on is never stored.
    run = first.processes._get(sid, "p1")
    assert run is not None
    run.forgotten = True
    proc.say(STDOUT, b"finished\n")
    proc.say(STDERR, b"half\n")
    _until(lambda: proc.feed.empty())

    second = WorkerContext(Settings(host_id=HOST))
    second.redis = redis  # type: ignore[misc]
    second.backend = backend  # type: ignore[misc]
    assert second.processes.adopt(sid, "p1")
    proc.say(STDOUT, b"c\n")
    proc.exit(0)
    _until(lambda: second.plog.read(sid, "p1").finished)
    out = second.plog.read(sid, "p1")
    assert [line.text for line in out.stdout] == ["a1", "a2-partial", "b-unfinished", "c"]
    assert [line.text for line in out.stderr] == ["e1", "e2-half"]
    assert out.exit_code == 0


def test_a_process_the_backend_cannot_follow_is_closed_at_restart(
    ctx: WorkerContext, backend: FakeBackend
) -> None:
    sid = _sandbox(ctx)
    ops.start_process(ctx, _start(sid, "p1", "sleep"))
    assert not ctx.processes.adopt(sid, "p1")  # an unnumbered backend: no ref kept


def test_entry_replies_round_trip_and_refuse_a_malformed_entry() -> None:
    entry = c.FsEntry("a.txt", "/home/user/a.txt", "file", 6, 0o644, 1.5e9)
    assert c.EntryReply.from_json(c.EntryReply(entry).to_json()).entry == entry
    assert c.Entries.from_json(c.Entries([entry]).to_json()).entries == [entry]
    assert c.FsEntry.from_json({**entry.to_json(), "mtime": 1500000000}).mtime == 1.5e9
    for bad in (
        {**entry.to_json(), "type": "socket"},
        {**entry.to_json(), "size": "6"},
        {"name": "a.txt"},
        None,
    ):
        with pytest.raises(TypeError):
            c.FsEntry.from_json(bad)
    with pytest.raises(TypeError):
        c.Entries.from_json({"entries": "nope"})
