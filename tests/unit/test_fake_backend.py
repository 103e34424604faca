"""The fake sandbox backend of the scale harness (workers/backends/fake/): chosen only when
allowed explicitly, its command scripts, its files, and its output through the host's real
runner into Redis (fakeredis)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import fakeredis
import pytest

from shared import commands as c
from shared.errors import (
    BackendUnsupported,
    ConfigError,
    IsADirectory,
    PathExists,
    PathNotFound,
    PermissionDenied,
    SandboxError,
    SandboxGone,
)
from shared.output import STDERR, STDOUT
from shared.settings import Settings
from workers.backends import make_backend
from workers.backends.base import SpawnOptions
from workers.backends.fake.backend import FakeBackend
from workers.backends.fake.files import FakeFiles
from workers.host import ops
from workers.host.context import WorkerContext

FAKE = {"PADDOCK_SANDBOX_BACKEND": "fake", "PADDOCK_ALLOW_FAKE_BACKEND": "1"}


def _settings(**env: str) -> Settings:
    return Settings.from_env({**FAKE, "PADDOCK_HOST_ID": "h1", **env})


def _run(backend: FakeBackend, cmd: str, **options: object) -> tuple[list[tuple[str, bytes]], int]:
    proc = backend.spawn("sb", cmd, {}, "", SpawnOptions(**options))  # type: ignore[arg-type]
    frames = list(proc.frames(lambda: False))
    code = proc.exit_code()
    assert code is not None
    return frames, code


@pytest.fixture
def backend() -> FakeBackend:
    b = FakeBackend(_settings())
    b.create("sb", "t1", "fake/tpl-bash:latest", None)  # type: ignore[arg-type]
    return b


def test_the_fake_backend_is_refused_unless_allowed_explicitly() -> None:
    with pytest.raises(ConfigError, match="PADDOCK_ALLOW_FAKE_BACKEND"):
        Settings.from_env({"PADDOCK_SANDBOX_BACKEND": "fake"})
    with pytest.raises(ConfigError):
        FakeBackend(Settings())  # the default settings: the supervisor backend
    assert Settings().allow_fake_backend is False
    assert isinstance(make_backend(_settings()), FakeBackend)


def test_commands_print_what_bash_would(backend: FakeBackend) -> None:
    assert _run(backend, "echo 22") == ([(STDOUT, b"22\n")], 0)
    assert _run(backend, "echo -n a b; echo c >&2") == ([(STDOUT, b"a b"), (STDERR, b"c\n")], 0)
    assert _run(backend, "seq 2 4") == ([(STDOUT, b"2\n3\n4\n")], 0)
    assert _run(backend, "false && echo no; echo yes") == ([(STDOUT, b"yes\n")], 0)
    assert _run(backend, "echo a; exit 3; echo b") == ([(STDOUT, b"a\n")], 3)
    assert _run(backend, "nosuch arg")[1] == 127
    assert _run(backend, "echo a | cat") == (
        [(STDERR, b"bash: the fake backend does not run this syntax\n")],
        2,
    )
    assert _run(backend, "echo 'unbalanced")[1] == 2
    assert _run(backend, "sleep nan")[1] == 2
    assert _run(backend, "fake-out 999999999999")[1] == 2  # past MAX_OUTPUT


def test_fake_out_hands_over_its_bytes_in_chunks(backend: FakeBackend) -> None:
    frames, code = _run(backend, "fake-out 10000 4096")
    assert code == 0
    assert [len(d) for _, d in frames] == [4096, 4096, 1808]
    data = b"".join(d for _, d in frames)
    assert data.count(b"\n") == 100 and set(data) == {ord("a"), ord("\n")}


def test_argv_runs_a_shells_script() -> None:
    b = FakeBackend(_settings())
    b.create("sb", "", "img", None)  # type: ignore[arg-type]
    assert _run(b, "", argv=("/bin/bash", "-l", "-c", "echo hi")) == ([(STDOUT, b"hi\n")], 0)
    assert _run(b, "", argv=("echo", "x y")) == ([(STDOUT, b"x y\n")], 0)
    with pytest.raises(BackendUnsupported):
        b.spawn("sb", "echo", {}, "", SpawnOptions(pty=(80, 24)))


def test_kill_ends_a_sleep_and_stdin_feeds_cat(backend: FakeBackend) -> None:
    proc = backend.spawn("sb", "sleep 3600", {}, "")
    done = threading.Event()
    got: list[tuple[str, bytes]] = []

    def read() -> None:
        got.extend(proc.frames(lambda: False))
        done.set()

    threading.Thread(target=read, daemon=True).start()
    proc.kill(1.0)
    assert done.wait(30)
    assert got == [] and proc.exit_code() == 137

    cat = backend.spawn("sb", "cat; echo end", {}, "")
    cat.write_stdin(b"abc")
    cat.close_stdin()
    assert list(cat.frames(lambda: False)) == [(STDOUT, b"abc"), (STDOUT, b"end\n")]
    with pytest.raises(OSError):
        cat.write_stdin(b"late")


def test_a_timeout_ends_the_process_with_a_kill(backend: FakeBackend) -> None:
    frames, code = _run(backend, "sleep 3600; echo never", timeout=0.05)
    assert (frames, code) == ([], 137)


def test_a_quiet_process_asks_the_runner_whether_to_stop(backend: FakeBackend) -> None:
    proc = backend.spawn("sb", "sleep 3600", {}, "")
    proc.poll_every(0.01)
    asked: list[bool] = []

    def stop() -> bool:
        asked.append(True)
        return True

    assert list(proc.frames(stop)) == [] and asked


def test_files_behave_like_a_sandboxs() -> None:
    f = FakeFiles(capacity=10)
    f.write("a/b.txt", b"12345")
    assert f.read("/home/user/a/b.txt", 100) == b"12345"
    assert f.stat("a")["type"] == "dir"
    assert [e["path"] for e in f.entries("/home/user", 2)] == [
        "/home/user/a",
        "/home/user/a/b.txt",
    ]
    with pytest.raises(SandboxError, match="no space"):
        f.write("c", b"123456")
    f.move("a", "/tmp/moved")
    assert f.read("/tmp/moved/b.txt", 100) == b"12345"
    with pytest.raises(PathNotFound):
        f.read("a/b.txt", 100)
    with pytest.raises(IsADirectory):
        f.read("/tmp", 100)
    with pytest.raises(PathExists):
        f.mkdir("/tmp/moved/b.txt")
    with pytest.raises(PermissionDenied):
        f.remove("/")
    f.remove("/tmp/moved")
    assert f.used == 0


def test_a_gone_sandbox_is_reported(backend: FakeBackend) -> None:
    gone: list[str] = []
    backend.on_gone = gone.append
    backend.destroy("sb")
    with pytest.raises(SandboxGone):
        backend.spawn("sb", "echo", {}, "")
    assert gone == ["sb"] and backend.sandbox_states() == {}


def _until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_its_output_goes_through_the_host_runner_into_redis() -> None:
    pytest.importorskip("lupa", reason="fakeredis runs Lua scripts only with lupa installed")
    ctx = WorkerContext(_settings())
    ctx.redis = fakeredis.FakeRedis()
    ctx.store.heartbeat("h1", 10, ["Bash"], ttl=60)
    ctx.store.place("sb1", "t1", "Bash", 5, 3600)
    ops.create_sandbox(ctx, c.SandboxCreate(sandbox_id="sb1", tenant_id="t1", template="Bash"))
    start = c.ProcessStart(
        sandbox_id="sb1", tenant_id="t1", process_id="p1", cmd="fake-out 250 100", env={}, cwd=""
    )
    ops.start_process(ctx, start)
    _until(lambda: ctx.plog.read("sb1", "p1").finished)
    out = ctx.plog.read("sb1", "p1")
    assert [len(line.text) for line in out.stdout] == [99, 99, 50]
    assert out.exit_code == 0
