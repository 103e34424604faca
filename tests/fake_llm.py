"""A scripted stand-in for the Anthropic Messages and OpenAI Chat Completions APIs.

The vendors cannot be reached from test machines, so the real SDKs are pointed at this server on
loopback. A test scripts the replies, one per request, and reads back what arrived::

    with FakeLLM([FakeLLM.tool("run_command", {"command": "ls"}), FakeLLM.text("Done.")]) as fake:
        client = anthropic.Anthropic(api_key="k", base_url=fake.anthropic_base_url)
        ...
        vendor, headers, body = fake.requests[1]

A reply is a `Reply` from `text`, `tool`, `tools`, `error`, `raw` or `slow`, or a callable that
gets the request body and returns one (to echo what a tool returned). When the script runs out
the answer is ``text("done")``. Each reply is rendered in the vendor's own format (ids, stop or
finish reason, usage, content blocks or ``tool_calls``), so the SDKs parse it as they would the
real thing. Requests that the real API would refuse for their shape (a tool call left unanswered, an
empty text block) get the vendor's 400, which catches adapter bugs early.
`redirect` answers a 3xx with a Location, and `connections` counts what reached the server.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple

Body = dict[str, Any]


class Request(NamedTuple):
    vendor: str  # "anthropic" or "openai"
    headers: dict[str, str]  # names lowercased
    body: Body


@dataclass(frozen=True)
class Reply:
    text: str | None = None
    # (name, input) pairs; input is a dict, or a str sent verbatim as OpenAI arguments
    calls: tuple[tuple[str, Body | str], ...] = ()
    stop: str | None = None  # "max_tokens" to report a cut reply
    status: int = 200
    message: str | None = None  # error message
    echo_key: bool = False  # put the received key in the error message, as a careless proxy would
    retry_after: float | None = None
    delay: float = 0.0
    then: Reply | None = None
    raw: str | None = None  # sent as the body as it is (text/html), e.g. a wrong base_url's page
    location: str | None = None  # a Location header, with a 3xx status


Script = Reply | Callable[[Body], Reply]

_ANTHROPIC_ERRORS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
_OPENAI_ERRORS = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}
_DEFAULT_MESSAGES = {
    401: "invalid x-api-key",
    403: "permission denied",
    404: "model: not-a-model",
    429: "Number of request tokens has exceeded your per-minute rate limit",
    500: "Internal server error",
    529: "Overloaded",
}


def sent_key(request: Request) -> str | None:
    """The API key a request carried: ``x-api-key`` or ``Authorization: Bearer``.

    The anthropic 2.x SDK sends ``api_key`` as a bearer token; earlier ones used ``x-api-key``.
    """
    if "x-api-key" in request.headers:
        return request.headers["x-api-key"]
    auth = request.headers.get("authorization", "")
    return auth[len("Bearer ") :] if auth.startswith("Bearer ") else None


def tool_results(body: Body) -> list[str]:
    """The tool results at the end of a request, either vendor (error ones as sent)."""
    messages = body.get("messages", [])
    if not messages:
        return []
    last = messages[-1]
    if isinstance(last.get("content"), list):  # anthropic: a user message of blocks
        return [b["content"] for b in last["content"] if b.get("type") == "tool_result"]
    out: list[str] = []
    for m in reversed(messages):  # openai: the trailing run of role=tool messages
        if m.get("role") != "tool":
            break
        out.insert(0, m["content"])
    return out


@dataclass
class FakeLLM:
    script: Iterable[Script] = ()
    host: str = "127.0.0.1"  # any loopback address, e.g. 127.0.0.2 as an "internal" service
    _connections: int = field(init=False, default=0)
    _queue: list[Script] = field(init=False)
    _requests: list[Request] = field(init=False, default_factory=list)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)
    _stopping: threading.Event = field(init=False, default_factory=threading.Event)
    _server: ThreadingHTTPServer | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self._queue = list(self.script)

    # -- script building ---------------------------------------------------------------------
    @staticmethod
    def text(text: str, *, stop: str | None = None) -> Reply:
        return Reply(text=text, stop=stop)

    @staticmethod
    def tool(name: str, input: Body | str | None = None, *, text: str | None = None) -> Reply:
        """One tool call; ``input`` as a str is sent verbatim as OpenAI's arguments."""
        return Reply(text=text, calls=((name, {} if input is None else input),))

    @staticmethod
    def tools(*calls: tuple[str, Body | str], text: str | None = None) -> Reply:
        """Several tool calls in one reply (parallel tool use)."""
        return Reply(text=text, calls=tuple(calls))

    @staticmethod
    def error(
        status: int,
        message: str | None = None,
        *,
        echo_key: bool = False,
        retry_after: float | None = None,
    ) -> Reply:
        return Reply(
            status=status,
            message=message or _DEFAULT_MESSAGES.get(status, "error"),
            echo_key=echo_key,
            retry_after=retry_after,
        )

    @staticmethod
    def raw(text: str, status: int = 200) -> Reply:
        """A body that is not the vendor's API, as a web page at a wrong base_url would send."""
        return Reply(status=status, raw=text)

    @staticmethod
    def redirect(location: str, status: int = 307) -> Reply:
        """A redirect to ``location``, with a small HTML body that names it, as servers send."""
        return Reply(status=status, raw=f'<a href="{location}">Moved</a>', location=location)

    @staticmethod
    def slow(seconds: float, then: Reply | None = None) -> Reply:
        """Wait ``seconds`` before answering ``then`` (a text "slow" by default)."""
        return Reply(delay=seconds, then=then or Reply(text="slow"))

    def clear(self) -> None:
        """Forget replies a previous test left unused."""
        with self._lock:
            self._queue.clear()

    def add(self, *replies: Script) -> None:
        with self._lock:
            self._queue.extend(replies)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> FakeLLM:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the SDKs' pools expect

            def setup(self) -> None:
                with fake._lock:
                    fake._connections += 1
                super().setup()

            def do_POST(self) -> None:
                fake._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet test output

        server = self._server = ThreadingHTTPServer((self.host, 0), Handler)
        server.daemon_threads = True
        # A short poll interval because stop() waits for one, in every test.
        poll = {"poll_interval": 0.02}
        threading.Thread(target=server.serve_forever, kwargs=poll, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes slow replies
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeLLM:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "FakeLLM is not started"
        return f"http://{self.host}:{self._server.server_address[1]}"

    @property
    def anthropic_base_url(self) -> str:
        return self.url  # the SDK appends /v1/messages

    @property
    def openai_base_url(self) -> str:
        return self.url + "/v1"  # the SDK appends /chat/completions

    def base_url(self, vendor: str) -> str:
        return self.anthropic_base_url if vendor == "anthropic" else self.openai_base_url

    @property
    def requests(self) -> list[Request]:
        with self._lock:
            return list(self._requests)

    @property
    def connections(self) -> int:
        """TCP connections accepted so far, whatever was (or was not) sent on them."""
        with self._lock:
            return self._connections

    # -- serving -----------------------------------------------------------------------------
    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        path = h.path.split("?", 1)[0]
        vendor = {"/v1/messages": "anthropic", "/v1/chat/completions": "openai"}.get(path)
        length = int(h.headers.get("content-length") or 0)
        raw = h.rfile.read(length)
        if vendor is None:
            self._send(h, 404, {"error": {"message": f"no route {path}"}})
            return
        body = json.loads(raw or b"{}")
        request = Request(vendor, {k.lower(): v for k, v in h.headers.items()}, body)
        with self._lock:
            self._requests.append(request)
            item: Script = self._queue.pop(0) if self._queue else Reply(text="done")
        problem = _check_anthropic(body) if vendor == "anthropic" else _check_openai(body)
        reply = Reply(status=400, message=problem) if problem else _resolve(item, body)
        if reply.delay:
            if self._stopping.wait(reply.delay):
                return
            reply = reply.then or Reply(text="slow")
        if reply.raw is not None:
            headers = {"content-type": "text/html"}
            if reply.location is not None:
                headers["location"] = reply.location
            self._send(h, reply.status, reply.raw, headers)
            return
        status, headers, payload = _render(vendor, reply, body, sent_key(request) or "")
        self._send(h, status, payload, headers)

    @staticmethod
    def _send(
        h: BaseHTTPRequestHandler,
        status: int,
        payload: Body | str,
        headers: dict[str, str] | None = None,
    ) -> None:
        data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
        headers = {"content-type": "application/json", **(headers or {})}
        try:
            h.send_response(status)
            h.send_header("content-length", str(len(data)))
            for name, value in headers.items():
                h.send_header(name, value)
            h.end_headers()
            h.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test)


def _resolve(item: Script, body: Body) -> Reply:
    return item if isinstance(item, Reply) else item(body)


def _render(vendor: str, reply: Reply, body: Body, key: str) -> tuple[int, dict[str, str], Body]:
    headers: dict[str, str] = {}
    if reply.retry_after is not None:
        headers["retry-after"] = f"{reply.retry_after:g}"
    if reply.status != 200:
        message = reply.message or "error"
        if reply.echo_key:
            message = f"{message} (key {key!r})"
        if vendor == "anthropic":
            headers["request-id"] = _id("req_")
            kind = _ANTHROPIC_ERRORS.get(reply.status, "api_error")
            error = {"type": kind, "message": message}
            return (
                reply.status,
                headers,
                {"type": "error", "error": error, "request_id": headers["request-id"]},
            )
        headers["x-request-id"] = _id("req_")
        kind, code = _OPENAI_ERRORS.get(reply.status, ("server_error", None))
        return reply.status, headers, {
            "error": {"message": message, "type": kind, "param": None, "code": code}
        }  # fmt: skip
    model = body.get("model", "fake-model")
    if vendor == "anthropic":
        return 200, {"request-id": _id("req_")}, _anthropic_message(reply, model)
    return 200, {"x-request-id": _id("req_")}, _openai_completion(reply, model)


def _anthropic_message(reply: Reply, model: str) -> Body:
    content: list[Body] = []
    if reply.text is not None:
        content.append({"type": "text", "text": reply.text, "citations": None})
    for name, value in reply.calls:
        value = json.loads(value) if isinstance(value, str) else value
        content.append({"type": "tool_use", "id": _id("toolu_01"), "name": name, "input": value})
    stop = reply.stop or ("tool_use" if reply.calls else "end_turn")
    return {
        "id": _id("msg_01"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {
            "input_tokens": 25,
            "output_tokens": 12,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "service_tier": "standard",
        },
    }


def _openai_completion(reply: Reply, model: str) -> Body:
    message: Body = {"role": "assistant", "content": reply.text, "refusal": None, "annotations": []}
    if reply.calls:
        message["tool_calls"] = [
            {
                "id": _id("call_"),
                "type": "function",
                "function": {
                    "name": name,
                    "arguments": value if isinstance(value, str) else json.dumps(value),
                },
            }
            for name, value in reply.calls
        ]
    finish = {"max_tokens": "length"}.get(reply.stop or "", "tool_calls" if reply.calls else "stop")
    return {
        "id": _id("chatcmpl-"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": {"prompt_tokens": 25, "completion_tokens": 12, "total_tokens": 37},
        "service_tier": "default",
        "system_fingerprint": "fp_fake",
    }


def _check_anthropic(body: Body) -> str | None:
    for name in ("model", "max_tokens", "messages"):
        if name not in body:
            return f"{name}: Field required"
    messages = body["messages"]
    if not messages or messages[0].get("role") != "user":
        return "messages: first message must use the user role"
    for i, m in enumerate(messages):
        blocks = m["content"] if isinstance(m["content"], list) else [{"type": "text", "text": "x"}]
        if not blocks:
            return f"messages.{i}: all messages must have non-empty content"
        for b in blocks:
            if b.get("type") == "text" and not b.get("text"):
                return f"messages.{i}: text content blocks must be non-empty"
        wanted = [b["id"] for b in blocks if b.get("type") == "tool_use"]
        if wanted:
            following = messages[i + 1]["content"] if i + 1 < len(messages) else []
            following = following if isinstance(following, list) else []
            got = [b.get("tool_use_id") for b in following if b.get("type") == "tool_result"]
            if sorted(got) != sorted(wanted):
                return (
                    f"messages.{i + 1}: `tool_use` ids were found without `tool_result` blocks"
                    " immediately after"
                )
    return None


def _check_openai(body: Body) -> str | None:
    for name in ("model", "messages"):
        if name not in body:
            return f"Missing required parameter: '{name}'."
    if body.get("tools") == []:
        return "[] is too short - 'tools'"
    unanswered: set[str] = set()
    for m in body["messages"]:
        if m.get("role") == "tool":
            if m.get("tool_call_id") not in unanswered:
                return "Messages with role 'tool' must be a response to a preceding 'tool_calls'."
            unanswered.discard(m["tool_call_id"])
            continue
        if unanswered:
            break
        unanswered = {c["id"] for c in m.get("tool_calls") or []}
    if unanswered:
        return (
            "An assistant message with 'tool_calls' must be followed by tool messages responding"
            f" to each 'tool_call_id'. Missing: {sorted(unanswered)}"
        )
    return None


def _id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]
