"""workers.agent.llm through the real anthropic and openai SDKs, against tests/fake_llm.py."""

from __future__ import annotations

import logging
import pickle
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.fake_llm import FakeLLM, Request, sent_key, tool_results
from workers.agent.llm import Conversation, LlmError, ToolSpec, new_conversation

VENDORS = ["anthropic", "openai"]
KEY = "sk-test-0123456789abcdef"
RUN = ToolSpec(
    "run_command",
    "Run a shell command in the sandbox.",
    {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]},
)
READ = ToolSpec(
    "read_file",
    "Read a file.",
    {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
)


@pytest.fixture
def fake() -> Iterator[FakeLLM]:
    with FakeLLM() as server:
        yield server


def conversation(vendor: str, **overrides: Any) -> Conversation:
    args: dict[str, Any] = {
        "vendor": vendor,
        "model": "test-model",
        "system": "You are a test agent.",
        "tools": [RUN, READ],
        "prompt": "List files in /workspace",
        "timeout": 5.0,
        "max_tokens": 1024,
        "max_retries": 0,
    }
    args.update(overrides)
    return new_conversation(**args)


def step(conv: Conversation, fake: FakeLLM, key: str = KEY) -> Any:
    return conv.step(api_key=key, base_url=fake.base_url(conv.vendor))


def last_assistant_tool_ids(vendor: str, request: Request) -> list[str]:
    messages = request.body["messages"]
    assistant = [m for m in messages if m["role"] == "assistant"][-1]
    if vendor == "anthropic":
        return [b["id"] for b in assistant["content"] if b["type"] == "tool_use"]
    return [c["id"] for c in assistant["tool_calls"]]


@pytest.mark.parametrize("vendor", VENDORS)
def test_tool_call_then_text(vendor: str, fake: FakeLLM) -> None:
    fake.add(
        FakeLLM.tool("run_command", {"command": "ls /workspace"}, text="Let me look."),
        FakeLLM.text("Done."),
    )
    conv = conversation(vendor)

    first = step(conv, fake)
    assert first.texts == ["Let me look."]
    assert first.stop == "tool_use"
    [call] = first.tool_calls
    assert (call.name, call.input, call.input_error) == (
        "run_command",
        {"command": "ls /workspace"},
        None,
    )
    assert call.id
    assert (first.input_tokens, first.output_tokens) == (25, 12)

    conv.add_tool_results([(call, "a.txt\nb.txt\n", False)])
    second = step(conv, fake)
    assert (second.texts, second.tool_calls, second.stop) == (["Done."], [], "end_turn")

    one, two = fake.requests
    assert one.vendor == two.vendor == vendor
    assert one.body["model"] == "test-model"
    if vendor == "anthropic":
        assert one.body["system"] == "You are a test agent."
        assert one.body["max_tokens"] == 1024
        assert one.body["tools"][0] == {
            "name": "run_command",
            "description": RUN.description,
            "input_schema": RUN.input_schema,
        }
        assert one.body["messages"] == [
            {"role": "user", "content": [{"type": "text", "text": "List files in /workspace"}]}
        ]
        assistant, results = two.body["messages"][1:]
        assert assistant["role"] == "assistant"
        assert assistant["content"][1] == {
            "type": "tool_use",
            "id": call.id,
            "name": "run_command",
            "input": {"command": "ls /workspace"},
        }
        assert results == {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": call.id,
                    "content": "a.txt\nb.txt\n",
                    "is_error": False,
                }
            ],
        }
    else:
        assert one.body["messages"][0] == {"role": "system", "content": "You are a test agent."}
        assert one.body["max_completion_tokens"] == 1024
        assert one.body["tools"][0] == {
            "type": "function",
            "function": {
                "name": "run_command",
                "description": RUN.description,
                "parameters": RUN.input_schema,
            },
        }
        assistant, result = two.body["messages"][2:]
        assert assistant["role"] == "assistant"
        assert assistant["content"] == "Let me look."
        assert assistant["tool_calls"][0]["id"] == call.id
        assert assistant["tool_calls"][0]["function"]["name"] == "run_command"
        assert result == {"role": "tool", "tool_call_id": call.id, "content": "a.txt\nb.txt\n"}


@pytest.mark.parametrize("vendor", VENDORS)
def test_each_step_sends_the_key_it_was_given(vendor: str, fake: FakeLLM) -> None:
    fake.add(FakeLLM.tool("run_command", {"command": "true"}), FakeLLM.text("ok"))
    conv = conversation(vendor)
    turn = step(conv, fake, key="sk-first-key-aaaaaaaa")
    conv.add_tool_results([(turn.tool_calls[0], "", False)])
    step(conv, fake, key="sk-rotated-key-bbbbbbbb")

    one, two = fake.requests
    assert (sent_key(one), sent_key(two)) == ("sk-first-key-aaaaaaaa", "sk-rotated-key-bbbbbbbb")
    if vendor == "openai":
        assert two.headers["authorization"] == "Bearer sk-rotated-key-bbbbbbbb"
    else:
        # anthropic 2.x sends api_key as a bearer token; 0.x used x-api-key. Either is the key.
        assert "anthropic-version" in two.headers
    assert tool_results(two.body) == ["(no output)"]


@pytest.mark.parametrize("vendor", VENDORS)
def test_error_results_and_parallel_calls(vendor: str, fake: FakeLLM) -> None:
    fake.add(
        FakeLLM.tools(("read_file", {"path": "a"}), ("read_file", {"path": "b"})),
        FakeLLM.text("ok"),
    )
    conv = conversation(vendor)
    turn = step(conv, fake)
    a, b = turn.tool_calls
    assert (a.input, b.input) == ({"path": "a"}, {"path": "b"})
    # Answered out of order, and one left out: results go back in the model's order, all of them.
    conv.add_tool_results([(b, "no such file", True)])
    step(conv, fake)

    body = fake.requests[1].body
    if vendor == "anthropic":
        blocks = body["messages"][-1]["content"]
        assert [(x["tool_use_id"], x["is_error"]) for x in blocks] == [(a.id, True), (b.id, True)]
        assert tool_results(body) == ["The tool was not run.", "no such file"]
    else:
        assert [m["tool_call_id"] for m in body["messages"][-2:]] == [a.id, b.id]
        assert tool_results(body) == ["Error: The tool was not run.", "Error: no such file"]


@pytest.mark.parametrize("vendor", VENDORS)
def test_a_callable_reply_sees_the_tool_result(vendor: str, fake: FakeLLM) -> None:
    fake.add(
        FakeLLM.tool("run_command", {"command": "cat /etc/hostname"}),
        lambda body: FakeLLM.text("The host is " + tool_results(body)[0].strip()),
    )
    conv = conversation(vendor)
    turn = step(conv, fake)
    conv.add_tool_results([(turn.tool_calls[0], "sandbox-1\n", False)])
    assert step(conv, fake).texts == ["The host is sandbox-1"]
    # The script is spent: the fake answers "done".
    conv.add_prompt("Anything else?")
    assert step(conv, fake).texts == ["done"]
    assert len(fake.requests) == 3


@pytest.mark.parametrize("vendor", VENDORS)
def test_max_tokens_and_empty_replies(vendor: str, fake: FakeLLM) -> None:
    fake.add(FakeLLM.text("I was cut", stop="max_tokens"), FakeLLM.text(""), FakeLLM.text("ok"))
    conv = conversation(vendor)
    assert step(conv, fake).stop == "max_tokens"
    conv.add_prompt("go on")
    empty = step(conv, fake)
    assert (empty.texts, empty.stop) == ([], "end_turn")
    # The empty reply is not kept (the API would refuse it), so the next request is still valid.
    conv.add_prompt("again")
    assert step(conv, fake).texts == ["ok"]


@pytest.mark.parametrize("vendor", VENDORS)
def test_a_new_prompt_abandons_unanswered_calls(vendor: str, fake: FakeLLM) -> None:
    fake.add(FakeLLM.tool("run_command", {"command": "sleep 100"}))
    conv = conversation(vendor)
    call = step(conv, fake).tool_calls[0]
    with pytest.raises(ValueError):
        step(conv, fake)  # the call must be answered first
    conv.add_prompt("Never mind; say hi.")
    assert step(conv, fake).texts == ["done"]  # the fake refuses an unanswered call with a 400
    assert call.id in last_assistant_tool_ids(vendor, fake.requests[1])
    abandoned = "The tool call was abandoned before it returned a result."
    messages = fake.requests[1].body["messages"]
    if vendor == "anthropic":  # one user message: the tool_result first, then the prompt
        result, prompt = messages[-1]["content"]
        assert (result["tool_use_id"], result["content"], result["is_error"]) == (
            call.id,
            abandoned,
            True,
        )
        assert prompt == {"type": "text", "text": "Never mind; say hi."}
    else:
        assert messages[-2:] == [
            {"role": "tool", "tool_call_id": call.id, "content": "Error: " + abandoned},
            {"role": "user", "content": "Never mind; say hi."},
        ]
    with pytest.raises(ValueError):
        conv.add_tool_results([(call, "late", False)])


def test_openai_arguments_that_are_not_json(fake: FakeLLM) -> None:
    fake.add(
        FakeLLM.tools(("run_command", '{"command": "ls'), ("run_command", "[1, 2]")),
        FakeLLM.tool("read_file", ""),
        FakeLLM.text("fixed"),
    )
    conv = conversation("openai")
    bad_json, not_object = step(conv, fake).tool_calls
    assert bad_json.input == {} and not_object.input == {}
    assert bad_json.input_error is not None and "not valid JSON" in bad_json.input_error
    assert not_object.input_error is not None and "not a JSON object" in not_object.input_error
    conv.add_tool_results([])  # the loop need not answer them: the adapter sends the errors

    # Empty arguments are a call without arguments, not an error.
    no_args = step(conv, fake).tool_calls[0]
    assert (no_args.input, no_args.input_error) == ({}, None)
    conv.add_tool_results([(no_args, "x", False)])
    step(conv, fake)

    second = fake.requests[1].body
    results = tool_results(second)
    assert results[0].startswith("Error: The arguments of run_command were not valid JSON")
    assert '\'{"command": "ls\'' in results[0]
    assert "not a JSON object" in results[1]
    # The history carries "{}" so servers that parse past arguments do not refuse the request.
    sent = [c["function"]["arguments"] for c in second["messages"][2]["tool_calls"]]
    assert sent == ["{}", "{}"]


@pytest.mark.parametrize("vendor", VENDORS)
@pytest.mark.parametrize(
    ("status", "code"),
    [
        (401, "llm_auth_failed"),
        (403, "llm_auth_failed"),
        (429, "llm_rate_limited"),
        (400, "llm_bad_request"),
        (404, "llm_bad_request"),
        (422, "llm_bad_request"),
        (500, "llm_unavailable"),
        (529, "llm_unavailable"),
    ],
)
def test_http_errors(vendor: str, status: int, code: str, fake: FakeLLM) -> None:
    fake.add(FakeLLM.error(status, "vendor says no", echo_key=True, retry_after=7))
    conv = conversation(vendor)
    with pytest.raises(LlmError) as caught:
        step(conv, fake)
    err = caught.value
    assert (err.code, err.status) == (code, status)
    assert f"HTTP {status}" in err.message and "vendor says no" in err.message
    assert KEY not in err.message and KEY not in str(err) and KEY not in repr(err)
    assert "[redacted]" in err.message  # the echoed key was scrubbed
    assert err.__cause__ is None and err.__context__ is None  # the SDK error holds the key
    assert err.retry_after == (7.0 if status == 429 else None)
    assert len(fake.requests) == 1  # max_retries=0
    # Nothing was added: the same step can be retried (e.g. with a rotated key).
    assert step(conv, fake).texts == ["done"]


@pytest.mark.parametrize("vendor", VENDORS)
@pytest.mark.parametrize(
    ("reply", "what"),
    [
        (FakeLLM.raw("<html><body>Welcome to nginx!</body></html>"), "unusable reply"),
        (FakeLLM.raw("<html>Bad Gateway</html>", status=502), "HTTP 502"),
    ],
)
def test_a_wrong_endpoint_is_unavailable(vendor: str, reply: Any, what: str, fake: FakeLLM) -> None:
    fake.add(reply)
    with pytest.raises(LlmError) as caught:
        step(conversation(vendor), fake)
    assert caught.value.code == "llm_unavailable"
    assert what in caught.value.message


@pytest.mark.parametrize("vendor", VENDORS)
def test_the_key_is_never_logged(
    vendor: str, fake: FakeLLM, caplog: pytest.LogCaptureFixture
) -> None:
    fake.add(FakeLLM.error(401, echo_key=True))
    caplog.set_level(logging.DEBUG)
    with pytest.raises(LlmError):
        step(conversation(vendor), fake)
    assert "llm_auth_failed" in caplog.text
    assert KEY not in caplog.text


@pytest.mark.parametrize("vendor", VENDORS)
def test_the_sdk_retries_transient_errors(vendor: str, fake: FakeLLM) -> None:
    fake.add(FakeLLM.error(500, retry_after=0.01), FakeLLM.error(429, retry_after=0.01))
    fake.add(FakeLLM.text("third time"))
    started = time.monotonic()
    turn = step(conversation(vendor, max_retries=2), fake)
    assert turn.texts == ["third time"]
    assert len(fake.requests) == 3
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("vendor", VENDORS)
def test_connection_refused_is_unavailable(vendor: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends, so nothing listens there
    conv = conversation(vendor)
    with pytest.raises(LlmError) as caught:
        conv.step(api_key=KEY, base_url=f"http://127.0.0.1:{port}")
    assert caught.value.code == "llm_unavailable"
    assert f"127.0.0.1:{port}" in caught.value.message
    assert KEY not in caught.value.message


@pytest.mark.parametrize("vendor", VENDORS)
def test_slow_reply_times_out(vendor: str, fake: FakeLLM) -> None:
    fake.add(FakeLLM.slow(3))
    conv = conversation(vendor, timeout=0.5)
    started = time.monotonic()
    with pytest.raises(LlmError) as caught:
        step(conv, fake)
    assert caught.value.code == "llm_timeout"
    assert "0.5 s" in caught.value.message
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("vendor", VENDORS)
def test_no_key_fails_without_a_request(vendor: str, fake: FakeLLM) -> None:
    with pytest.raises(LlmError) as caught:
        step(conversation(vendor), fake, key="")
    assert caught.value.code == "llm_auth_failed"
    assert fake.requests == []


def test_unknown_vendor() -> None:
    with pytest.raises(LlmError) as caught:
        conversation("mistral")
    assert caught.value.code == "llm_bad_request"


def test_llm_error_pickles() -> None:
    err = pickle.loads(pickle.dumps(LlmError("llm_rate_limited", "slow down", status=429)))
    assert (err.code, err.message, err.status, str(err)) == (
        "llm_rate_limited",
        "slow down",
        429,
        "llm_rate_limited: slow down",
    )
