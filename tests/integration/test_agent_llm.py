"""The deictic agent end to end: the official SDKs pointed at a fake vendor server on loopback,
a real WebSocket client, a real sandbox."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from devstack.stack import Stack
from tests.fake_llm import FakeLLM, sent_key, tool_results
from tests.integration.client import Client
from tests.integration.session_helpers import new_tenant, recv, until, ws_connect

VENDORS = ["anthropic", "openai"]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeLLM]:
    with FakeLLM() as f:
        yield f


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {
        "PADDOCK_AUTH": "on",
        "PADDOCK_LLM_ALLOWED_HOSTS": "127.0.0.1",
        "PADDOCK_LLM_TIMEOUT": "3",
    }
    with Stack(tmp_path_factory.mktemp("agent"), env=env) as st:
        yield st


@pytest.fixture(autouse=True)
def fresh_script(fake: FakeLLM) -> None:
    fake.clear()


@pytest.fixture(scope="module")
def client(stack: Stack) -> Client:
    return Client(stack, new_tenant(stack, "agent"), bearer=True)


def _session(client: Client, fake: FakeLLM, vendor: str, bundle: str, **agent: int) -> dict:
    if not client.req("GET", f"/v1/tenants/me/secrets/{bundle}").ok:
        client.bundle(bundle, {"LLM_API_KEY": f"key-one-{bundle}"})
    return client.agent_session(
        agent={"kind": "deictic", **agent},
        template="standard",
        secrets=[bundle],
        llm={"vendor": vendor, "model": "test-model", "base_url": fake.base_url(vendor)},
    )


def _task(s: dict, prompt: str, query_token: bool = False) -> list[dict]:
    with ws_connect(s["connect_url"], s["jwt"], query_token=query_token) as ws:
        assert recv(ws)["type"] == "ready"
        ws.send(json.dumps({"type": "task", "prompt": prompt}))
        return until(ws, "exit", timeout=120)


@pytest.mark.parametrize("query_token", [False, True])
@pytest.mark.parametrize("vendor", VENDORS)
def test_list_files_in_workspace(
    client: Client, fake: FakeLLM, vendor: str, query_token: bool
) -> None:
    s = _session(client, fake, vendor, f"llm-{vendor}")
    sandbox = client.req("GET", f"/v1/sessions/{s['chat_session_id']}").json()["sandbox_id"]
    for name in ("notes.txt", "plan.md"):
        r = client.req(
            "PUT",
            f"/sessions/{sandbox}/filesystem/file",
            params={"path": f"/workspace/{name}"},
            json={"content": "x"},
        )
        assert r.status_code == 204
    before = len(fake.requests)
    fake.add(
        FakeLLM.tool("run_command", {"command": "ls /workspace"}),
        FakeLLM.text("There are two files: notes.txt and plan.md."),
    )
    frames = _task(s, "List files in /workspace", query_token)
    assert [f["type"] for f in frames] == ["task_started", "tool_call", "stdout", "message", "exit"]
    seqs = [f["seq"] for f in frames]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert frames[1]["name"] == "run_command"
    assert frames[1]["input"] == {"command": "ls /workspace"}
    assert frames[2]["data"] == "notes.txt\nplan.md\n"
    assert frames[3]["text"] == "There are two files: notes.txt and plan.md."
    assert frames[4]["exit_code"] == 0 and frames[4]["stop_reason"] == "end_turn"
    # What went to the vendor: the prompt, then the tool's real output.
    sent = fake.requests[before:]
    assert [r.vendor for r in sent] == [vendor, vendor]
    assert sent_key(sent[0]) == f"key-one-llm-{vendor}"
    assert "List files in /workspace" in json.dumps(sent[0].body)
    assert any("notes.txt" in t and "plan.md" in t for t in tool_results(sent[1].body))
    client.req("DELETE", f"/v1/sessions/{s['chat_session_id']}")


@pytest.mark.parametrize("vendor", VENDORS)
def test_rotated_key_is_used_at_the_next_call(client: Client, fake: FakeLLM, vendor: str) -> None:
    bundle = f"rotate-{vendor}"
    s = _session(client, fake, vendor, bundle)
    fake.add(FakeLLM.text("first"))
    _task(s, "hello")
    assert sent_key(fake.requests[-1]) == f"key-one-{bundle}"
    with ws_connect(s["connect_url"], s["jwt"]) as ws:
        ready = recv(ws)
        r = client.req(
            "PUT",
            f"/v1/tenants/me/secrets/{bundle}",
            json={"values": {"LLM_API_KEY": "key-two-rotated"}},
        )
        assert r.status_code == 200
        frames = until(ws, "secrets_updated")
        assert frames[-1] == {
            "seq": ready["last_seq"] + 1,
            "type": "secrets_updated",
            "name": bundle,
            "version": 2,
        }
        fake.add(FakeLLM.text("second"))
        ws.send(json.dumps({"type": "task", "prompt": "again"}))
        until(ws, "exit")
    assert sent_key(fake.requests[-1]) == "key-two-rotated"
    client.req("DELETE", f"/v1/sessions/{s['chat_session_id']}")


@pytest.mark.parametrize("vendor", VENDORS)
@pytest.mark.parametrize(
    ("replies", "code"),
    [
        ([FakeLLM.error(401)], "llm_auth_failed"),
        (
            [FakeLLM.error(429, retry_after=0), FakeLLM.error(429, retry_after=0)],
            "llm_rate_limited",
        ),
        ([FakeLLM.error(500), FakeLLM.error(500)], "llm_unavailable"),
        ([FakeLLM.slow(8), FakeLLM.slow(8)], "llm_timeout"),
    ],
)
def test_llm_errors_end_the_task_not_the_session(
    client: Client, fake: FakeLLM, vendor: str, replies: list, code: str
) -> None:
    s = _session(client, fake, vendor, f"err-{vendor}")
    fake.add(*replies)
    frames = _task(s, "do something")
    assert [f["type"] for f in frames] == ["task_started", "error", "exit"]
    assert frames[1]["code"] == code and "key-one" not in frames[1]["message"]
    assert frames[2]["stop_reason"] == "error" and frames[2]["exit_code"] != 0
    fake.add(FakeLLM.text("back to normal"))
    frames = _task(s, "and now?")
    assert frames[-2]["text"] == "back to normal" and frames[-1]["exit_code"] == 0
    client.req("DELETE", f"/v1/sessions/{s['chat_session_id']}")


def test_turn_limit_and_cancel(client: Client, fake: FakeLLM) -> None:
    s = _session(client, fake, "anthropic", "limits", max_turns=2)
    fake.add(
        FakeLLM.tool("run_command", {"command": "echo 1"}),
        FakeLLM.tool("run_command", {"command": "echo 2"}),
        FakeLLM.tool("run_command", {"command": "echo 3"}),
    )
    frames = _task(s, "loop forever")
    assert frames[-1]["stop_reason"] == "max_turns"
    assert [f["input"]["command"] for f in frames if f["type"] == "tool_call"] == [
        "echo 1",
        "echo 2",
    ]
    fake.add(FakeLLM.tool("run_command", {"command": "echo started; sleep 600"}))
    with ws_connect(s["connect_url"], s["jwt"]) as ws:
        recv(ws)
        ws.send(json.dumps({"type": "task", "prompt": "wait a long time"}))
        until(ws, "stdout")
        ws.send(json.dumps({"type": "cancel"}))
        assert until(ws, "exit")[-1]["stop_reason"] == "cancelled"
    client.req("DELETE", f"/v1/sessions/{s['chat_session_id']}")


def test_file_tools_work_in_the_sandbox(client: Client, fake: FakeLLM) -> None:
    s = _session(client, fake, "openai", "files")
    before = len(fake.requests)
    fake.add(
        FakeLLM.tool("write_file", {"path": "hello.py", "content": "print('hi')\n"}),
        FakeLLM.tool("run_command", {"command": "python3 hello.py"}),
        FakeLLM.tool("read_file", {"path": "/workspace/hello.py"}),
        FakeLLM.tool("read_file", {"path": "/nope"}),
        FakeLLM.text("ok"),
    )
    frames = _task(s, "write and run")
    assert "".join(f["data"] for f in frames if f["type"] == "stdout") == "hi\n"
    results = [tool_results(r.body) for r in fake.requests[before + 1 :]]
    assert "wrote 12 bytes to /workspace/hello.py" in results[0][0]
    assert "print('hi')" in results[2][0]
    assert "no such file" in results[3][0]
    client.req("DELETE", f"/v1/sessions/{s['chat_session_id']}")


@pytest.mark.parametrize("vendor", VENDORS)
def test_a_session_is_one_conversation(client: Client, fake: FakeLLM, vendor: str) -> None:
    s = _session(client, fake, vendor, f"memory-{vendor}")
    before = len(fake.requests)
    fake.add(
        FakeLLM.tool("run_command", {"command": "echo 42 > number.txt"}), FakeLLM.text("Noted: 42.")
    )
    _task(s, "Remember the number 42.")
    # Cancelled in the middle of a tool call: the next task still continues the conversation.
    fake.add(FakeLLM.tool("run_command", {"command": "echo wait; sleep 600"}))
    with ws_connect(s["connect_url"], s["jwt"]) as ws:
        recv(ws)
        ws.send(json.dumps({"type": "task", "prompt": "Wait for a long time."}))
        until(ws, "stdout")
        ws.send(json.dumps({"type": "cancel"}))
        assert until(ws, "exit")[-1]["stop_reason"] == "cancelled"
    fake.add(FakeLLM.text("It was 42."))
    frames = _task(s, "Which number was it?")
    assert frames[-2]["text"] == "It was 42." and frames[-1]["exit_code"] == 0
    last = json.dumps(fake.requests[-1].body)
    for earlier in (
        "Remember the number 42.",
        "Noted: 42.",
        "Wait for a long time.",
        "Which number was it?",
    ):
        assert earlier in last
    assert len(fake.requests) - before == 4
    client.req("DELETE", f"/v1/sessions/{s['chat_session_id']}")
