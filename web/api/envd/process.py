"""The ``process.Process`` Connect service: what ``sandbox.commands`` and ``sandbox.pty`` of the
official SDKs send. Each call is authorised as every envd call is (access.py: the sandbox's
access token, its tenant; ``root`` runs as the sandbox user) and done by the sandbox's host
(web/sandboxes.py host commands); the web tier never talks to the sandbox.

- Start: the process is a Paddock process like any other (the sandbox's process quota, the
  output budgets, removed with its sandbox), started as the program ``cmd`` with ``args``
  (the SDK sends ``/bin/bash -l -c <command>``) in ``cwd`` (default: the user's home) with
  the sandbox's env vars (from its create) and ``envs`` over them, on a terminal for ``pty``,
  its stdin open unless ``stdin`` is false. The call's deadline (``Connect-Timeout-Ms``, the
  SDK's ``timeout``) is the process's too: its group is killed then, as envd does; none, no
  limit. Its pid is table.py's.
- Start and Connect stream the process's output from Redis as it is stored: the start event
  (pid), then each chunk as stdout, stderr or pty bytes as printed, a keepalive after
  KEEPALIVE seconds of silence, and the end. A Connect (a client that reconnects) gets the
  whole output from the start: nothing is lost between two streams, and the SDK's result
  holds all of it, as if it had never disconnected. An exited process can be connected to
  while it is kept (table.py). Each stream holds one of the tenant's stream slots
  (PADDOCK_TENANT_MAX_STREAMS), ends with the process (or when it is removed), at the
  call's deadline, or when the client goes away (the process runs on); it keeps the
  sandbox from idling out meanwhile.
- List: the running processes started here, with the config they were started with (kept
  sealed in their records). SendInput/StreamInput: bytes to stdin (or the terminal). A
  StreamInput's body is read as gunicorn hands it over HTTP/1.1, 4 KiB at a time: its pieces
  reach the process in order, the small ones once 4 KiB gathered or the call ends.
  CloseStdin: EOF. SendSignal: SIGTERM or SIGKILL to the group. Update: a terminal's size.
- Exit codes are the shell's: a process a signal ended has 128 + its number (envd says -1);
  a process the sandbox's memory limit ended says so in ``error``.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext
from protobuf import Oneof

from shared.errors import NotFound, PaddockError, SandboxNotFound, ValidationFailed
from shared.output import END, PTY, STDERR, STDOUT, Chunk
from shared.redisconn import REDIS_DOWN
from shared.store import Sandbox
from web.api.e2b_control.state import control_state
from web.api.envd import access, errors
from web.api.envd.gen.process_connect import ProcessSync
from web.api.envd.gen.process_pb import (
    PTY as PtyMessage,
)
from web.api.envd.gen.process_pb import (
    CloseStdinRequest,
    CloseStdinResponse,
    ConnectRequest,
    ConnectResponse,
    ListRequest,
    ListResponse,
    ProcessConfig,
    ProcessEvent,
    ProcessInfo,
    ProcessInput,
    ProcessSelector,
    SendInputRequest,
    SendInputResponse,
    SendSignalRequest,
    SendSignalResponse,
    Signal,
    StartRequest,
    StartResponse,
    StreamInputRequest,
    StreamInputResponse,
    UpdateRequest,
    UpdateResponse,
)
from web.api.envd.table import Entry, ProcessTable
from web.services import Services
from workers.backends.base import SANDBOX_HOME

T = TypeVar("T")
R = TypeVar("R", StartResponse, ConnectResponse)

KEEPALIVE = 5.0  # seconds of silence before a keepalive (less when the client asks less)
_BLOCK_MS = 1000  # one blocking read of the output
# Chunks one read takes: a chunk is at most 256 KiB (the supervisor's), so a stream holds
# at most 2 MiB of output at once, however much a process printed (a Connect replays it all).
_READ_CHUNKS = 8
_TOUCH_EVERY = 5.0  # how often a stream marks its sandbox active
_DEADLINE_GRACE = 5.0  # past the call's deadline (the process was killed then), the stream ends
MAX_CONFIG = 256 << 10  # a process's program, arguments, env vars, cwd and tag (bytes)
MAX_TAG = 256
_DATA = {STDOUT: "stdout", STDERR: "stderr", PTY: "pty"}
_SIGNALS = {Signal.SIGTERM: "SIGTERM", Signal.SIGKILL: "SIGKILL"}
_NOT_RUNNING = ("exited",)


class ProcessService(ProcessSync):
    """The generated ``ProcessSync`` protocol's methods; see the module docstring."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.sandboxes = services.sandboxes
        self.plog = services.sandboxes.plog
        self.table = ProcessTable(services.redis, self.plog, services.settings.sandbox_max_lifetime)

    # -- plumbing ------------------------------------------------------------------------------
    def _sandbox(self, ctx: RequestContext[Any, Any]) -> Sandbox:
        headers = ctx.request_headers
        sandbox = access.authorise(self.services, headers)
        access.check_user(headers)
        return sandbox

    def _run(self, ctx: RequestContext[Any, Any], fn: Callable[[Sandbox], T]) -> T:
        """Authorise the call, then ``fn(sandbox)``; Paddock's errors as Connect's."""
        try:
            return fn(self._sandbox(ctx))
        except PaddockError as exc:
            raise errors.to_connect(exc) from None

    def _find(self, sandbox: Sandbox, selector: ProcessSelector | None) -> Entry:
        """The process the selector names (by pid, or the newest with the tag). Raises
        ValidationFailed, NotFound."""
        chosen = selector.selector if selector is not None else None
        value = chosen.value if chosen is not None else None
        if isinstance(value, int):
            entry = self.table.get(sandbox.sandbox_id, value)
            what = f"pid {value}"
        elif isinstance(value, str):
            entry = self.table.by_tag(sandbox.sandbox_id, value)
            what = f"tag {value[:MAX_TAG]!r}"
        else:
            raise ValidationFailed({"process": "a pid or a tag is required"})
        if entry is None or not self.plog.exists(sandbox.sandbox_id, entry.process_id):
            raise NotFound(f"process with {what} not found")
        return entry

    def _running(self, sandbox: Sandbox, entry: Entry) -> bool:
        status = self.plog.info(sandbox.sandbox_id, entry.process_id).get("status")
        return status is not None and status not in _NOT_RUNNING

    def _not_done(self, sandbox: Sandbox, entry: Entry, what: str) -> Exception:
        """Why a host said no: the process is not running (not_found, as envd), or ``what``
        (failed_precondition) when it is."""
        if not self._running(sandbox, entry):
            return NotFound(f"process with pid {entry.pid} is not running")
        return ConnectError(Code.FAILED_PRECONDITION, what)

    # -- listing -------------------------------------------------------------------------------
    def list(self, request: ListRequest, ctx: RequestContext[Any, Any], /) -> ListResponse:
        def listing(sb: Sandbox) -> ListResponse:
            self.table.sweep(sb.sandbox_id)
            found = []
            for entry in self.table.running(sb.sandbox_id):
                info = self.plog.info(sb.sandbox_id, entry.process_id)
                if info.get("status") in (None, *_NOT_RUNNING):
                    continue
                found.append(
                    ProcessInfo(
                        config=self._config(info.get("envd", "")), pid=entry.pid, tag=entry.tag
                    )
                )
            return ListResponse(processes=found)

        return self._run(ctx, listing)

    def _config(self, sealed: str) -> ProcessConfig:
        if not sealed:
            return ProcessConfig()
        try:
            raw = json.loads(self.services.box.open_text(sealed))
            cwd = raw.get("cwd")
            return ProcessConfig(
                cmd=str(raw.get("cmd", "")),
                args=[str(a) for a in raw.get("args", [])],
                envs={str(k): str(v) for k, v in raw.get("envs", {}).items()},
                cwd=cwd if isinstance(cwd, str) else None,
            )
        except (PaddockError, ValueError, TypeError, AttributeError):
            return ProcessConfig()  # sealed with a key since rotated away, or not ours: empty

    # -- starting and following ----------------------------------------------------------------
    def start(
        self, request: StartRequest, ctx: RequestContext[Any, Any], /
    ) -> Iterator[StartResponse]:
        return self._follow(ctx, lambda sb: self._launch(sb, request, ctx), StartResponse)

    def connect(
        self, request: ConnectRequest, ctx: RequestContext[Any, Any], /
    ) -> Iterator[ConnectResponse]:
        return self._follow(ctx, lambda sb: self._find(sb, request.process), ConnectResponse)

    def _launch(
        self, sandbox: Sandbox, request: StartRequest, ctx: RequestContext[Any, Any]
    ) -> Entry:
        """Start the process the request describes. Raises ValidationFailed, QuotaExceeded,
        BackendUnsupported (a terminal on the docker backend), WorkerTimeout."""
        config = request.process or ProcessConfig()
        argv = [config.cmd, *config.args]
        envs = dict(config.envs)
        cwd = config.cwd if config.has_field("cwd") and config.cwd else None
        tag = request.tag if request.has_field("tag") else None
        if not config.cmd:
            raise ValidationFailed({"process.cmd": "is required"})
        if any("\x00" in a for a in argv):
            raise ValidationFailed({"process.args": "must not hold NUL"})
        if any(not k or "=" in k or "\x00" in k + v for k, v in envs.items()):
            raise ValidationFailed({"process.envs": "names without '=' or NUL, values without NUL"})
        if tag is not None and len(tag) > MAX_TAG:
            raise ValidationFailed({"tag": f"at most {MAX_TAG} characters"})
        described = {"cmd": config.cmd, "args": list(config.args), "envs": envs, "cwd": cwd}
        plain = json.dumps({**described, "tag": tag})
        if len(plain.encode()) > MAX_CONFIG:
            raise ValidationFailed(
                {"process": f"program, args and envs: at most {MAX_CONFIG} bytes"}
            )
        pty = _size(request.pty) if request.pty is not None else None
        stdin = request.stdin if request.has_field("stdin") else True
        remaining = ctx.timeout_ms
        timeout_ms = max(1, int(remaining)) if remaining is not None else 0
        env = {**control_state(self.services).env_vars(sandbox.sandbox_id), **envs}
        self.table.sweep(sandbox.sandbox_id)
        process_id, pid = self.sandboxes.launch(
            sandbox,
            shlex.join(argv),
            env,
            access.resolve(cwd) if cwd else SANDBOX_HOME,
            argv=argv,
            pty=pty,
            stdin=stdin,
            timeout_ms=timeout_ms,
            envd=self.services.box.seal_text(plain),
        )
        pid = self.table.add(sandbox.sandbox_id, pid, process_id, tag)
        return Entry(pid, process_id, tag, time.time())

    def _follow(
        self,
        ctx: RequestContext[Any, Any],
        open_process: Callable[[Sandbox], Entry],
        wrap: Callable[..., R],
    ) -> Iterator[R]:
        """The stream of a Start or Connect: authorise, take a stream slot, start or find the
        process, then its events (module docstring). The slot is given back however the
        stream ends: at its end, an error, or the client gone (the server closes this)."""
        try:
            sandbox = self._sandbox(ctx)
            release = self.sandboxes.stream_slot(sandbox)
        except PaddockError as exc:
            raise errors.to_connect(exc) from None
        try:
            try:
                entry = open_process(sandbox)
            except PaddockError as exc:
                raise errors.to_connect(exc) from None
            yield wrap(event=_event("start", ProcessEvent.StartEvent(pid=entry.pid)))
            for event in self._events(sandbox, entry, ctx):
                yield wrap(event=event)
        finally:
            release()

    def _events(
        self, sandbox: Sandbox, entry: Entry, ctx: RequestContext[Any, Any]
    ) -> Iterator[ProcessEvent]:
        """The process's output from its start, keepalives, then its end. Raises ConnectError
        when the process is removed before its end, or past the call's deadline."""
        sid, process_id = sandbox.sandbox_id, entry.process_id
        keepalive = _keepalive(ctx)
        remaining = ctx.timeout_ms
        now = time.monotonic()
        deadline = now + remaining / 1000 + _DEADLINE_GRACE if remaining is not None else None
        after, quiet_since, touched = "0-0", now, now
        while True:
            try:
                got = self.plog.chunks(sid, process_id, after, _BLOCK_MS, _READ_CHUNKS)
            except REDIS_DOWN:
                raise ConnectError(Code.UNAVAILABLE, "the output store is unreachable") from None
            for chunk in got:
                after = chunk.id
                if chunk.kind == END:
                    yield _event("end", _end(chunk))
                    self.table.delivered(sid, entry.pid)
                    return
                field = _DATA.get(chunk.kind)
                if field is not None and chunk.data:
                    yield _event("data", _data(field, chunk.data))
            now = time.monotonic()
            if got:
                quiet_since = now
            elif not self.plog.exists(sid, process_id):
                if self.sandboxes.owner(sid) is None:
                    raise errors.to_connect(SandboxNotFound(f"The sandbox {sid} was not found"))
                raise ConnectError(Code.NOT_FOUND, f"process with pid {entry.pid} was removed")
            elif now - quiet_since >= keepalive:
                yield _event("keepalive", ProcessEvent.KeepAlive())
                quiet_since = now
            if now - touched >= _TOUCH_EVERY:
                self.sandboxes.store.touch(sid)
                touched = now
            if deadline is not None and now > deadline:
                raise ConnectError(Code.DEADLINE_EXCEEDED, "the call's timeout passed")

    # -- input, signals, size ------------------------------------------------------------------
    def update(self, request: UpdateRequest, ctx: RequestContext[Any, Any], /) -> UpdateResponse:
        def update(sb: Sandbox) -> UpdateResponse:
            entry = self._find(sb, request.process)
            cols, rows = _size(request.pty)
            if not self.sandboxes.resize(sb, entry.process_id, cols, rows):
                raise NotFound(f"process with pid {entry.pid} is not running")
            return UpdateResponse()

        return self._run(ctx, update)

    def send_input(
        self, request: SendInputRequest, ctx: RequestContext[Any, Any], /
    ) -> SendInputResponse:
        def send(sb: Sandbox) -> SendInputResponse:
            entry = self._find(sb, request.process)
            self._input(sb, entry, _input_bytes(request.input))
            return SendInputResponse()

        return self._run(ctx, send)

    def stream_input(
        self, request: Iterator[StreamInputRequest], ctx: RequestContext[Any, Any], /
    ) -> StreamInputResponse:
        """The first message names the process; each data message after it is written in
        order (one host command each). Holds a stream slot while the client sends."""

        def stream(sb: Sandbox) -> StreamInputResponse:
            release = self.sandboxes.stream_slot(sb)
            try:
                first = next(request, None)
                start = first.event.value if first is not None and first.event else None
                if not isinstance(start, StreamInputRequest.StartEvent):
                    raise ValidationFailed({"event": "the first message must be start"})
                entry = self._find(sb, start.process)
                for message in request:
                    value = message.event.value if message.event is not None else None
                    if isinstance(value, StreamInputRequest.DataEvent):
                        self._input(sb, entry, _input_bytes(value.input))
                    elif isinstance(value, StreamInputRequest.StartEvent):
                        raise ValidationFailed({"event": "start comes once, first"})
                return StreamInputResponse()
            finally:
                release()

        return self._run(ctx, stream)

    def _input(self, sandbox: Sandbox, entry: Entry, data: bytes) -> None:
        if data and not self.sandboxes.send_input(sandbox, entry.process_id, data):
            raise self._not_done(
                sandbox, entry, "the process's stdin is not open (stdin=False, or closed)"
            )

    def close_stdin(
        self, request: CloseStdinRequest, ctx: RequestContext[Any, Any], /
    ) -> CloseStdinResponse:
        def close(sb: Sandbox) -> CloseStdinResponse:
            entry = self._find(sb, request.process)
            if not self.sandboxes.close_stdin(sb, entry.process_id):
                raise self._not_done(
                    sb, entry, "the process's stdin is not open (or closed already)"
                )
            return CloseStdinResponse()

        return self._run(ctx, close)

    def send_signal(
        self, request: SendSignalRequest, ctx: RequestContext[Any, Any], /
    ) -> SendSignalResponse:
        """not_found for a process that is not running (the SDK's kill then answers False)."""

        def signal(sb: Sandbox) -> SendSignalResponse:
            entry = self._find(sb, request.process)
            name = _SIGNALS.get(request.signal)
            if name is None:
                raise ValidationFailed({"signal": "SIGTERM or SIGKILL"})
            if not self.sandboxes.signal(sb, entry.process_id, name):
                raise NotFound(f"process with pid {entry.pid} is not running")
            return SendSignalResponse()

        return self._run(ctx, signal)


def _keepalive(ctx: RequestContext[Any, Any]) -> float:
    """KEEPALIVE, or the client's ``Keepalive-Ping-Interval`` when shorter (at least 1 s)."""
    raw = ctx.request_headers.get("keepalive-ping-interval", "")
    asked = int(raw) if raw.isdigit() else 0
    return max(1.0, min(KEEPALIVE, float(asked))) if asked else KEEPALIVE


def _size(pty: PtyMessage | None) -> tuple[int, int]:
    size = pty.size if pty is not None else None
    if size is None or not (0 < size.cols <= 0xFFFF and 0 < size.rows <= 0xFFFF):
        raise ValidationFailed({"pty.size": "cols and rows of 1-65535"})
    return size.cols, size.rows


def _input_bytes(given: ProcessInput | None) -> bytes:
    """The bytes of a ProcessInput (stdin or pty: both go to the process's input)."""
    chosen = given.input if given is not None else None
    if chosen is None or not isinstance(chosen.value, bytes):
        raise ValidationFailed({"input": "stdin or pty bytes are required"})
    return chosen.value


def _event(field: str, value: Any) -> ProcessEvent:
    """A ProcessEvent with its oneof ``field`` (start, data, end, keepalive) set."""
    return ProcessEvent(event=Oneof(field, value))  # type: ignore[arg-type]


def _data(field: str, data: bytes) -> ProcessEvent.DataEvent:
    """A DataEvent with its oneof ``field`` (stdout, stderr, pty) set."""
    return ProcessEvent.DataEvent(output=Oneof(field, data))  # type: ignore[arg-type]


def _end(chunk: Chunk) -> ProcessEvent.EndEvent:
    code = chunk.exit_code
    error = None
    if chunk.oom_killed:
        error = "the process was killed: the sandbox ran out of memory"
    elif code is None:
        error = "the process's exit status is unknown"
    return ProcessEvent.EndEvent(
        exit_code=-1 if code is None else code,
        exited=code is not None,
        status=f"exit status {code}" if code is not None else "unknown",
        error=error,
    )
