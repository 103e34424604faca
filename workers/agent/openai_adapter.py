"""The OpenAI Chat Completions wire format for a `Conversation`: the system prompt as the first
message, ``tool_calls`` on the assistant's message with their arguments as JSON text, one
``role: tool`` message per result. Also what OpenAI-compatible servers accept."""

from __future__ import annotations

import json
import uuid
from typing import Any

import openai
from openai.types.chat import (
    ChatCompletion,
    ChatCompletionMessage,
    ChatCompletionMessageFunctionToolCall,
)
from openai.types.chat.chat_completion_message_function_tool_call import Function

from workers.agent.conversation import (
    Conversation,
    ToolCall,
    ToolResult,
    Turn,
    tool_call,
    turn_stop,
)

# Explicit default: with base_url=None the SDK would read OPENAI_BASE_URL from the worker's
# environment and send tenants' keys wherever that points.
OPENAI_DEFAULT_URL = "https://api.openai.com/v1"


class OpenAIConversation(Conversation):
    vendor = "openai"

    def _start(self) -> None:
        if self.system:
            self.messages.append({"role": "system", "content": self.system})

    def _request(self, api_key: str, base_url: str | None, allowed_hosts: str | None) -> Turn:
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": self.messages,
            # max_tokens is refused by OpenAI's reasoning models; compatible servers take both.
            "max_completion_tokens": self.max_tokens,
        }
        if self.tools:  # an empty list is refused ("[] is too short")
            kwargs["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": t.name,
                        "description": t.description,
                        "parameters": t.input_schema,
                    },
                }
                for t in self.tools
            ]
        with self._client(
            openai.OpenAI, api_key, base_url or OPENAI_DEFAULT_URL, allowed_hosts
        ) as client:
            completion = client.chat.completions.create(**kwargs)
        # The SDK does not validate replies: a wrong base_url can give a web page or other JSON.
        choices = completion.choices if isinstance(completion, ChatCompletion) else None
        if not isinstance(choices, list) or not choices:
            raise openai.OpenAIError("the reply is not a Chat Completions response")
        choice = choices[0]
        message = getattr(choice, "message", None)
        if not isinstance(message, ChatCompletionMessage):
            raise openai.OpenAIError("the reply has no message")
        texts = [t for t in (message.content, message.refusal) if t]
        calls: list[ToolCall] = []
        wire_calls: list[dict[str, Any]] = []
        for tc in message.tool_calls or []:
            if not isinstance(tc, ChatCompletionMessageFunctionToolCall) or not isinstance(
                tc.function, Function
            ):
                continue  # custom-tool calls: we declare only function tools
            # Some compatible servers omit ids; ours pairs the call with its result.
            call = _parse_arguments(tc.id or f"call_{uuid.uuid4().hex[:24]}", tc.function)
            calls.append(call)
            arguments = "{}" if call.input_error else tc.function.arguments or "{}"
            wire_calls.append(
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": arguments},
                }
            )
        if message.content or wire_calls:
            entry: dict[str, Any] = {"role": "assistant", "content": message.content}
            if wire_calls:
                entry["tool_calls"] = wire_calls
            self.messages.append(entry)
        usage = completion.usage
        return Turn(
            texts,
            calls,
            turn_stop(choice.finish_reason == "length", calls),
            getattr(usage, "prompt_tokens", 0) or 0,
            getattr(usage, "completion_tokens", 0) or 0,
        )

    def _append_results(self, results: list[ToolResult]) -> None:
        for call, out, is_error in results:
            content = f"Error: {out}" if is_error else out
            self.messages.append({"role": "tool", "tool_call_id": call.id, "content": content})

    def _append_prompt(self, prompt: str) -> None:
        self.messages.append({"role": "user", "content": prompt})


def _parse_arguments(call_id: str, function: Function) -> ToolCall:
    raw = function.arguments or ""
    if not raw.strip():
        return ToolCall(call_id, function.name, {})  # servers send "" for a call with no arguments
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        error = (
            f"The arguments of {function.name} were not valid JSON ({exc.msg} at character"
            f" {exc.pos}), so the tool was not run. Call it again with a JSON object. They began:"
            f" {raw[:200]!r}"
        )
        return ToolCall(call_id, function.name, {}, error)
    return tool_call(call_id, function.name, value)
