"""A tenant's LLM base_url cannot steer the host worker to an internal service (issue 9, must
show 2): the real stack with the official SDKs in the worker, a redirector on loopback that the
operator allowed (PADDOCK_LLM_ALLOWED_HOSTS), and an "internal" service on 127.0.0.2 that is
not allowed. Before the fix, the worker followed the 307, POSTed the conversation there, and
the internal answer came back in the error frame."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import requests

from devstack.stack import Stack
from tests.fake_llm import FakeLLM
from tests.integration.client import Client
from tests.integration.session_helpers import new_tenant, recv, until, ws_connect

VENDORS = ["anthropic", "openai"]
SECRET = "INTERNAL-SECRET-51d9"
PATHS = {"anthropic": "/v1/messages", "openai": "/v1/chat/completions"}
# A request each vendor's API would take, for asking the internal service directly.
BODIES = {
    "anthropic": {"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]},
    "openai": {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {
        "PADDOCK_AUTH": "on",
        "PADDOCK_LLM_ALLOWED_HOSTS": "127.0.0.1",  # the redirector's host, not 127.0.0.2
        "PADDOCK_LLM_TIMEOUT": "10",
    }
    with Stack(tmp_path_factory.mktemp("ssrf"), env=env) as st:
        yield st


@pytest.fixture
def internal() -> Iterator[FakeLLM]:
    """The service a tenant would like to read: it answers anything with SECRET."""
    with FakeLLM([FakeLLM.error(400, SECRET)] * 5, host="127.0.0.2") as server:
        yield server


@pytest.mark.parametrize("vendor", VENDORS)
def test_a_redirect_to_an_internal_service_sends_it_nothing(
    stack: Stack, internal: FakeLLM, vendor: str
) -> None:
    client = Client(stack, new_tenant(stack, f"ssrf-{vendor}"), bearer=True)
    client.bundle("llm", {"LLM_API_KEY": "key-ssrf-test"})
    with FakeLLM() as redirector:
        redirector.add(FakeLLM.redirect(internal.url + PATHS[vendor]), FakeLLM.text("fine"))
        s = client.agent_session(
            agent={"kind": "deictic"},
            template="standard",
            secrets=["llm"],
            llm={"vendor": vendor, "model": "test-model", "base_url": redirector.base_url(vendor)},
        )
        with ws_connect(s["connect_url"], s["jwt"]) as ws:
            assert recv(ws)["type"] == "ready"
            ws.send(json.dumps({"type": "task", "prompt": "hello"}))
            frames = until(ws, "exit", timeout=120)
            # The session is not harmed: the next task talks to the endpoint as usual.
            ws.send(json.dumps({"type": "task", "prompt": "again"}))
            after = until(ws, "exit", timeout=120)
        assert len(redirector.requests) == 2  # the redirect was asked for once, not retried

    assert [f["type"] for f in frames] == ["task_started", "error", "exit"]
    assert frames[1]["code"] == "llm_redirect_refused"
    assert frames[2]["stop_reason"] == "error"
    assert after[-2]["text"] == "fine" and after[-1]["exit_code"] == 0
    assert internal.connections == 0
    # What the session keeps (and replays to any client) carries nothing from there either.
    sid = s["chat_session_id"]
    events = client.req("GET", f"/v1/sessions/{sid}/events?after=0").json()["events"]
    assert [e for e in events if e["type"] == "error"] == [frames[1]]
    stored = json.dumps(events)
    for leak in (SECRET, "127.0.0.2", "key-ssrf-test"):
        assert leak not in stored
    # The internal service was up and would have answered with its secret.
    r = requests.post(internal.url + PATHS[vendor], json=BODIES[vendor], timeout=10)
    assert SECRET in r.text
    client.req("DELETE", f"/v1/sessions/{sid}")
