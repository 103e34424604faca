"""A vendor-neutral tool-use conversation over the official ``anthropic`` and ``openai`` SDKs.

The agent loop sees one shape whatever the vendor: ``step()`` makes one LLM request and returns a
`Turn` (the assistant's texts, its tool calls, why it stopped); ``add_tool_results()`` answers the
calls. Each vendor's wire format (Anthropic Messages ``tool_use``/``tool_result`` blocks, OpenAI
Chat Completions ``tool_calls`` and ``role: tool`` messages) stays inside its adapter
(:mod:`workers.agent.anthropic_adapter`, :mod:`workers.agent.openai_adapter`); the shared types
and the `Conversation` base are in :mod:`workers.agent.conversation`, the mapping of SDK errors
to `LlmError` in :mod:`workers.agent.llm_errors`. Import all of them from here.

The adapters (and with them the vendors' SDKs, ~3 s of CPU to import) are loaded by the first
`new_conversation`, or by naming one of their classes from here: a host worker that runs no
agent task never imports them.

Decisions the loop can rely on:

- ``turn.stop`` is ``"tool_use"`` exactly when there are tool calls (unless the reply was cut at
  ``max_tokens``), whatever the endpoint reported: OpenAI-compatible servers often say ``stop``
  next to tool calls.
- Tool arguments that are not a JSON object (OpenAI sends them as a string the model wrote) give a
  `ToolCall` with ``input == {}`` and ``input_error`` set. Do not run that tool: answer
  ``(call, call.input_error, True)``, or leave the call out of ``add_tool_results``, which answers
  every call of the turn it was not given with an error result. The model then sees why and can
  call again; the history keeps ``"{}"`` as the arguments because some OpenAI-compatible servers
  parse the arguments of past calls and would refuse the whole request.
- OpenAI has no error flag on tool results, so an error result is sent as ``"Error: <output>"``.
- A failed ``step`` leaves the conversation unchanged, so the loop can retry it (with another key).
- Not thread-safe: one conversation belongs to one agent loop.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from workers.agent.conversation import (
    ABANDONED,
    NO_OUTPUT,
    NOT_RUN,
    Conversation,
    Stop,
    ToolCall,
    ToolResult,
    ToolSpec,
    Turn,
)
from workers.agent.llm_errors import LlmError

if TYPE_CHECKING:
    from workers.agent.anthropic_adapter import ANTHROPIC_DEFAULT_URL, AnthropicConversation
    from workers.agent.openai_adapter import OPENAI_DEFAULT_URL, OpenAIConversation

__all__ = [
    "ABANDONED",
    "ANTHROPIC_DEFAULT_URL",
    "NOT_RUN",
    "NO_OUTPUT",
    "OPENAI_DEFAULT_URL",
    "VENDORS",
    "AnthropicConversation",
    "Conversation",
    "LlmError",
    "OpenAIConversation",
    "Stop",
    "ToolCall",
    "ToolResult",
    "ToolSpec",
    "Turn",
    "new_conversation",
]

VENDORS = ("anthropic", "openai")
# Each name of an adapter module, and the module that defines it (loaded when first named).
_LAZY = {
    "ANTHROPIC_DEFAULT_URL": "workers.agent.anthropic_adapter",
    "AnthropicConversation": "workers.agent.anthropic_adapter",
    "OPENAI_DEFAULT_URL": "workers.agent.openai_adapter",
    "OpenAIConversation": "workers.agent.openai_adapter",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def new_conversation(
    *,
    vendor: str,
    model: str,
    system: str,
    tools: Sequence[ToolSpec],
    prompt: str,
    timeout: float = 60.0,
    max_tokens: int = 4096,
    max_retries: int = 1,
) -> Conversation:
    """Start a conversation whose first user message is ``prompt``; nothing is sent yet.

    ``timeout`` bounds each HTTP attempt; ``max_retries`` is the SDK's retry count on 429, 5xx
    and connection errors (with its backoff, or the server's retry-after).

    Raises:
        LlmError: ``llm_bad_request`` for a vendor other than ``anthropic`` or ``openai``.
    """
    classes = {"anthropic": "AnthropicConversation", "openai": "OpenAIConversation"}
    if vendor not in classes:
        raise LlmError("llm_bad_request", f"unknown LLM vendor {vendor!r}; use anthropic or openai")
    cls: type[Conversation] = __getattr__(classes[vendor])
    return cls(
        model=model,
        system=system,
        tools=list(tools),
        prompt=prompt,
        timeout=timeout,
        max_tokens=max_tokens,
        max_retries=max_retries,
    )
