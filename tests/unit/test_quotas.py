"""The sandbox and agent-session quotas' Lua (Store.place, Sessions.reserve) and the usage
document, on fakeredis (which runs Lua through lupa). The real stack's side, concurrency over
HTTP included, is tests/integration/test_quotas.py."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import fakeredis
import pytest

from shared import keys
from shared.accounts import Accounts
from shared.crypto import new_fernet_key
from shared.errors import NoCapacity, QuotaExceeded
from shared.sessions import ChatSession, Sessions
from shared.settings import Settings
from shared.slots import WAITS, Slots
from shared.store import Store
from web.api.v1.openapi import build_spec
from web.app import create_app

pytest.importorskip("lupa", reason="fakeredis runs Lua scripts only with lupa installed")


@pytest.fixture
def r() -> fakeredis.FakeRedis:
    r = fakeredis.FakeRedis()
    Store(r).heartbeat("h1", 100, ["Bash"], ttl=60)
    return r


def _place(store: Store, sandbox_id: str, tenant: str = "t1", limit: int = 3) -> str:
    return store.place(sandbox_id, tenant, "Bash", limit, 3600).host_id


def test_place_records_the_sandbox_and_holds_both_slots(r: fakeredis.FakeRedis) -> None:
    store = Store(r)
    assert _place(store, "sb1") == "h1"
    sb = store.get_sandbox("t1", "sb1")
    assert (sb.host_id, sb.template, sb.status) == ("h1", "Bash", "creating")
    assert store.tenant_sandbox_ids("t1") == ["sb1"] == store.host_sandbox_ids("h1")
    last, expires = store.sandbox_times("sb1")
    assert last is not None and expires is not None and 3599 < expires - last < 3601


def test_sandbox_quota_refuses_past_the_limit_and_names_the_setting(
    r: fakeredis.FakeRedis,
) -> None:
    store = Store(r)
    for i in range(3):
        _place(store, f"sb{i}")
    with pytest.raises(QuotaExceeded) as exc:
        _place(store, "sb3")
    assert "PADDOCK_TENANT_MAX_SANDBOXES" in exc.value.message and "3" in exc.value.message
    assert exc.value.status == 429 and exc.value.retry_after > 0
    # The refusal wrote nothing; another tenant is untouched; a purge frees a slot.
    assert not store.raw_sandbox("sb3") and "sb3" not in store.host_sandbox_ids("h1")
    assert _place(store, "other", tenant="t2") == "h1"
    store.purge_sandbox("sb0")
    assert _place(store, "sb4") == "h1"


def test_concurrent_places_never_overshoot(r: fakeredis.FakeRedis) -> None:
    store = Store(r)

    def attempt(i: int) -> bool:
        try:
            _place(store, f"race{i}")
            return True
        except QuotaExceeded:
            return False

    with ThreadPoolExecutor(12) as pool:
        won = list(pool.map(attempt, range(12)))
    assert won.count(True) == 3
    assert len(store.tenant_sandbox_ids("t1")) == 3 == len(store.host_sandbox_ids("h1"))


def test_no_capacity_writes_nothing(r: fakeredis.FakeRedis) -> None:
    store = Store(r)
    with pytest.raises(NoCapacity):
        store.place("sbx", "t1", "Cobol", 3, 3600)
    assert not store.raw_sandbox("sbx") and store.tenant_sandbox_ids("t1") == []


def test_a_stale_id_in_the_tenant_set_holds_no_slot(r: fakeredis.FakeRedis) -> None:
    store = Store(r)
    r.sadd(keys.tenant_sandboxes("t1"), "gone1", "gone2", "gone3")
    assert _place(store, "sb1") == "h1"
    assert store.tenant_sandbox_ids("t1") == ["sb1"]


def _session(sessions: Sessions, session_id: str, tenant: str = "t1", ttl: float = 600) -> None:
    now = time.time()
    sessions.create(
        ChatSession(
            session_id=session_id,
            tenant_id=tenant,
            sandbox_id="sbx",
            host_id="h1",
            template="standard",
            agent={"kind": "shell"},
            llm={},
            secrets=[],
            user_id="",
            state="running",
            created_at=now,
            expires_at=now + ttl,
        )
    )


def test_session_quota_counts_live_and_starting_sessions(r: fakeredis.FakeRedis) -> None:
    sessions = Sessions(r)
    _session(sessions, "ses_live")
    _session(sessions, "ses_expired", ttl=-1)  # past expires_at, not yet reaped: not live
    _session(sessions, "ses_ended")
    ended = sessions.load("ses_ended")
    assert ended is not None and sessions.end(ended, keep_for=60)
    sessions.reserve("t1", "ses_new", 3, hold=60)  # starting: counts
    assert sessions.live_count("t1") == 2
    sessions.reserve("t1", "ses_new2", 3, hold=60)
    with pytest.raises(QuotaExceeded) as exc:
        sessions.reserve("t1", "ses_new3", 3, hold=60)
    assert "PADDOCK_TENANT_MAX_SESSIONS" in exc.value.message
    sessions.reserve("t2", "ses_other", 3, hold=60)  # another tenant is untouched
    # A failed create gives its place back; a finished one turns it into the session.
    sessions.release("t1", "ses_new2")
    _session(sessions, "ses_new")
    assert sessions.live_count("t1") == 2
    assert r.zcard(keys.slots("session-creates", "t1")) == 0


def test_a_dead_creator_stops_holding_a_session_place(r: fakeredis.FakeRedis) -> None:
    sessions = Sessions(r)
    sessions.reserve("t1", "ses_a", 1, hold=0.05)
    with pytest.raises(QuotaExceeded):
        sessions.reserve("t1", "ses_b", 1, hold=60)
    time.sleep(0.1)
    sessions.reserve("t1", "ses_b", 1, hold=60)


def test_usage_document(r: fakeredis.FakeRedis) -> None:
    settings = Settings(jwt_secret="s" * 40, secret_key=new_fernet_key(), tenant_max_sandboxes=4)
    app = create_app(settings, redis_client=r)
    _, key = Accounts(r, "unused").create_api_key("usr_a", "k", 5)
    store = Store(r)
    _place(store, "sb1", tenant="usr_a")
    _place(store, "sb2", tenant="usr_a")
    r.sadd(keys.sandbox_running("sb2"), "p1", "p2")
    r.set(keys.sandbox_output_bytes("sb2"), 500)
    r.set(keys.tenant_output_bytes("usr_a"), 700)
    Slots(r).acquire(WAITS, "usr_a", 10, 60)
    _session(Sessions(r), "ses_1", tenant="usr_a")
    client = app.test_client()
    assert client.get("/v1/tenants/me/usage").status_code == 401
    got = client.get("/v1/tenants/me/usage", headers={"Authorization": f"Bearer {key}"})
    assert got.status_code == 200
    q = got.get_json()["quotas"]
    assert q["sandboxes"] == {
        "used": 2,
        "limit": 4,
        "setting": "PADDOCK_TENANT_MAX_SANDBOXES",
        "per": "tenant",
    }
    assert (q["agent_sessions"]["used"], q["agent_sessions"]["limit"]) == (1, 5)
    assert (q["kept_output_bytes"]["used"], q["kept_output_bytes"]["limit"]) == (700, 256 << 20)
    assert (q["concurrent_waits"]["used"], q["websockets"]["used"]) == (1, 0)
    assert q["processes_per_sandbox"] == {
        "used": 2,
        "limit": 32,
        "setting": "PADDOCK_SANDBOX_MAX_PROCESSES",
        "per": "sandbox",
        "by_sandbox": {"sb1": 0, "sb2": 2},
    }
    assert q["kept_output_bytes_per_sandbox"]["by_sandbox"] == {"sb1": 0, "sb2": 500}
    # Every name the wire carries is one the OpenAPI document describes, and back.
    doc = build_spec()["components"]["schemas"]
    assert set(q) == set(doc["Quotas"]["properties"])
    for quota in q.values():
        assert (
            set(doc["QuotaUsage"]["required"]) <= set(quota) <= set(doc["QuotaUsage"]["properties"])
        )
