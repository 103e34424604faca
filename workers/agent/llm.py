"""A vendor-neutral tool-use conversation over the official ``anthropic`` and ``openai`` SDKs.

The agent loop sees one shape whatever the vendor: ``step()`` makes one LLM request and returns a
`Turn` (the assistant's texts, its tool calls, why it stopped); ``add_tool_results()`` answers the
calls. Each vendor's wire format (Anthropic Messages ``tool_use``/``tool_result`` blocks, OpenAI
Chat Completions ``tool_calls`` and ``role: tool`` messages) stays inside its class here.

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

import contextlib
import json
import logging
import re
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import anthropic
import openai
from anthropic.types import Message, RedactedThinkingBlock, TextBlock, ThinkingBlock, ToolUseBlock
from openai.types.chat import (
    ChatCompletion,
    ChatCompletionMessage,
    ChatCompletionMessageFunctionToolCall,
)
from openai.types.chat.chat_completion_message_function_tool_call import Function

logger = logging.getLogger(__name__)

Stop = Literal["end_turn", "tool_use", "max_tokens"]
VENDORS = ("anthropic", "openai")

# Explicit defaults: with base_url=None the SDKs would read ANTHROPIC_BASE_URL / OPENAI_BASE_URL
# from the worker's environment and send tenants' keys wherever that points.
ANTHROPIC_DEFAULT_URL = "https://api.anthropic.com"
OPENAI_DEFAULT_URL = "https://api.openai.com/v1"

NO_OUTPUT = "(no output)"
NOT_RUN = "The tool was not run."
ABANDONED = "The tool call was abandoned before it returned a result."
_MAX_MESSAGE = 300
# Both vendors' keys start with "sk-"; vendors echo them masked or partly ("sk-proj-abc***xyz").
_KEY_LIKE = re.compile(r"\bsk-[A-Za-z0-9_\-*.]{6,}")


class LlmError(Exception):
    """An LLM request failed; ``code`` is one of the ``llm_*`` codes, ``message`` has no key."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(code, message)  # args=(code, message) keeps the error picklable
        self.code = code
        self.message = message
        self.status = status  # the vendor's HTTP status, when there was a response
        self.retry_after = retry_after  # seconds, from a 429's retry-after header

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    input_schema: dict[str, Any]


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    input: dict[str, Any]
    input_error: str | None = None  # set when the model's arguments were unusable; input is {}


@dataclass(frozen=True)
class Turn:
    texts: list[str]
    tool_calls: list[ToolCall]
    stop: Stop
    input_tokens: int = 0
    output_tokens: int = 0


ToolResult = tuple[ToolCall, str, bool]  # (call, output text, is_error)


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
    classes: dict[str, type[Conversation]] = {
        "anthropic": AnthropicConversation,
        "openai": OpenAIConversation,
    }
    if vendor not in classes:
        raise LlmError("llm_bad_request", f"unknown LLM vendor {vendor!r}; use anthropic or openai")
    return classes[vendor](
        model=model,
        system=system,
        tools=list(tools),
        prompt=prompt,
        timeout=timeout,
        max_tokens=max_tokens,
        max_retries=max_retries,
    )


class Conversation(ABC):
    """One agent's conversation; build it with `new_conversation`."""

    vendor = ""

    def __init__(
        self,
        *,
        model: str,
        system: str,
        tools: list[ToolSpec],
        prompt: str,
        timeout: float,
        max_tokens: int,
        max_retries: int,
    ) -> None:
        self.model = model
        self.system = system
        self.tools = tools
        self.timeout = timeout
        self.max_tokens = max_tokens
        self.max_retries = max_retries
        # The history in the vendor's own request format, sent whole on every step.
        self.messages: list[dict[str, Any]] = []
        self._pending: list[ToolCall] = []  # the last turn's calls, not answered yet
        self._start()
        self.add_prompt(prompt)

    def step(self, *, api_key: str, base_url: str | None = None) -> Turn:
        """Send the history in one LLM request and append the assistant's reply to it.

        A new SDK client is made for every call because the key may have been rotated since the
        last one. ``base_url=None`` is the vendor's public endpoint.

        Raises:
            LlmError: ``llm_auth_failed`` (401/403 or no key), ``llm_rate_limited`` (429),
                ``llm_bad_request`` (other 4xx, e.g. an unknown model), ``llm_unavailable`` (5xx,
                connection refused or reset, an unusable reply), ``llm_timeout``.
            ValueError: the tool calls of the previous turn have not been answered.
        """
        if self._pending:
            raise ValueError("add_tool_results() must answer the last turn's tool calls first")
        if not api_key:
            raise LlmError("llm_auth_failed", f"no {self.vendor} API key was given")
        error: LlmError | None = None
        try:
            turn = self._request(api_key, base_url)
        except (anthropic.AnthropicError, openai.OpenAIError) as exc:
            error = _llm_error(self.vendor, exc, api_key, self.timeout)
        if error is not None:
            # Raised outside the except block so it holds no __context__: the SDK error keeps the
            # request, whose headers carry the key, and its text is not scrubbed.
            logger.debug("llm step failed vendor=%s model=%s: %s", self.vendor, self.model, error)
            raise error
        self._pending = list(turn.tool_calls)
        logger.debug(
            "llm step vendor=%s model=%s stop=%s tool_calls=%d tokens_in=%d tokens_out=%d",
            self.vendor, self.model, turn.stop, len(turn.tool_calls),
            turn.input_tokens, turn.output_tokens,
        )  # fmt: skip
        return turn

    def add_tool_results(self, results: Iterable[ToolResult]) -> None:
        """Answer the last turn's tool calls, all at once: both APIs want every call answered.

        A call left out is answered with an error: its ``input_error``, or that it was not run.
        Empty output is sent as ``(no output)`` so the model does not read it as a lost result.

        Raises:
            ValueError: a result names a call that is not pending, or answers one twice.
        """
        pending = {call.id: call for call in self._pending}
        answered: dict[str, tuple[str, bool]] = {}
        for call, output, is_error in results:
            if call.id not in pending or call.id in answered:
                raise ValueError(f"tool call {call.id!r} is not awaiting a result")
            answered[call.id] = (output or NO_OUTPUT, is_error)
        ordered: list[ToolResult] = []
        for call in self._pending:  # in the model's order, which the APIs pair results by
            output, is_error = answered.get(call.id, (call.input_error or NOT_RUN, True))
            ordered.append((call, output, is_error))
        self._pending = []
        if ordered:
            self._append_results(ordered)

    def add_prompt(self, prompt: str) -> None:
        """Add a user message, e.g. the next task of the session, to continue this conversation.

        Tool calls still unanswered (a cancelled task) are answered as abandoned first.
        """
        if self._pending:
            self._append_results([(call, ABANDONED, True) for call in self._pending])
            self._pending = []
        self._append_prompt(prompt)

    @abstractmethod
    def _start(self) -> None:
        """Put what precedes the first prompt into the history."""

    @abstractmethod
    def _request(self, api_key: str, base_url: str | None) -> Turn: ...

    @abstractmethod
    def _append_results(self, results: list[ToolResult]) -> None: ...

    @abstractmethod
    def _append_prompt(self, prompt: str) -> None: ...


class AnthropicConversation(Conversation):
    vendor = "anthropic"

    def _start(self) -> None:
        pass  # the system prompt is a request parameter, not a message

    def _request(self, api_key: str, base_url: str | None) -> Turn:
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
        with anthropic.Anthropic(
            api_key=api_key,
            base_url=base_url or ANTHROPIC_DEFAULT_URL,
            timeout=self.timeout,
            max_retries=self.max_retries,
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
                call = _tool_call(block.id, block.name, block.input)
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
            _stop(truncated, calls),
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


class OpenAIConversation(Conversation):
    vendor = "openai"

    def _start(self) -> None:
        if self.system:
            self.messages.append({"role": "system", "content": self.system})

    def _request(self, api_key: str, base_url: str | None) -> Turn:
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
        with openai.OpenAI(
            api_key=api_key,
            base_url=base_url or OPENAI_DEFAULT_URL,
            timeout=self.timeout,
            max_retries=self.max_retries,
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
            _stop(choice.finish_reason == "length", calls),
            getattr(usage, "prompt_tokens", 0) or 0,
            getattr(usage, "completion_tokens", 0) or 0,
        )

    def _append_results(self, results: list[ToolResult]) -> None:
        for call, out, is_error in results:
            content = f"Error: {out}" if is_error else out
            self.messages.append({"role": "tool", "tool_call_id": call.id, "content": content})

    def _append_prompt(self, prompt: str) -> None:
        self.messages.append({"role": "user", "content": prompt})


def _stop(truncated: bool, calls: list[ToolCall]) -> Stop:
    if truncated:
        return "max_tokens"
    return "tool_use" if calls else "end_turn"


def _tool_call(call_id: str, name: str, value: object) -> ToolCall:
    if isinstance(value, dict):
        # A copy: the loop may change its input without rewriting the history.
        return ToolCall(call_id, name, dict(cast(dict[str, Any], value)))
    error = f"The arguments of {name} were not a JSON object. Call it again with an object."
    return ToolCall(call_id, name, {}, error)


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
    return _tool_call(call_id, function.name, value)


def _llm_error(vendor: str, exc: Exception, api_key: str, timeout: float) -> LlmError:
    """Turn any SDK exception into an LlmError whose message cannot carry the key."""
    if isinstance(exc, anthropic.APITimeoutError | openai.APITimeoutError):
        return LlmError("llm_timeout", f"{vendor} did not answer within {timeout:g} s")
    if isinstance(exc, anthropic.APIConnectionError | openai.APIConnectionError):
        cause = exc.__cause__ or exc
        where = exc.request.url.copy_with(query=None)
        text = f"could not reach {vendor} at {where}: {cause}"
        return LlmError("llm_unavailable", _scrub(text, api_key))
    if not isinstance(exc, anthropic.APIStatusError | openai.APIStatusError):
        text = f"{vendor} sent an unusable reply: {exc}"
        return LlmError("llm_unavailable", _scrub(text, api_key))
    status = exc.status_code
    detail = _scrub(_vendor_message(exc.body) or exc.response.reason_phrase, api_key)
    if status in (401, 403):
        code, what = "llm_auth_failed", "refused the API key"
    elif status == 429:
        code, what = "llm_rate_limited", "is rate limiting this key"
    elif status == 408:
        code, what = "llm_timeout", "timed out the request"
    elif status >= 500:
        code, what = "llm_unavailable", "failed"
    else:
        code, what = "llm_bad_request", "refused the request"
    retry_after = None
    if status == 429:
        with contextlib.suppress(ValueError):  # absent, or an HTTP date: the loop has no use
            retry_after = float(exc.response.headers.get("retry-after", ""))
    return LlmError(
        code, f"{vendor} {what} (HTTP {status}): {detail}", status=status, retry_after=retry_after
    )


def _vendor_message(body: object) -> str:
    # Anthropic hands over the whole body, OpenAI the inner "error" object; either may be text.
    if isinstance(body, str):
        return body.strip()
    error = body.get("error", body) if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return message.strip() if isinstance(message, str) else ""


def _scrub(text: str, api_key: str) -> str:
    if api_key:
        text = text.replace(api_key, "[redacted]")
    text = _KEY_LIKE.sub("[redacted]", text)
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 1] + "…"
