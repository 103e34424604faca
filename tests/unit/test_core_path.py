"""The core path without Docker: the web's Sandboxes (web/sandboxes.py) -> shared.rpc -> the
host's Celery task -> workers.host.ops -> a sandbox backend.

Everything is real except the broker and the engine: Redis is one fakeredis both sides share,
the backend is the in-memory FakeBackend, and Celery's send is replaced by a hand-over that
serializes the kwargs as the broker would and runs the host's registered task in a thread of
its own with the message's task id, as a worker thread would. The web then blocks on the reply
list as it does in production (no eager Celery: STYLE.md)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import fakeredis
import pytest
import redis
from celery import Celery

from shared import commands, keys, rpc, tasks
from shared.errors import PathNotFound, QuotaExceeded
from shared.output import STDERR, STDOUT
from shared.settings import Settings
from shared.store import QUOTA_RETRY_AFTER, Sandbox
from tests.unit.fake_backend import FakeBackend
from web.sandboxes import Sandboxes
from workers.host.context import WorkerContext
from workers.host.tasks import register_host_tasks

pytest.importorskip("lupa", reason="fakeredis runs Lua scripts only with lupa installed")

HOST = "h1"
TENANT = "t1"


class OneWorkerApp(Celery):
    """A Celery app whose tasks belong to it alone. Celery shares every task with each app made
    later in the process (the first registration of a name wins), which is right for a worker
    (one app per process) but would hand a test the previous test's tasks and context."""

    def task(self, *args: Any, **opts: Any) -> Any:
        return super().task(*args, **{**opts, "shared": False, "lazy": False})


class Path:
    """One web and one host over a shared fakeredis, the broker replaced by a thread per
    message; ``sent`` lists the task names the web sent."""

    def __init__(self, host_settings: Settings) -> None:
        self.redis = fakeredis.FakeRedis()
        self.backend = FakeBackend()
        self.ctx = WorkerContext(host_settings)
        self.ctx.redis = self.redis
        self.ctx.backend = self.backend
        self.ctx.store.heartbeat(HOST, 10, ["Bash"], ttl=60)
        self.host_app = OneWorkerApp("host-under-test", set_as_current=False)
        register_host_tasks(self.host_app, self.ctx)
        self.web_app = Celery("web-under-test", set_as_current=False)
        self.web_app.send_task = self._send
        self.sent: list[str] = []
        self.threads: list[threading.Thread] = []
        self.sandboxes = Sandboxes(Settings(task_timeout=10), self.redis, self.web_app)

    def _send(self, name: str, kwargs: dict[str, Any], queue: str, task_id: str, **_: Any) -> None:
        assert queue == tasks.host_queue(HOST), queue
        self.sent.append(name)
        wire = json.loads(json.dumps(kwargs))  # what the broker carries: JSON, no objects
        task = self.host_app.tasks[name]
        thread = threading.Thread(
            target=task.apply, kwargs={"kwargs": wire, "task_id": task_id}, daemon=True
        )
        self.threads.append(thread)
        thread.start()

    def close(self) -> None:
        """Wait for the host's task threads, and stop pumping the sandboxes' output."""
        for thread in self.threads:
            thread.join(10)
        for sandbox_id in list(self.backend.sandboxes):
            self.ctx.processes.forget_sandbox(sandbox_id)


@pytest.fixture
def path() -> Iterator[Path]:
    p = Path(Settings(host_id=HOST))
    yield p
    p.close()


def _until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def _create(path: Path) -> Sandbox:
    sandbox = path.sandboxes.create(TENANT, "Bash")
    assert sandbox.host_id == HOST
    return sandbox


def test_a_sandbox_is_created_on_the_host(path: Path) -> None:
    sandbox = _create(path)
    assert path.sent == [commands.SandboxCreate.name]
    assert path.backend.created[0][:3] == (sandbox.sandbox_id, TENANT, "fake/tpl-bash:latest")
    assert path.sandboxes.get(TENANT, sandbox.sandbox_id).sandbox_id == sandbox.sandbox_id


def test_a_process_is_started_and_its_output_read(path: Path) -> None:
    sandbox = _create(path)
    pid = path.sandboxes.start_process(sandbox, "echo hi", {"A": "1"}, "")
    proc = path.backend.spawned[0]
    assert (proc.sandbox_id, proc.cmd) == (sandbox.sandbox_id, "echo hi")
    proc.feed.put((STDOUT, b"hi\n"))
    proc.feed.put((STDERR, b"oops\n"))
    proc.exit(3)
    with path.sandboxes.waiting(sandbox):
        path.sandboxes.wait_done(sandbox, pid, lambda: True)
    entries = list(path.sandboxes.output(sandbox, pid)())
    lines = [(entry.kind, line) for entry in entries for line in entry.lines]
    assert lines == [(STDOUT, "hi"), (STDERR, "oops")]
    assert path.sent == [commands.SandboxCreate.name, commands.ProcessStart.name]
    assert path.sandboxes.plog.read(sandbox.sandbox_id, pid).exit_code == 3


def test_a_file_is_written_and_read_back(path: Path) -> None:
    sandbox = _create(path)
    path.sandboxes.write_file(sandbox, "/work/a.txt", b"\x00bytes\xff")
    assert path.sandboxes.read_file(sandbox, "/work/a.txt") == b"\x00bytes\xff"
    listing = path.sandboxes.list_dir(sandbox, "/work")
    assert listing == [{"name": "a.txt", "isDir": False}]


def test_a_host_error_arrives_as_its_own_class_with_its_message(path: Path) -> None:
    sandbox = _create(path)
    with pytest.raises(PathNotFound) as caught:
        path.sandboxes.read_file(sandbox, "/nope")
    assert caught.value.message == "no such file or directory: /nope"
    assert caught.value.status == 404


def test_a_host_quota_arrives_with_its_retry_after() -> None:
    # The sandbox's output budget has no room for even one process record: the host refuses.
    p = Path(Settings(host_id=HOST, sandbox_output_bytes=1))
    try:
        sandbox = _create(p)
        with pytest.raises(QuotaExceeded) as caught:
            p.sandboxes.start_process(sandbox, "echo hi", {}, "")
        assert caught.value.retry_after == QUOTA_RETRY_AFTER
        assert "PADDOCK_SANDBOX_OUTPUT_BYTES" in caught.value.message
        assert p.backend.spawned == []
    finally:
        p.close()


def test_the_idle_timer_is_reset_by_requests_at_most_once_a_second(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sandbox = _create(path)
    now = [1000.0]
    monkeypatch.setattr("web.sandboxes.time.monotonic", lambda: now[0])
    writes: list[str] = []
    real_touch = path.sandboxes.store.touch
    monkeypatch.setattr(
        path.sandboxes.store, "touch", lambda sid: (writes.append(sid), real_touch(sid))
    )
    for _ in range(5):
        path.sandboxes.get(TENANT, sandbox.sandbox_id)
    assert writes == [sandbox.sandbox_id]  # one write for a burst of requests
    first = path.redis.zscore(keys.idle_index(), sandbox.sandbox_id)
    now[0] += 1.01
    time.sleep(0.01)  # the timer's own clock (wall time) moves on too
    path.sandboxes.get(TENANT, sandbox.sandbox_id)
    assert writes == [sandbox.sandbox_id] * 2  # a second later: reset again
    assert path.redis.zscore(keys.idle_index(), sandbox.sandbox_id) > first


def test_each_task_a_host_ran_is_logged_with_its_reply(path: Path) -> None:
    sandbox = _create(path)
    path.sandboxes.write_file(sandbox, "/work/a.txt", b"x")
    with pytest.raises(PathNotFound):
        path.sandboxes.read_file(sandbox, "/nope")  # a failed task is logged too
    log = [json.loads(x) for x in path.redis.lrange(keys.task_log(sandbox.sandbox_id), 0, -1)]
    assert [e["task"] for e in log] == [
        commands.SandboxCreate.name,
        commands.FsWrite.name,
        commands.FsRead.name,
    ]
    assert {e["host"] for e in log} == {HOST}
    assert path.redis.ttl(keys.task_log(sandbox.sandbox_id)) > 0  # it does not outlive the sandbox
    # The destroy is logged before it runs: the log goes with the sandbox's keys.
    path.sandboxes.delete(sandbox)
    _until(lambda: not path.redis.exists(keys.sandbox(sandbox.sandbox_id)))
    assert not path.redis.exists(keys.task_log(sandbox.sandbox_id))


def test_a_start_is_recorded_with_its_reply_and_followed_even_when_the_reply_fails(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sandbox = _create(path)
    pid = path.sandboxes.start_process(sandbox, "echo hi", {}, "")
    info = path.sandboxes.plog.info(sandbox.sandbox_id, pid)
    assert info["status"] == "running" and info["pid"] == "42"  # written with the reply

    # The reply's round trip fails (Redis went away just then): the record is written on its
    # own and the output is still followed.
    def lost(*_a: Any, **_k: Any) -> None:
        raise redis.ConnectionError("gone")

    monkeypatch.setattr(rpc, "reply", lost)
    start = commands.ProcessStart(
        sandbox_id=sandbox.sandbox_id, tenant_id=TENANT, process_id="p2", cmd="x", env={}, cwd=""
    )
    task = path.host_app.tasks[start.name]
    task.apply(kwargs=json.loads(json.dumps(start.to_kwargs())), task_id="t-lost")
    info = path.sandboxes.plog.info(sandbox.sandbox_id, "p2")
    assert info["status"] == "running"
    proc = path.backend.spawned[-1]
    proc.feed.put((STDOUT, b"still read\n"))
    proc.exit(0)
    _until(lambda: path.sandboxes.plog.read(sandbox.sandbox_id, "p2").finished)
    assert [x.text for x in path.sandboxes.plog.read(sandbox.sandbox_id, "p2").stdout] == [
        "still read"
    ]
