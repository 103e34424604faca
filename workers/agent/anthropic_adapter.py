"""The Anthropic Messages API's wire format for a `Conversation`: the system prompt as a request
parameter, ``tool_use`` blocks in the assistant's message, ``tool_result`` blocks in the next
user message."""

from __future__ import annotations

from typing import Any

import anthropic
from anthropic.types import Message, RedactedThinkingBlock, TextBlock, ThinkingBlock, ToolUseBlock

from workers.agent.conversation import (
    Conversation,
    ToolCall,
    ToolResult,
    Turn,
    tool_call,
    turn_stop,
)

# Explicit default: with base_url=None the SDK would read ANTHROPIC_BASE_URL from the worker's
# environment and send tenants' keys wherever that points.
ANTHROPIC_DEFAULT_URL = "https://api.anthropic.com"


class AnthropicConversation(Conversation):
    vendor = "anthropic"

    def _start(self) -> None:
        pass  # the system prompt is a request parameter, not a message

    def _request(self, api_key: str, base_url: str | None, allowed_hosts: str | None) -> Turn:
        kwargs: dict[str, Any] = {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "messages": self.messages,
        }
        if self.system:
            kwargs["system"] = self.system
        if self.tools:
            kwargs["tools"] = [
                {"name": t.name, "description": t.description, "input_schema": t.input_schema}
                for t in self.tools
            ]
        with self._client(
            anthropic.Anthropic, api_key, base_url or ANTHROPIC_DEFAULT_URL, allowed_hosts
        ) as client:
            reply = client.messages.create(**kwargs)
        # The SDK does not validate replies: a wrong base_url can give a web page or other JSON.
        if not isinstance(reply, Message) or not isinstance(reply.content, list):
            raise anthropic.AnthropicError("the reply is not a Messages API response")
        texts: list[str] = []
        calls: list[ToolCall] = []
        content: list[dict[str, Any]] = []
        for block in reply.content:
            if isinstance(block, TextBlock) and block.text.strip():
                # Blank text blocks are dropped: the API refuses them in the next request.
                texts.append(block.text)
                content.append({"type": "text", "text": block.text})
            elif isinstance(block, ToolUseBlock):
                call = tool_call(block.id, block.name, block.input)
                calls.append(call)
                content.append(
                    {"type": "tool_use", "id": call.id, "name": call.name, "input": block.input}
                )
            elif isinstance(block, ThinkingBlock):
                # Thinking must go back unchanged, signature included, or the API refuses it.
                content.append(
                    {"type": "thinking", "thinking": block.thinking, "signature": block.signature}
                )
            elif isinstance(block, RedactedThinkingBlock):
                content.append({"type": "redacted_thinking", "data": block.data})
        if content:  # an empty assistant message would be refused in the next request
            self.messages.append({"role": "assistant", "content": content})
        truncated = reply.stop_reason in ("max_tokens", "model_context_window_exceeded")
        usage = reply.usage
        return Turn(
            texts,
            calls,
            turn_stop(truncated, calls),
            getattr(usage, "input_tokens", 0) or 0,
            getattr(usage, "output_tokens", 0) or 0,
        )

    def _append_results(self, results: list[ToolResult]) -> None:
        blocks = [
            {"type": "tool_result", "tool_use_id": call.id, "content": out, "is_error": is_error}
            for call, out, is_error in results
        ]
        self.messages.append({"role": "user", "content": blocks})

    def _append_prompt(self, prompt: str) -> None:
        block = {"type": "text", "text": prompt}
        last = self.messages[-1] if self.messages else None
        if last is not None and last["role"] == "user":
            # After tool results: one user message, tool_result blocks first, as the API wants.
            last["content"].append(block)
        else:
            self.messages.append({"role": "user", "content": [block]})
