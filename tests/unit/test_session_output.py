"""What an agent session may stream: its own cap and its tenant's hourly window
(shared/sessions.py charge_output)."""

from __future__ import annotations

import time

import fakeredis

from shared import keys
from shared.sessions import Sessions


def test_session_output_charge_counts_session_and_tenant_window() -> None:
    r = fakeredis.FakeRedis()
    sessions = Sessions(r)
    assert sessions.charge_output("s1", "t", 60, session_cap=100, tenant_cap=150) is None
    assert sessions.charge_output("s1", "t", 50, session_cap=100, tenant_cap=150) == "session"
    assert sessions.charge_output("s2", "t", 95, session_cap=100, tenant_cap=150) == "tenant"
    assert sessions.charge_output("s2", "t", 90, session_cap=100, tenant_cap=150) is None
    assert sessions.charge_output("s3", "other", 100, session_cap=100, tenant_cap=150) is None
    # Bytes of earlier hours still count while history may hold them.
    hour = int(time.time() // 3600)
    r.set(keys.tenant_stream_bytes("u", hour - 3), 140)
    assert sessions.charge_output("s4", "u", 20, session_cap=100, tenant_cap=150) == "tenant"
    r.delete(keys.tenant_stream_bytes("u", hour - 3))
    r.set(keys.tenant_stream_bytes("u", hour - 4), 140)  # older than any history: forgotten
    assert sessions.charge_output("s4", "u", 20, session_cap=100, tenant_cap=150) is None
