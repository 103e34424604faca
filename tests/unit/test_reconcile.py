"""Dead sandboxes and the one scheduler, on fakeredis: the lost state frees its slots, the host's
check finds stopped containers from one listing, Docker's refusals map to clear errors, the
reaper purges lost records and re-sends destroys with back-off, and one tick is claimed once
across schedulers."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

import docker.errors
import fakeredis
import pytest
import requests

from shared import keys, tasks
from shared.errors import (
    EngineUnavailable,
    QuotaExceeded,
    SandboxGone,
    SandboxNotFound,
    SandboxPaused,
)
from shared.output import ProcessLog
from shared.sessions import Sessions
from shared.settings import Settings
from shared.store import Store
from workers.backends.base import SandboxState
from workers.backends.docker.driver import DockerDriver
from workers.control import reaper, scheduler
from workers.host import reconcile

pytest.importorskip("lupa", reason="fakeredis runs Lua scripts only with lupa installed")

HOST = "h1"


@pytest.fixture
def r() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


def _placed(store: Store, sandbox_id: str, tenant: str = "t1", quota: int = 5) -> None:
    store.place(sandbox_id, tenant, "Bash", quota, 3600)
    store.set_sandbox_status(sandbox_id, "running")


@pytest.fixture
def store(r: fakeredis.FakeRedis) -> Store:
    s = Store(r)
    s.heartbeat(HOST, 10, ["Bash"], ttl=60)
    return s


# -- the lost state ---------------------------------------------------------------------------
def test_lost_frees_host_and_tenant_slots_and_hides_from_e2b(store: Store) -> None:
    _placed(store, "sb1", quota=1)
    with pytest.raises(QuotaExceeded):
        store.place("sb2", "t1", "Bash", 1, 3600)
    assert store.mark_lost("sb1", "its container is exited", keep=60)
    assert store.host_sandbox_ids(HOST) == []
    assert store.tenant_sandbox_ids("t1") == []
    store.place("sb2", "t1", "Bash", 1, 3600)  # the quota slot is free again
    with pytest.raises(SandboxNotFound):
        store.get_sandbox("t1", "sb1")
    assert store.get_sandbox("t1", "sb1", include_lost=True).status == "lost"
    with pytest.raises(SandboxNotFound):
        store.get_sandbox("t2", "sb1", include_lost=True)  # still scoped by tenant


def test_lost_only_from_running(store: Store) -> None:
    _placed(store, "sb1")
    assert store.begin_delete("sb1")
    assert not store.mark_lost("sb1", "gone", keep=60), "a sandbox being deleted is not lost"
    assert not store.mark_lost("nope", "gone", keep=60)
    _placed(store, "sb2")
    assert store.mark_lost("sb2", "gone", keep=60)
    assert not store.mark_lost("sb2", "gone", keep=60), "once"


class FakeApp:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def send_task(self, name: str, **options: Any) -> None:
        self.sent.append((name, options))


def test_reaper_purges_a_lost_record_after_keep(r: fakeredis.FakeRedis, store: Store) -> None:
    settings = Settings(host_id=HOST)
    _placed(store, "sb1")
    store.mark_lost("sb1", "gone", keep=0.05)
    app = FakeApp()
    time.sleep(0.1)
    assert reaper.reap(app, r, settings) == ["sb1"]  # type: ignore[arg-type]
    assert not store.raw_sandbox("sb1")
    assert app.sent == [], "nothing to destroy: the host cleaned up when it found it lost"


def test_a_delete_not_done_is_sent_again_with_back_off(
    r: fakeredis.FakeRedis, store: Store
) -> None:
    settings = Settings(host_id=HOST, task_timeout=1.0)
    _placed(store, "sb1")
    assert store.begin_delete("sb1")  # the web's delete; its destroy failed (engine down)
    app = FakeApp()
    reaper.reap(app, r, settings)  # type: ignore[arg-type]
    assert app.sent == [], "not before the first destroy had time to finish"
    r.hset(keys.sandbox("sb1"), "deleting_at", time.time() - 2.1)
    reaper.reap(app, r, settings)  # type: ignore[arg-type]
    assert [name for name, _ in app.sent] == [tasks.SANDBOX_DESTROY]
    assert r.hget(keys.sandbox("sb1"), "delete_tries") == b"1"
    r.hset(keys.sandbox("sb1"), "deleting_at", time.time() - 2.1)
    reaper.reap(app, r, settings)  # type: ignore[arg-type]
    assert len(app.sent) == 1, "the second retry waits twice as long"
    assert [reaper.destroy_retry_delay(n, settings) for n in range(4)] == [2, 4, 8, 16]
    assert reaper.destroy_retry_delay(30, settings) == 600


def test_a_retry_never_brings_back_a_purged_record(r: fakeredis.FakeRedis, store: Store) -> None:
    _placed(store, "sb1")
    assert store.begin_delete("sb1")
    assert store.retry_delete("sb1")
    store.purge_sandbox("sb1")  # the destroy got done meanwhile
    assert not store.retry_delete("sb1")
    assert not r.exists(keys.sandbox("sb1")), "no bare hash left that no index reaches"


# -- the host's check ---------------------------------------------------------------------------
class FakeStorage:
    def __init__(self, ids: list[str]) -> None:
        self.ids = set(ids)

    def sandbox_ids(self) -> list[str]:
        return sorted(self.ids)

    def release(self, sandbox_id: str) -> None:
        self.ids.discard(sandbox_id)


class FakeDriver:
    """The part of a SandboxBackend the check uses: removes the container and then the
    storage, as DockerBackend.destroy does."""

    def __init__(self, states: dict[str, tuple[str, str]], storage: FakeStorage) -> None:
        self.states = states
        self.storage = storage
        self.destroyed: list[str] = []
        self.on_gone: Any = None
        self.listings = 0

    def sandbox_states(self) -> dict[str, SandboxState]:
        self.listings += 1
        if self.states is None:
            raise EngineUnavailable("engine down")
        return {
            sid: SandboxState(cid, state, state in ("running", "paused", "restarting"))
            for sid, (cid, state) in self.states.items()
        }

    def destroy(self, sandbox_id: str, ref: str | None = None) -> None:
        self.destroyed.append(sandbox_id)
        self.states.pop(sandbox_id, None)
        self.storage.release(sandbox_id)

    def storage_ids(self) -> list[str]:
        return self.storage.sandbox_ids()

    def release_storage(self, sandbox_id: str) -> None:
        self.storage.release(sandbox_id)

    def prune(self) -> None:
        pass


def _ctx(r: fakeredis.FakeRedis, driver: FakeDriver, storage: FakeStorage) -> Any:
    return SimpleNamespace(
        settings=Settings(host_id=HOST, lost_keep=60),
        store=Store(r),
        plog=ProcessLog(r),
        sessions=Sessions(r),
        backend=driver,
        processes=SimpleNamespace(forget_sandbox=lambda _sid: None),
    )


def test_check_engine_loses_stopped_keeps_paused_removes_leftovers(
    r: fakeredis.FakeRedis, store: Store
) -> None:
    for sid in ("run", "exited", "gone", "paused"):
        _placed(store, sid)
    store.place("new", "t1", "Bash", 10, 3600)  # creating: not judged yet
    plog = ProcessLog(r)
    plog.register("exited", "p1", "sleep 100", "t1")
    plog.set_fields("exited", "p1", status="running")
    storage = FakeStorage(["run", "exited", "gone", "paused", "orphan", "new"])
    driver = FakeDriver(
        {
            "run": ("c1", "running"),
            "exited": ("c2", "exited"),
            "paused": ("c3", "paused"),
            "stray": ("c4", "running"),  # no record: a leftover
        },
        storage,
    )
    found = reconcile.check_engine(_ctx(r, driver, storage))
    assert sorted(found.lost) == ["exited", "gone"]
    assert found.containers_removed == ["stray"]
    assert found.storage_freed == ["orphan"]
    assert sorted(store.host_sandbox_ids(HOST)) == ["new", "paused", "run"]
    assert "exited" in driver.destroyed and "gone" in driver.destroyed
    assert "paused" not in driver.destroyed, "frozen is not dead"
    assert plog.info("exited", "p1")["status"] != "running"
    lines = r.xrange(keys.output("exited", "p1"))
    assert any(b"the sandbox was lost" in v for _id, f in lines for v in f.values())
    # A second pass finds nothing more to do.
    assert not reconcile.check_engine(_ctx(r, driver, storage))


def test_check_engine_judges_nothing_while_the_engine_is_down(
    r: fakeredis.FakeRedis, store: Store
) -> None:
    _placed(store, "run")
    storage = FakeStorage(["run"])
    driver = FakeDriver({}, storage)
    driver.states = None  # type: ignore[assignment]
    found = reconcile.check_engine(_ctx(r, driver, storage))
    assert found.engine_down and not found
    assert store.raw_sandbox("run")["status"] == "running"


def test_the_start_pass_also_finishes_deletes_and_closes_dead_pumps(
    r: fakeredis.FakeRedis, store: Store
) -> None:
    for sid in ("run", "del"):
        _placed(store, sid)
    assert store.begin_delete("del")  # its destroy died with the previous worker
    plog = ProcessLog(r)
    plog.register("run", "p1", "sleep 100", "t1")
    plog.set_fields("run", "p1", status="running")
    storage = FakeStorage(["run", "del"])
    driver = FakeDriver({"run": ("c1", "running"), "del": ("c2", "running")}, storage)
    ctx = _ctx(r, driver, storage)
    assert not reconcile.check_engine(ctx), "later passes leave a delete to whoever does it"
    assert plog.info("run", "p1")["status"] == "running"
    found = reconcile.check_engine(ctx, at_start=True)
    assert found.containers_removed == ["del"] and not store.raw_sandbox("del")
    assert plog.info("run", "p1")["status"] != "running"
    assert store.raw_sandbox("run")["status"] == "running"


def test_a_storm_of_gone_containers_runs_one_pass_at_a_time(
    r: fakeredis.FakeRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tenant making operations fail by the thousand (each wakes the check) gets at most
    one pass per _MIN_CHECK_GAP: the wake-ups coalesce into one pending pass."""
    monkeypatch.setattr(reconcile, "_MIN_CHECK_GAP", 0.05)
    storage = FakeStorage([])
    driver = FakeDriver({}, storage)
    ctx = _ctx(r, driver, storage)
    stop = threading.Event()
    t = reconcile.start_reconcile(ctx, stop)
    started = time.monotonic()
    try:
        while time.monotonic() - started < 0.5:
            for _ in range(1000):
                driver.on_gone("sb")
            time.sleep(0.001)
    finally:
        stop.set()
        t.join(5)
    elapsed = time.monotonic() - started
    assert 1 <= driver.listings <= elapsed / 0.05 + 2, driver.listings


# -- Docker's refusals --------------------------------------------------------------------------
def _api_error(status: int, explanation: str) -> docker.errors.APIError:
    response = requests.Response()
    response.status_code = status
    return docker.errors.APIError("refused", response=response, explanation=explanation)


def test_engine_refusals_map_to_clear_errors() -> None:
    driver = DockerDriver.__new__(DockerDriver)  # no engine needed for the mapping
    gone: list[str] = []
    driver.on_gone = gone.append
    not_running = _api_error(409, "Container abc is not running")
    assert isinstance(driver._engine_error("sb1", not_running), SandboxGone)
    assert isinstance(
        driver._engine_error("sb2", _api_error(404, "No such container")), SandboxGone
    )
    paused = _api_error(409, "Container abc is paused, unpause the container before exec")
    assert isinstance(driver._engine_error("sb3", paused), SandboxPaused)
    other = _api_error(500, "boom")
    assert driver._engine_error("sb4", other) is other
    assert gone == ["sb1", "sb2"], "gone containers wake the reconcile; paused does not"


# -- one scheduler ------------------------------------------------------------------------------
def test_one_tick_is_claimed_once_across_schedulers(r: fakeredis.FakeRedis) -> None:
    apps = [FakeApp(), FakeApp(), FakeApp()]
    periodic = [scheduler.Periodic("paddock.control.reap", 10.0)]
    schedulers = [scheduler.Scheduler(a, r, periodic, owner=f"w{i}") for i, a in enumerate(apps)]
    now = 1000.0
    for tick in range(5):
        for s in schedulers:
            s.tick_once(now + tick * 10 + 0.01 * schedulers.index(s))
    assert sum(len(a.sent) for a in apps) == 5, "one send per tick, whoever sends it"
    for a in apps:
        for _name, options in a.sent:
            assert options["queue"] == "control" and options["expires"] == 10.0
