"""A session's conversation carried across tasks, and trimmed whole tasks at a time."""

from __future__ import annotations

import json

import pytest

from workers.agent.conversation import _trim
from workers.agent.llm import ToolSpec, new_conversation

TOOLS = [ToolSpec("run_command", "run", {"type": "object", "properties": {}})]


def _task_messages(n: int, filler: str = "") -> list[dict]:
    return [
        {"role": "user", "content": f"task {n} {filler}"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": f"c{n}",
                    "type": "function",
                    "function": {"name": "run_command", "arguments": "{}"},
                }
            ],
        },
        {"role": "tool", "tool_call_id": f"c{n}", "content": "ok"},
        {"role": "assistant", "content": f"done {n}"},
    ]


def test_trim_keeps_the_system_prompt_and_the_newest_whole_tasks() -> None:
    system = {"role": "system", "content": "be brief"}
    messages = [system] + [m for n in range(5) for m in _task_messages(n, "x" * 200)]
    whole = len(json.dumps(messages))
    assert _trim(messages, whole) == messages
    kept = _trim(messages, whole // 2)
    assert kept is not None and kept[0] == system
    assert kept[1]["content"].startswith("task ")  # cut at the start of a task
    assert kept[-1] == messages[-1]
    ids = {c["id"] for m in kept for c in m.get("tool_calls") or []}
    assert ids == {m["tool_call_id"] for m in kept if m["role"] == "tool"}
    assert _trim(messages, 10) is None


def test_anthropic_tool_results_are_never_separated_from_their_call() -> None:
    # A task prompt merged into the previous task's tool results is not a place to cut.
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "one " + "x" * 300}]},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t1", "name": "run_command", "input": {}}],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": "ok"},
                {"type": "text", "text": "two"},
            ],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "done"}]},
    ]
    assert _trim(messages, len(json.dumps(messages[2:]))) is None


@pytest.mark.parametrize("vendor", ["anthropic", "openai"])
def test_continue_from_carries_history_and_answers_abandoned_calls(vendor: str) -> None:
    first = new_conversation(vendor=vendor, model="m", system="sys", tools=TOOLS, prompt="one")
    snap = first.snapshot()
    # As if the model had asked for a tool and the task was cancelled before it answered.
    snap["pending"] = [["call_1", "run_command", {}]]
    if vendor == "anthropic":
        snap["messages"].append(
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "call_1", "name": "run_command", "input": {}}
                ],
            }
        )
    else:
        snap["messages"].append(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "run_command", "arguments": "{}"},
                    }
                ],
            }
        )
    second = new_conversation(vendor=vendor, model="m", system="sys", tools=TOOLS, prompt="two")
    second.continue_from(snap, "two", max_bytes=1 << 20)
    text = json.dumps(second.messages)
    assert "one" in text and "two" in text and "call_1" in text
    other = "openai" if vendor == "anthropic" else "anthropic"
    third = new_conversation(vendor=other, model="m", system="sys", tools=TOOLS, prompt="three")
    third.continue_from(snap, "three", max_bytes=1 << 20)  # another vendor's history: ignored
    assert "one" not in json.dumps(third.messages)
