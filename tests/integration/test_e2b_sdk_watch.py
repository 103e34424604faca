"""The official E2B SDK's ``files.watch_dir``, unchanged, against Paddock (web/api/envd/
watching.py, workers/host/watches.py): the sync client's polled watcher (CreateWatcher,
GetWatcherEvents, RemoveWatcher) and the async client's WatchDir stream, recursive and not;
watchers are the tenant's and the sandbox's only; they end with their sandbox, leaving nothing
in Redis; creates racing for the last places never pass the per-sandbox or per-tenant limit;
a sandbox creating 20,000 files fills a bounded stream; a worker restart takes its watches up
again, and one whose host stopped following it answers an error.

Processes run through the 2023 API (``/sessions/{id}/processes``) with the tenant's key.
Runs on the supervisor backend (the docker backend answers these calls ``unimplemented``)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from e2b import (
    AsyncSandbox,
    FilesystemEvent,
    FilesystemEventType,
    InvalidArgumentException,
    NotFoundException,
    RateLimitException,
    Sandbox,
    SandboxException,
)
from e2b.sandbox_sync.filesystem.watch_handle import WatchHandle

from devstack.stack import Stack
from shared import keys
from shared.slots import STREAMS, Slots
from tests.integration.client import wait_until
from tests.integration.e2b_helpers import sdk_env
from tests.integration.session_helpers import new_tenant

pytestmark = pytest.mark.skipif(
    os.environ.get("PADDOCK_TEST_BACKEND", "supervisor") != "supervisor",
    reason="watching directories needs the supervisor backend",
)

CREATE, WRITE, REMOVE, RENAME = (
    FilesystemEventType.CREATE,
    FilesystemEventType.WRITE,
    FilesystemEventType.REMOVE,
    FilesystemEventType.RENAME,
)
HOST = "host-a"
SANDBOX_MAX = 4
TENANT_MAX = 6
MAX_EVENTS = 500


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {
        "PADDOCK_AUTH": "on",
        "PADDOCK_SANDBOX_MAX_WATCHERS": str(SANDBOX_MAX),
        "PADDOCK_TENANT_MAX_WATCHERS": str(TENANT_MAX),
        "PADDOCK_WATCH_MAX_EVENTS": str(MAX_EVENTS),
    }
    with Stack(tmp_path_factory.mktemp("e2bwatch"), env=env) as st:
        yield st


@pytest.fixture(scope="module")
def key(stack: Stack) -> Iterator[str]:
    """Tenant A's key, with the stack set as E2B_API_URL and E2B_SANDBOX_URL."""
    api_key = new_tenant(stack, "e2bwatch")
    with sdk_env(stack, api_key):
        yield api_key


@pytest.fixture(scope="module")
def sbx(key: str) -> Iterator[Sandbox]:
    sandbox = Sandbox.create()
    yield sandbox
    sandbox.kill()


def _run(stack: Stack, key: str, sandbox_id: str, cmd: str) -> None:
    r = requests.post(
        f"{stack.url}/sessions/{sandbox_id}/processes?wait=true",
        json={"cmd": cmd},
        headers={"X-API-Key": key},
        timeout=300,
    )
    assert r.status_code == 200, r.text
    assert r.json().get("exitCode", r.json().get("exit_code", 0)) in (0, None), r.text


def _collect(
    handle: WatchHandle, wanted: set[tuple[FilesystemEventType, str]]
) -> list[FilesystemEvent]:
    """Events polled until every (type, name) in ``wanted`` came."""
    seen: list[FilesystemEvent] = []

    def check() -> bool:
        seen.extend(handle.get_new_events())
        return wanted <= {(e.type, e.name) for e in seen}

    wait_until(check, f"the events {wanted}")
    return seen


def _keys_of(stack: Stack, watcher: str) -> int:
    return int(stack.redis.exists(keys.watch(watcher), keys.watch_events(watcher)))


def _tenant(stack: Stack, sandbox_id: str) -> str:
    return stack.redis.hget(keys.sandbox(sandbox_id), "tenant").decode()


def test_sync_watch_one_directory(stack: Stack, key: str, sbx: Sandbox) -> None:
    sbx.files.make_dir("w1")
    handle = sbx.files.watch_dir("w1")
    sbx.files.write("w1/a.txt", "x")
    _run(stack, key, sbx.sandbox_id, "echo more >> /home/user/w1/a.txt")
    sbx.files.rename("w1/a.txt", "w1/b.txt")
    sbx.files.remove("w1/b.txt")
    sbx.files.make_dir("w1/sub")
    sbx.files.write("w1/sub/deep.txt", "not reported: not recursive")
    sbx.files.write("w1/last.txt", "y")
    wanted = {
        (CREATE, "a.txt"),
        (WRITE, "a.txt"),
        (RENAME, "a.txt"),
        (CREATE, "b.txt"),
        (REMOVE, "b.txt"),
        (CREATE, "sub"),
        (CREATE, "last.txt"),
    }
    events = _collect(handle, wanted)
    order = [(e.type, e.name) for e in events]
    assert order.index((CREATE, "a.txt")) < order.index((RENAME, "a.txt"))
    assert order.index((RENAME, "a.txt")) < order.index((REMOVE, "b.txt"))
    assert all("/" not in e.name for e in events)  # names relative to the directory
    assert handle.get_new_events() == []  # consumed

    # Removed: gone from Redis, and its id answers not_found.
    watcher = handle._watcher_id
    handle.stop()
    assert _keys_of(stack, watcher) == 0
    again = WatchHandle(sbx.files._rpc, watcher, sbx.files._connection_config, sbx._envd_version)
    with pytest.raises(NotFoundException):
        again.get_new_events()
    with pytest.raises(NotFoundException):
        again.stop()


def test_sync_watch_recursive(sbx: Sandbox) -> None:
    sbx.files.make_dir("w2/old")
    handle = sbx.files.watch_dir("w2", recursive=True)
    sbx.files.write("w2/old/f.txt", "1")
    sbx.files.make_dir("w2/x/y")
    sbx.files.write("w2/x/y/g.txt", "2")
    sbx.files.rename("w2/old", "w2/moved")
    wanted = {
        (CREATE, "old/f.txt"),
        (CREATE, "x"),
        (CREATE, "x/y/g.txt"),
        (RENAME, "old"),
        (CREATE, "moved"),
    }
    _collect(handle, wanted)
    handle.stop()


def test_the_directory_going_away_ends_the_watch(sbx: Sandbox) -> None:
    sbx.files.make_dir("w5/gone")
    handle = sbx.files.watch_dir("w5/gone")
    sbx.files.write("w5/gone/a.txt", "x")
    _collect(handle, {(CREATE, "a.txt")})
    sbx.files.remove("w5/gone")
    seen: list[FilesystemEvent] = []

    def ended() -> bool:
        try:
            seen.extend(handle.get_new_events())
        except NotFoundException as exc:
            assert "removed or moved" in str(exc)
            return True
        return False

    wait_until(ended, "the watcher to end")
    assert (REMOVE, "a.txt") in {(e.type, e.name) for e in seen}  # handed out before the end

    async def stream() -> Exception | None:
        asbx = await AsyncSandbox.connect(sbx.sandbox_id)
        await asbx.files.make_dir("w5/gone2")
        exits: asyncio.Queue[Exception | None] = asyncio.Queue()
        await asbx.files.watch_dir(
            "w5/gone2", on_event=lambda e: None, on_exit=exits.put_nowait, timeout=0
        )
        await asbx.files.remove("w5/gone2")
        return await asyncio.wait_for(exits.get(), 30)

    assert asyncio.run(stream()) is None  # a clean end


def test_watcher_quota(sbx: Sandbox) -> None:
    sbx.files.make_dir("w6")
    handles = [sbx.files.watch_dir("w6") for _ in range(SANDBOX_MAX)]
    try:
        with pytest.raises(RateLimitException, match="per sandbox"):
            sbx.files.watch_dir("w6")
    finally:
        for handle in handles:
            handle.stop()
    sbx.files.watch_dir("w6").stop()  # room again


def _race(sandbox: Sandbox, n: int) -> list[WatchHandle]:
    """``n`` watchers created at once: those made (every other one refused by the quota)."""
    with ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(sandbox.files.watch_dir, "race") for _ in range(n)]
    made = []
    for f in futures:
        try:
            made.append(f.result())
        except RateLimitException as exc:
            assert "watcher quota" in str(exc)
    return made


def test_concurrent_creates_stay_within_the_limits(stack: Stack, key: str) -> None:
    """Creates racing for the last places: never more than the sandbox's or the tenant's
    limit pass (the check and the count are one script), whatever the interleaving."""
    api_key = new_tenant(stack, "e2bwatch-race")
    a, b = Sandbox.create(api_key=api_key), Sandbox.create(api_key=api_key)
    tenant = _tenant(stack, a.sandbox_id)
    held: list[WatchHandle] = []
    try:
        for sandbox, most in ((a, SANDBOX_MAX), (b, TENANT_MAX - SANDBOX_MAX)):
            sandbox.files.make_dir("race")
            sandbox.files.watch_dir("race").stop()  # the first watch's start is behind us
            made = _race(sandbox, 3 * SANDBOX_MAX)
            held += made
            assert 0 < len(made) <= most
            assert stack.redis.zcard(keys.sandbox_watches(sandbox.sandbox_id)) == len(made)
            # Filled one by one up to its place, never past it.
            while len(made) < most:
                made.append(sandbox.files.watch_dir("race"))
                held.append(made[-1])
            with pytest.raises(RateLimitException, match="watcher quota"):
                sandbox.files.watch_dir("race")
        assert stack.redis.zcard(keys.tenant_watches(tenant)) == TENANT_MAX
    finally:
        for handle in held:
            handle.stop()
        a.kill()
        b.kill()


def test_bad_paths(sbx: Sandbox) -> None:
    sbx.files.write("w3/file.txt", "x")
    with pytest.raises(NotFoundException):
        sbx.files.watch_dir("w3/missing")
    with pytest.raises(InvalidArgumentException):
        sbx.files.watch_dir("w3/file.txt")

    async def run() -> None:
        asbx = await AsyncSandbox.connect(sbx.sandbox_id)
        with pytest.raises(NotFoundException):
            await asbx.files.watch_dir("w3/missing", on_event=lambda e: None)
        with pytest.raises(InvalidArgumentException):
            await asbx.files.watch_dir("w3/file.txt", on_event=lambda e: None)

    asyncio.run(run())


def test_async_watch_dir_stream(stack: Stack, sbx: Sandbox) -> None:
    tenant = _tenant(stack, sbx.sandbox_id)
    wanted = {(CREATE, "x.txt"), (CREATE, "sub"), (CREATE, "sub/y.txt"), (REMOVE, "x.txt")}

    async def run() -> list[FilesystemEvent]:
        asbx = await AsyncSandbox.connect(sbx.sandbox_id)
        await asbx.files.make_dir("aw")
        got: list[FilesystemEvent] = []
        done = asyncio.Event()

        def on_event(event: FilesystemEvent) -> None:
            got.append(event)
            if wanted <= {(e.type, e.name) for e in got}:
                done.set()

        handle = await asbx.files.watch_dir("aw", on_event=on_event, recursive=True, timeout=0)
        assert Slots(stack.redis).count(STREAMS, tenant) == 1  # the stream holds a slot
        await asbx.files.write("aw/x.txt", "1")
        await asbx.files.make_dir("aw/sub")
        await asbx.files.write("aw/sub/y.txt", "2")
        await asbx.files.remove("aw/x.txt")
        await asyncio.wait_for(done.wait(), 30)
        await handle.stop()
        return got

    got = asyncio.run(run())
    assert wanted <= {(e.type, e.name) for e in got}
    # The client went away: the web notices at its next keepalive, and lets go.
    wait_until(lambda: Slots(stack.redis).count(STREAMS, tenant) == 0, "the slot freed", 60)
    wait_until(
        lambda: stack.redis.zcard(keys.sandbox_watches(sbx.sandbox_id)) == 0,
        "the stream's watcher forgotten",
        60,
    )


def test_another_tenants_or_sandboxes_watcher_is_not_found(stack: Stack, sbx: Sandbox) -> None:
    sbx.files.make_dir("w4")
    handle = sbx.files.watch_dir("w4")
    watcher = handle._watcher_id
    other = Sandbox.create(api_key=new_tenant(stack, "e2bwatch-other"))
    mine_too = Sandbox.create()  # the same tenant, another sandbox
    try:
        for sandbox in (other, mine_too):
            foreign = WatchHandle(
                sandbox.files._rpc, watcher, sandbox.files._connection_config, sbx._envd_version
            )
            with pytest.raises(NotFoundException):
                foreign.get_new_events()
            with pytest.raises(NotFoundException):
                foreign.stop()
        sbx.files.write("w4/still.txt", "watched")  # untouched by those attempts
        _collect(handle, {(CREATE, "still.txt")})
    finally:
        other.kill()
        mine_too.kill()
        handle.stop()


def test_a_deleted_sandbox_ends_its_watchers(stack: Stack, key: str) -> None:
    doomed = Sandbox.create()
    doomed.files.make_dir("d/sub")
    handles = [doomed.files.watch_dir("d"), doomed.files.watch_dir("d/sub", recursive=True)]
    watchers = [h._watcher_id for h in handles]
    doomed.files.write("d/a.txt", "x")
    _collect(handles[0], {(CREATE, "a.txt")})
    assert all(_keys_of(stack, w) for w in watchers)
    tenant = _tenant(stack, doomed.sandbox_id)
    doomed.kill()

    def nothing_left() -> bool:
        left = sum(_keys_of(stack, w) for w in watchers)
        left += stack.redis.exists(keys.sandbox_watches(doomed.sandbox_id))
        members = stack.redis.zrange(keys.tenant_watches(tenant), 0, -1)
        return left == 0 and not {m.decode() for m in members} & set(watchers)

    wait_until(nothing_left, "the watchers' keys gone")
    with pytest.raises(SandboxException):
        handles[0].get_new_events()


def test_a_flood_stays_bounded(stack: Stack, key: str, sbx: Sandbox) -> None:
    sbx.files.make_dir("flood")
    handle = sbx.files.watch_dir("flood")
    watcher = handle._watcher_id
    stream = keys.watch_events(watcher)
    _run(stack, key, sbx.sandbox_id, "cd /home/user/flood && seq 1 20000 | xargs touch")
    assert stack.redis.xlen(stream) <= MAX_EVENTS
    used = stack.redis.memory_usage(stream) or 0
    print(f"\nwatch stream after 20,000 files: {stack.redis.xlen(stream)} entries, {used} bytes")
    assert used < 1 << 20
    # What is read is at most the stream's cap, every name one of the files (the events lost
    # come as UNSPECIFIED, which the SDK skips).
    got = handle.get_new_events()
    assert 0 < len(got) <= MAX_EVENTS
    names = {str(i) for i in range(1, 20001)}
    assert {e.name for e in got} <= names
    # The watch goes on after the flood (the first files may still meet the rate limit while
    # the host drains the flood's last events: one more is written until one is seen).
    written: list[str] = []

    def seen_after() -> bool:
        written.append(f"after-{len(written)}.txt")
        sbx.files.write(f"flood/{written[-1]}", "x")
        return bool({e.name for e in handle.get_new_events()} & set(written))

    wait_until(seen_after, "a file written after the flood")
    handle.stop()


def test_a_worker_restart(stack: Stack, key: str, sbx: Sandbox) -> None:
    """A watcher is taken up again by the restarted worker; one whose host stopped
    following it (its beat stale) answers not_found, never a hang."""
    sbx.files.make_dir("r1")
    sbx.files.make_dir("r2")
    kept = sbx.files.watch_dir("r1")
    lost = sbx.files.watch_dir("r2")
    stack.stop_process(f"worker-{HOST}")
    assert kept.get_new_events() == []  # answered while the worker is away
    # As if the worker had been away longer than shared.watches.STALE:
    stack.redis.hset(keys.watch(lost._watcher_id), "beat", 1)
    with pytest.raises(NotFoundException, match="stopped following"):
        lost.get_new_events()
    assert _keys_of(stack, lost._watcher_id) == 0
    stack.start_host(HOST)
    wait_until(lambda: HOST in stack.alive_hosts(), "the worker back", 90)
    sbx.files.write("r1/after.txt", "x")
    _collect(kept, {(CREATE, "after.txt")})
    kept.stop()
