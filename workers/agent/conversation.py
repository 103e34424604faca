"""The vendor-neutral half of an LLM conversation: the types the agent loop sees, and the
`Conversation` base class that owns the step and tool-result bookkeeping (see
:mod:`workers.agent.llm` for the guarantees). A vendor adapter
(:mod:`workers.agent.anthropic_adapter`, :mod:`workers.agent.openai_adapter`) supplies only its
wire format: what precedes the first prompt, one request, and how results and prompts are added
to the history.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, cast

from workers.agent.http import llm_http_client
from workers.agent.llm_errors import LlmError, llm_error, sdk_errors

_Sdk = TypeVar("_Sdk")

logger = logging.getLogger(__name__)

Stop = Literal["end_turn", "tool_use", "max_tokens"]

NO_OUTPUT = "(no output)"
NOT_RUN = "The tool was not run."
ABANDONED = "The tool call was abandoned before it returned a result."


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

    def step(
        self, *, api_key: str, base_url: str | None = None, allowed_hosts: str | None = None
    ) -> Turn:
        """Send the history in one LLM request and append the assistant's reply to it.

        A new SDK client is made for every call because the key may have been rotated since the
        last one. ``base_url=None`` is the vendor's public endpoint. Redirects are never
        followed; the client connects only to addresses that pass `shared.netpolicy`'s rule
        with ``allowed_hosts`` (PADDOCK_LLM_ALLOWED_HOSTS), or anywhere if it is ``None`` (for
        a caller whose base_url is trusted; the agent loop always passes it).

        Raises:
            LlmError: ``llm_auth_failed`` (401/403 or no key), ``llm_rate_limited`` (429),
                ``llm_bad_request`` (other 4xx, e.g. an unknown model), ``llm_unavailable`` (5xx,
                connection refused or reset, an unusable reply), ``llm_timeout``,
                ``llm_redirect_refused`` (a 3xx), ``llm_base_url_not_allowed`` (the host
                resolved to an address the policy refuses).
            ValueError: the tool calls of the previous turn have not been answered.
        """
        if self._pending:
            raise ValueError("add_tool_results() must answer the last turn's tool calls first")
        if not api_key:
            raise LlmError("llm_auth_failed", f"no {self.vendor} API key was given")
        error: LlmError | None = None
        try:
            turn = self._request(api_key, base_url, allowed_hosts)
        except sdk_errors() as exc:
            error = llm_error(self.vendor, exc, api_key, self.timeout)
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

    def snapshot(self) -> dict[str, Any]:
        """The history as plain JSON, to continue it in a later task (`continue_from`)."""
        return {
            "vendor": self.vendor,
            "messages": self.messages,
            "pending": [[c.id, c.name, c.input] for c in self._pending],
        }

    def continue_from(self, snapshot: dict[str, Any], prompt: str, max_bytes: int) -> None:
        """Carry on an earlier task's conversation with ``prompt`` as the next user message.

        Past ``max_bytes`` of history, the oldest tasks are dropped whole (only at a user
        message that answers no tool call, so every tool call kept keeps its result); when no
        such cut fits, the conversation starts afresh.
        """
        if snapshot.get("vendor") != self.vendor:
            return
        kept = _trim(list(snapshot.get("messages") or []), max_bytes)
        if kept is None:
            return  # too long to keep any of it: this task's fresh start stands
        self.messages = kept
        # Trimming cuts from the front only: the last turn's unanswered calls are still there.
        self._pending = [ToolCall(i, n, dict(inp)) for i, n, inp in snapshot.get("pending") or []]
        self.add_prompt(prompt)

    @abstractmethod
    def _start(self) -> None:
        """Put what precedes the first prompt into the history."""

    @abstractmethod
    def _request(self, api_key: str, base_url: str | None, allowed_hosts: str | None) -> Turn:
        """One request, with a client from `_client`."""

    @contextmanager
    def _client(
        self,
        sdk: Callable[..., _Sdk],
        api_key: str,
        base_url: str,
        allowed_hosts: str | None,
    ) -> Iterator[_Sdk]:
        """The vendor's SDK client (``anthropic.Anthropic``, ``openai.OpenAI``) sending through
        `llm_http_client`, whose connections close when the block ends."""
        with llm_http_client(self.timeout, allowed_hosts) as http:
            yield sdk(
                api_key=api_key,
                base_url=base_url,
                timeout=self.timeout,
                max_retries=self.max_retries,
                http_client=http,
            )

    @abstractmethod
    def _append_results(self, results: list[ToolResult]) -> None: ...

    @abstractmethod
    def _append_prompt(self, prompt: str) -> None: ...


def turn_stop(truncated: bool, calls: list[ToolCall]) -> Stop:
    """The turn's `Stop`: ``tool_use`` whenever there are calls, whatever the vendor said."""
    if truncated:
        return "max_tokens"
    return "tool_use" if calls else "end_turn"


def tool_call(call_id: str, name: str, value: object) -> ToolCall:
    """A `ToolCall` of ``value`` as the arguments, or with ``input_error`` if not an object."""
    if isinstance(value, dict):
        # A copy: the loop may change its input without rewriting the history.
        return ToolCall(call_id, name, dict(cast(dict[str, Any], value)))
    error = f"The arguments of {name} were not a JSON object. Call it again with an object."
    return ToolCall(call_id, name, {}, error)


def _size(messages: list[dict[str, Any]]) -> int:
    return len(json.dumps(messages))


def _clean_start(message: dict[str, Any]) -> bool:
    """A user message that begins a task and answers no tool call (a safe place to cut)."""
    if message.get("role") != "user":
        return False
    content = message.get("content")
    if isinstance(content, str):
        return True
    return not any(isinstance(b, dict) and b.get("type") == "tool_result" for b in content or [])


def _trim(messages: list[dict[str, Any]], max_bytes: int) -> list[dict[str, Any]] | None:
    """``messages`` within ``max_bytes``: the system prefix plus the newest whole tasks."""
    if _size(messages) <= max_bytes:
        return messages
    prefix = messages[:1] if messages and messages[0].get("role") == "system" else []
    for i in range(len(prefix) + 1, len(messages)):
        if _clean_start(messages[i]) and _size(prefix + messages[i:]) <= max_bytes:
            return prefix + messages[i:]
    return None
