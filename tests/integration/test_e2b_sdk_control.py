"""Today's official E2B SDK (``pip install e2b``), unchanged, against Paddock's control API: only
the environment variables a user would set (E2B_API_URL, E2B_API_KEY; E2B_DOMAIN and
E2B_SANDBOX_URL point at loopback so nothing can leave the machine).

``Sandbox.create`` does not reach the sandbox's envd (no health check), so the SDK's own
classes are driven end to end here; the in-sandbox protocol (commands, files) is not part of
this API."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import docker.errors
import pytest
import requests
from e2b import (
    ALL_TRAFFIC,
    AsyncSandbox,
    AuthenticationException,
    NotFoundException,
    RateLimitException,
    Sandbox,
    SandboxException,
    SandboxQuery,
    SandboxState,
)

from devstack.stack import Stack
from shared import keys
from tests.integration.client import wait_until
from tests.integration.e2b_helpers import sdk_env
from tests.integration.session_helpers import new_tenant

MAX_SANDBOXES = 3


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"PADDOCK_AUTH": "on", "PADDOCK_TENANT_MAX_SANDBOXES": str(MAX_SANDBOXES)}
    with Stack(tmp_path_factory.mktemp("e2bsdk"), env=env) as st:
        yield st


@pytest.fixture(scope="module")
def key(stack: Stack) -> Iterator[str]:
    """A tenant's API key, set as E2B_API_KEY with the stack as E2B_API_URL for the module."""
    api_key = new_tenant(stack, "e2bsdk")
    with sdk_env(stack, api_key):
        yield api_key


@pytest.fixture(autouse=True)
def _clean(stack: Stack, key: str) -> Iterator[None]:
    """Each test starts and ends with none of the tenant's sandboxes (the quota is small)."""
    yield
    for info in Sandbox.list().next_items():
        Sandbox.kill(info.sandbox_id)


def _container_state(stack: Stack, sandbox_id: str) -> str | None:
    for c in stack.containers():
        if c.labels.get("paddock.sandbox") == sandbox_id:
            try:
                c.reload()
            except docker.errors.NotFound:  # removed between the listing and the look
                return None
            return str(c.status)
    return None


def _ids(infos: list) -> set[str]:
    return {i.sandbox_id for i in infos}


def test_create_info_timeout_list_kill(stack: Stack, key: str) -> None:
    sbx = Sandbox.create(
        metadata={"app": "t1", "who": "a b&c"}, envs={"SECRET": "s3cr3t"}, timeout=120
    )
    sid = sbx.sandbox_id
    info = sbx.get_info()
    assert info.sandbox_id == sid and info.state == SandboxState.RUNNING
    assert info.template_id == "standard"  # `base`, the SDK's default
    assert info.metadata == {"app": "t1", "who": "a b&c"}
    left = (info.end_at - datetime.now(UTC)).total_seconds()
    assert 60 < left <= 121
    # An ordinary Paddock sandbox: /v1 lists it, with the same key.
    v1 = requests.get(
        f"{stack.url}/v1/sandboxes", headers={"Authorization": f"Bearer {key}"}, timeout=30
    ).json()
    assert sid in {s["sandbox_id"] for s in v1["sandboxes"]}
    # The access token and the env vars are kept sealed; the token's digest checks it.
    record = {k.decode(): v.decode() for k, v in stack.redis.hgetall(keys.e2b_sandbox(sid)).items()}
    token = sbx._envd_access_token
    assert token and token not in str(record) and "s3cr3t" not in str(record)
    assert record["token_sha256"] == hashlib.sha256(token.encode()).hexdigest()

    sbx.set_timeout(1800)
    left = (Sandbox.get_info(sid).end_at - datetime.now(UTC)).total_seconds()
    assert 1700 < left <= 1801
    sbx.set_timeout(30)  # shorter works too
    left = (sbx.get_info().end_at - datetime.now(UTC)).total_seconds()
    assert 0 < left <= 31

    found = Sandbox.list(query=SandboxQuery(metadata={"who": "a b&c"})).next_items()
    assert _ids(found) == {sid} and found[0].metadata["app"] == "t1"
    assert Sandbox.list(query=SandboxQuery(metadata={"who": "other"})).next_items() == []

    assert sbx.kill() is True
    assert _container_state(stack, sid) is None
    with pytest.raises(NotFoundException):
        Sandbox.get_info(sid)
    assert Sandbox.kill(sid) is False


def test_the_timeout_ends_the_sandbox(stack: Stack, key: str) -> None:
    sbx = Sandbox.create(timeout=600)
    sbx.set_timeout(1)  # the reaper removes it once its end has passed

    def gone() -> bool:
        try:
            sbx.get_info()
        except NotFoundException:
            return True
        return False

    wait_until(gone, "the sandbox removed at its end", timeout=60)
    wait_until(lambda: _container_state(stack, sbx.sandbox_id) is None, "its container removed")


def _policy(stack: Stack, key: str, sid: str) -> dict:
    r = requests.get(
        f"{stack.url}/v1/sandboxes/{sid}", headers={"Authorization": f"Bearer {key}"}, timeout=30
    )
    assert r.status_code == 200, r.text
    network: dict = r.json()["network"]
    return network


def test_network_options_are_the_egress_policy(stack: Stack, key: str) -> None:
    offline = Sandbox.create(allow_internet_access=False)
    assert offline.get_info().allow_internet_access is False
    assert _policy(stack, key, offline.sandbox_id)["mode"] == "none"
    only = Sandbox.create(network={"allow_out": ["1.1.1.1"], "deny_out": [ALL_TRAFFIC]})
    policy = _policy(stack, key, only.sandbox_id)
    assert policy == {"mode": "internet", "allow_out": ["1.1.1.1/32"], "deny_out": ["0.0.0.0/0"]}
    info = only.get_info()
    assert info.allow_internet_access is True
    # No internet but one address: E2B's allow_out wins over its implied deny-all.
    narrow = Sandbox.create(allow_internet_access=False, network={"allow_out": ["1.1.1.0/24"]})
    policy = _policy(stack, key, narrow.sandbox_id)
    assert policy == {"mode": "internet", "allow_out": ["1.1.1.0/24"], "deny_out": ["0.0.0.0/0"]}


def test_list_pages_filters_and_quota(stack: Stack, key: str) -> None:
    made = [Sandbox.create(metadata={"group": "g1" if i < 2 else "g2"}) for i in range(3)]
    ids = [s.sandbox_id for s in made]
    pager = Sandbox.list(limit=2)
    first = pager.next_items()
    assert len(first) == 2 and pager.has_next
    second = pager.next_items()
    assert not pager.has_next
    assert _ids(first) | _ids(second) == set(ids) and not _ids(first) & _ids(second)
    g1 = Sandbox.list(query=SandboxQuery(metadata={"group": "g1"})).next_items()
    assert _ids(g1) == set(ids[:2])
    assert Sandbox.list(query=SandboxQuery(state=[SandboxState.PAUSED])).next_items() == []
    # The tenant's quota (3) is used up: the SDK's rate-limit exception, nothing made.
    with pytest.raises(RateLimitException, match="sandbox quota"):
        Sandbox.create()
    assert len(Sandbox.list().next_items()) == MAX_SANDBOXES


def test_pause_connect_resume_and_kill_paused(stack: Stack, key: str) -> None:
    sbx = Sandbox.create(timeout=300)
    sid = sbx.sandbox_id
    assert sbx.pause() is True
    assert _container_state(stack, sid) == "paused"
    assert Sandbox.get_info(sid).state == SandboxState.PAUSED
    # Paused: no idle time counts (out of the idle index), its end is the lifetime's.
    assert stack.redis.zscore(keys.idle_index(), sid) is None
    assert Sandbox.pause(sid) is False  # already paused: the SDK's 409
    paused = Sandbox.list(query=SandboxQuery(state=[SandboxState.PAUSED])).next_items()
    assert _ids(paused) == {sid}
    # Requests that act inside the sandbox say it is paused (the 2023 API's route here).
    r = requests.post(
        f"{stack.url}/sessions/{sid}/processes",
        json={"cmd": "true"},
        headers={"X-API-Key": key},
        timeout=30,
    )
    assert r.status_code == 409
    usage = Sandbox.get_metrics(sid)  # read from the host's cgroup, paused or not
    assert len(usage) == 1 and usage[0].mem_used > 0

    again = Sandbox.connect(sid, timeout=200)  # resumes it
    assert again.sandbox_id == sid and again._envd_access_token == sbx._envd_access_token
    assert _container_state(stack, sid) == "running"
    info = Sandbox.get_info(sid)
    assert info.state == SandboxState.RUNNING
    assert 100 < (info.end_at - datetime.now(UTC)).total_seconds() <= 201
    assert stack.redis.zscore(keys.idle_index(), sid) is not None
    Sandbox.connect(sid)  # a running one: just answered
    assert _container_state(stack, sid) == "running"

    assert sbx.pause() is True
    assert sbx.kill() is True  # a paused sandbox is killed too
    assert _container_state(stack, sid) is None
    with pytest.raises(NotFoundException):
        Sandbox.connect(sid)


def test_metrics(stack: Stack, key: str) -> None:
    sbx = Sandbox.create()
    [m] = sbx.get_metrics()
    assert m.cpu_count >= 1 and 0 <= m.cpu_used_pct <= 100
    assert 0 < m.mem_used <= m.mem_total and m.mem_total <= 1 << 30
    assert 0 < m.disk_used < m.disk_total
    assert sbx.get_metrics(start=datetime.fromtimestamp(time.time() + 3600, UTC)) == []


def test_errors_and_tenancy(stack: Stack, key: str) -> None:
    sbx = Sandbox.create()
    sid = sbx.sandbox_id
    with pytest.raises(NotFoundException):
        Sandbox.get_info("nosuchsandbox-00000000")
    with pytest.raises(AuthenticationException):
        Sandbox.list(api_key="pdk_live_not-a-key").next_items()
    with pytest.raises(AuthenticationException):
        Sandbox.create(api_key="pdk_live_not-a-key")
    # Another tenant's key: the same answers as for an id that does not exist.
    other = new_tenant(stack, "e2bsdk-other")
    with pytest.raises(NotFoundException):
        Sandbox.get_info(sid, api_key=other)
    with pytest.raises(NotFoundException):
        Sandbox.set_timeout(sid, 10, api_key=other)
    with pytest.raises(NotFoundException):
        Sandbox.pause(sid, api_key=other)
    with pytest.raises(NotFoundException):
        Sandbox.connect(sid, api_key=other)
    assert Sandbox.kill(sid, api_key=other) is False
    assert Sandbox.list(api_key=other).next_items() == []
    assert Sandbox.get_info(sid).state == SandboxState.RUNNING
    # Bad input: a 400 naming the field, and nothing made.
    for bad in (
        {"template": "no-such-template"},
        {"network": {"allow_out": ["example.com"]}},
        {"timeout": -1},
        {"metadata": {"k": "\x00"}},
        {"lifecycle": {"on_timeout": "pause"}},
    ):
        with pytest.raises(SandboxException, match="400") as caught:
            Sandbox.create(**bad)
        assert not isinstance(caught.value, NotFoundException | RateLimitException)
    assert _ids(Sandbox.list().next_items()) == {sid}


def test_async_client(stack: Stack, key: str) -> None:
    async def scenario() -> None:
        sbx = await AsyncSandbox.create(metadata={"mode": "async"}, timeout=90)
        sid = sbx.sandbox_id
        info = await sbx.get_info()
        assert info.metadata == {"mode": "async"} and info.state == SandboxState.RUNNING
        await sbx.set_timeout(600)
        assert (await AsyncSandbox.get_info(sid)).end_at > info.end_at
        listed = await AsyncSandbox.list(
            query=SandboxQuery(metadata={"mode": "async"})
        ).next_items()
        assert _ids(listed) == {sid}
        assert await sbx.pause() is True
        assert (await AsyncSandbox.get_info(sid)).state == SandboxState.PAUSED
        again = await AsyncSandbox.connect(sid)
        assert (await again.get_info()).state == SandboxState.RUNNING
        [m] = await again.get_metrics()
        assert m.mem_used > 0
        assert await again.kill() is True
        with pytest.raises(NotFoundException):
            await AsyncSandbox.get_info(sid)

    asyncio.run(scenario())


@pytest.fixture(scope="module")
def idle_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack whose sandboxes are reaped after 3 idle seconds, with keys off (`make up`)."""
    env = {"PADDOCK_AUTH": "off", "PADDOCK_IDLE_TIMEOUT": "3"}
    with Stack(tmp_path_factory.mktemp("e2bidle"), env=env) as st:
        yield st


def test_a_paused_sandbox_is_not_reaped_for_idleness(idle_stack: Stack, key: str) -> None:
    # Keys off: the SDK insists on a key, and one that is not Paddock's is the local tenant.
    api = {"api_url": idle_stack.url, "api_key": "e2b_anything"}
    paused = Sandbox.create(timeout=600, **api)
    assert paused.pause(**api) is True
    # Made after the pause: were paused time counted, the paused one would go first.
    idle = Sandbox.create(timeout=600, **api)
    wait_until(
        lambda: _container_state(idle_stack, idle.sandbox_id) is None,
        "the running sandbox reaped for idleness",
        timeout=60,
    )
    # Idle longer than the other, and than the idle timeout: kept, still paused.
    assert Sandbox.get_info(paused.sandbox_id, **api).state == SandboxState.PAUSED
    assert _container_state(idle_stack, paused.sandbox_id) == "paused"
    with pytest.raises(AuthenticationException):  # a Paddock key is still checked
        Sandbox.list(api_url=idle_stack.url, api_key="pdk_live_unknown").next_items()
    Sandbox.connect(paused.sandbox_id, **api)  # resumed: its idle time counts again
    wait_until(
        lambda: _container_state(idle_stack, paused.sandbox_id) is None,
        "the resumed sandbox reaped for idleness",
        timeout=60,
    )
