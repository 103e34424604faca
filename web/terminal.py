"""The terminal WebSocket: ``/v1/sandboxes/{id}/terminal``, a login shell on a pseudo-terminal
in the sandbox (the supervisor backend's PTY processes), for the console's xterm.js.

Opening one takes two steps, because a browser cannot put an ``Authorization`` header on a
WebSocket handshake and the API key must never be in a URL: ``POST /v1/sandboxes/{id}/terminal``
with the API key answers a ticket (`Tickets`: random, one use, valid TICKET_TTL seconds, kept
in Redis by its hash and bound to the tenant and the sandbox), and the socket is opened with
``?ticket=...&cols=&rows=``. A ticket for another sandbox, or a sandbox not the tenant's,
closes with 4404; a missing, used or expired ticket with 4401.

Frames. The server sends the terminal's output as **binary** frames (the bytes as the shell
printed them, in order) and JSON text frames: ``ready {cols, rows}`` once the shell runs,
``exit {exit_code}`` when it ended (then close 1000), ``error {code, message}`` before a close
or about a refused frame. The client sends JSON text frames ``input {data}`` (keys, pastes),
``resize {cols, rows}`` and ``ping`` (answered ``pong``); a binary frame is input bytes.
Frames that arrive while the previous input is being delivered are sent on as one write.

Lifetime: the shell lives as long as its socket. Closing the socket (the tab, the page, a
network drop, a web worker restart) kills the shell's process group and forgets its output,
and a new socket gets a new shell. While open, the socket keeps the sandbox from idling out.

Bounds: a client frame over MAX_FRAME bytes closes with 1009; more than MAX_FRAMES_PER_10S
frames or MAX_INPUT_PER_10S input bytes in ten seconds close with 4429; no client frame for
IDLE_AFTER seconds closes with 4408. A tenant holds at most TENANT_MAX_TERMINALS terminals and
a sandbox SANDBOX_MAX_TERMINALS (4429, and the ticket route answers 429 when already full).
The shell's output counts against the output budgets like any process's
(PADDOCK_MAX_OUTPUT_BYTES per process): past them Paddock's ``[paddock] output truncated``
line is the last output; a new terminal starts afresh. A host error closes with 4000 + its HTTP
status (4501: the Docker backend has no terminals; the console then keeps its command box).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import secrets
import shlex
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import orjson
import redis
from flask import Response, jsonify, request
from simple_websocket import ConnectionClosed

from shared import keys
from shared.errors import PaddockError, QuotaExceeded, SandboxNotFound
from shared.output import END, PTY, STDERR, STDOUT
from shared.redisconn import REDIS_DOWN
from shared.slots import Slots
from shared.store import Sandbox
from web.api.e2b_control.state import control_state
from web.api.v1 import sandboxes as v1_sandboxes
from web.api.v1.schemas import TerminalTicket
from web.auth import tenant_from_api_key
from web.services import Services, current_services
from web.ws import sock
from workers.backends.base import SANDBOX_HOME

logger = logging.getLogger(__name__)

TICKET_TTL = 60  # seconds between the ticket's POST and the socket's handshake
MAX_FRAME = 32 << 10  # bytes of one client frame (JSON); the console sends pastes in pieces
MAX_FRAMES_PER_10S = 600
MAX_INPUT_PER_10S = 256 << 10
MAX_BATCH = 16 << 10  # input bytes sent to the sandbox in one host command
MAX_COLS, MAX_ROWS = 1000, 500
DEFAULT_SIZE = (80, 24)
IDLE_AFTER = 900.0  # seconds with no client frame
TENANT_MAX_TERMINALS = 8
SANDBOX_MAX_TERMINALS = 3
TERMINALS = "terminals"  # slot kinds (shared/slots.py): per tenant, and per sandbox
SANDBOX_TERMINALS = "sandbox-terminals"
# Tickets a tenant may be given in any TICKET_TTL (each a Redis key until used or expired):
# enough for every terminal it may open, a few times over.
TICKETS = "terminal-tickets"
TENANT_MAX_TICKETS = 8 * TENANT_MAX_TERMINALS
SLOT_TTL = 60.0  # a terminal's slots lapse this long after its web worker died
SLOT_REFRESH = SLOT_TTL / 3
MAX_OUTPUT_FRAME = 256 << 10  # bytes of output gathered into one frame at most
OUTPUT_BLOCK_MS = 1000  # one blocking read of the output (also how often idleness is checked)
RECEIVE_WAKE = 5.0
TOUCH_EVERY = 5.0  # how often an open terminal marks its sandbox active
SHELL = ["/bin/bash", "-l"]
SHELL_ENV = {"TERM": "xterm-256color", "LANG": "C.UTF-8"}

CLOSE_DONE = 1000
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
CLOSE_BAD_TICKET = 4401
CLOSE_NOT_FOUND = 4404
CLOSE_IDLE = 4408
CLOSE_TOO_MUCH = 4429


@dataclass(frozen=True)
class Ticket:
    tenant_id: str
    sandbox_id: str


class Tickets:
    """One-use tickets that open a terminal socket (module docstring). Stored by their
    sha256, so what Redis holds cannot be replayed."""

    def __init__(self, r: redis.Redis) -> None:
        self.r = r

    def issue(self, tenant_id: str, sandbox_id: str) -> str:
        ticket = secrets.token_urlsafe(32)
        value = json.dumps({"tenant": tenant_id, "sandbox": sandbox_id})
        self.r.set(keys.terminal_ticket(_digest(ticket)), value, ex=TICKET_TTL)
        return ticket

    def redeem(self, ticket: str) -> Ticket | None:
        """What ``ticket`` opens, once; None when unknown, used or expired."""
        if not ticket or len(ticket) > 100:
            return None
        raw = self.r.getdel(keys.terminal_ticket(_digest(ticket)))
        if raw is None:
            return None
        value = json.loads(raw)
        return Ticket(str(value["tenant"]), str(value["sandbox"]))


def _digest(ticket: str) -> str:
    return hashlib.sha256(ticket.encode()).hexdigest()


def issue_ticket(services: Services, tenant_id: str, sandbox_id: str) -> tuple[str, int]:
    """A ticket for a terminal on the tenant's sandbox, and its lifetime in seconds.

    Raises SandboxNotFound (not the tenant's, or gone), QuotaExceeded (the tenant or the
    sandbox already has all its terminals open; checked again when the socket opens)."""
    sandbox = services.sandboxes.get(tenant_id, sandbox_id)
    slots = Slots(services.redis)
    if slots.count(TERMINALS, tenant_id) >= TENANT_MAX_TERMINALS:
        raise QuotaExceeded(_full("this tenant", TENANT_MAX_TERMINALS), retry_after=5)
    if slots.count(SANDBOX_TERMINALS, sandbox.sandbox_id) >= SANDBOX_MAX_TERMINALS:
        raise QuotaExceeded(_full("this sandbox", SANDBOX_MAX_TERMINALS), retry_after=5)
    if slots.acquire(TICKETS, tenant_id, TENANT_MAX_TICKETS, TICKET_TTL) is None:
        raise QuotaExceeded(
            f"this tenant was given {TENANT_MAX_TICKETS} terminal tickets in the last "
            f"{TICKET_TTL:.0f} s, the most it may; open the terminals or wait",
            retry_after=5,
        )
    return Tickets(services.redis).issue(tenant_id, sandbox.sandbox_id), TICKET_TTL


def _full(who: str, limit: int) -> str:
    return f"{who} has {limit} terminals open, the most it may; close one first"


def _size(raw_cols: object, raw_rows: object) -> tuple[int, int] | None:
    """(cols, rows) when both are integers in range, else None."""
    try:
        cols, rows = int(str(raw_cols)), int(str(raw_rows))
    except ValueError:
        return None
    if 0 < cols <= MAX_COLS and 0 < rows <= MAX_ROWS:
        return cols, rows
    return None


class Terminal:
    """One open terminal socket: the request greenlet reads client frames (`serve`), a pump
    sends the shell's output (`pump`); both write under one lock."""

    def __init__(self, ws: Any, services: Services, sandbox: Sandbox) -> None:
        self.ws = ws
        self.services = services
        self.sandboxes = services.sandboxes
        self.plog = services.sandboxes.plog
        self.sandbox = sandbox
        self.sid = sandbox.sandbox_id
        self.slots = Slots(services.redis)
        self.held: list[tuple[str, str, str]] = []  # (kind, owner, token)
        self.process_id = ""
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.last_frame = time.monotonic()
        self.frames: deque[float] = deque()
        self.inputs: deque[tuple[float, int]] = deque()

    # -- sending ---------------------------------------------------------------------------
    def send(self, frame: dict[str, Any]) -> None:
        with self.lock:
            self.ws.send(json.dumps(frame, separators=(",", ":")))

    def send_output(self, data: bytes) -> None:
        with self.lock:
            self.ws.send(data)

    def close(self, code: int, message: str, error: str = "") -> None:
        """Say why (an ``error`` frame when ``error`` names a code), then close."""
        self.stop.set()
        with contextlib.suppress(ConnectionClosed):
            if error:
                self.send({"type": "error", "code": error, "message": message})
            with self.lock:
                # A close frame's reason holds at most 123 bytes.
                self.ws.close(reason=code, message=message.encode()[:120].decode(errors="ignore"))
        event = getattr(self.ws, "event", None)  # wakes `serve` out of its receive()
        if event is not None:
            event.set()

    def refuse(self, exc: PaddockError) -> None:
        code = 4000 + exc.status if 400 <= exc.status < 600 else CLOSE_INTERNAL
        self.close(code, exc.message, exc.code)

    # -- opening and ending ----------------------------------------------------------------
    def hold_slots(self) -> None:
        """Raises QuotaExceeded when the tenant or the sandbox has all its terminals."""
        for kind, owner, limit, who in (
            (TERMINALS, self.sandbox.tenant_id, TENANT_MAX_TERMINALS, "this tenant"),
            (SANDBOX_TERMINALS, self.sid, SANDBOX_MAX_TERMINALS, "this sandbox"),
        ):
            token = self.slots.acquire(kind, owner, limit, SLOT_TTL)
            if token is None:
                raise QuotaExceeded(_full(who, limit), retry_after=5)
            self.held.append((kind, owner, token))

    def refresh_slots(self) -> None:
        for kind, owner, token in self.held:
            self.slots.refresh(kind, owner, token, SLOT_TTL)

    def start(self, size: tuple[int, int]) -> None:
        """Start the shell. Raises BackendUnsupported (docker backend), QuotaExceeded (the
        sandbox's process limit), WorkerTimeout, the host's errors."""
        env = {**control_state(self.services).env_vars(self.sid), **SHELL_ENV}
        self.process_id, _ = self.sandboxes.launch(
            self.sandbox, shlex.join(SHELL), env, SANDBOX_HOME, argv=SHELL, pty=size
        )
        logger.info("sandbox %s: terminal %s opened (%dx%d)", self.sid, self.process_id, *size)

    def end(self) -> None:
        """Kill the shell, forget its output, give the slots back; whatever fails is logged
        (the reaper removes the sandbox's processes with it in any case)."""
        self.stop.set()
        if self.process_id:
            try:
                self.sandboxes.stop_process(self.sandbox, self.process_id)
            except (PaddockError, redis.RedisError) as exc:
                logger.warning(
                    "sandbox %s: terminal %s not killed: %s", self.sid, self.process_id, exc
                )
            with contextlib.suppress(*REDIS_DOWN):
                self.sandboxes.forget_process(self.sandbox, self.process_id)
            logger.info("sandbox %s: terminal %s closed", self.sid, self.process_id)
        for kind, owner, token in self.held:
            with contextlib.suppress(*REDIS_DOWN):
                self.slots.release(kind, owner, token)
        self.held = []

    # -- server → client -------------------------------------------------------------------
    def pump(self) -> None:
        after = "0-0"
        touched = refreshed = time.monotonic()
        try:
            while not self.stop.is_set():
                got = self.plog.chunks(self.sid, self.process_id, after, block_ms=OUTPUT_BLOCK_MS)
                out = bytearray()
                for chunk in got:
                    after = chunk.id
                    if chunk.kind == END:
                        if out:
                            self.send_output(bytes(out))
                        self.send({"type": "exit", "exit_code": chunk.exit_code})
                        self.close(CLOSE_DONE, "the shell exited")
                        return
                    if chunk.kind == PTY:
                        out += chunk.data
                    elif chunk.kind in (STDOUT, STDERR):  # Paddock's own lines, on a terminal
                        out += chunk.data.replace(b"\n", b"\r\n")
                    if len(out) >= MAX_OUTPUT_FRAME:
                        self.send_output(bytes(out))
                        out.clear()
                if out:
                    self.send_output(bytes(out))
                now = time.monotonic()
                if not got and not self.plog.exists(self.sid, self.process_id):
                    self.close(CLOSE_NOT_FOUND, "the sandbox or its shell is gone", "gone")
                    return
                if now - self.last_frame > IDLE_AFTER:
                    why = f"no input for {int(IDLE_AFTER)} s: the terminal was closed"
                    self.close(CLOSE_IDLE, why, "idle")
                    return
                if now - touched >= TOUCH_EVERY:
                    self.sandboxes.store.touch(self.sid)
                    touched = now
                if now - refreshed >= SLOT_REFRESH:
                    self.refresh_slots()
                    refreshed = now
        except ConnectionClosed:
            self.stop.set()
        except REDIS_DOWN:
            self.close(CLOSE_INTERNAL, "the output store is unreachable", "unavailable")
        except Exception:
            logger.exception("sandbox %s: terminal %s: pump failed", self.sid, self.process_id)
            self.close(CLOSE_INTERNAL, "internal error", "internal")

    # -- client → server -------------------------------------------------------------------
    def serve(self) -> None:
        while not self.stop.is_set():
            try:
                raw = self.ws.receive(timeout=RECEIVE_WAKE)
                if raw is None:
                    continue
                # What else came while the last input was on its way goes on as one write.
                batch = [raw]
                while len(batch) < 64:
                    more = self.ws.receive(timeout=0)
                    if more is None:
                        break
                    batch.append(more)
            except ConnectionClosed:
                break
            try:
                self.handle(batch)
            except ConnectionClosed:
                break
            except PaddockError as exc:  # the host's: WorkerTimeout, SandboxGone...
                self.refuse(exc)
            except REDIS_DOWN:
                self.close(CLOSE_INTERNAL, "the state store is unreachable", "unavailable")

    def handle(self, batch: list[str | bytes]) -> None:
        """Apply a batch of client frames in their order, input next to input gathered into
        one write and resizes next to each other into the last one. Closes the socket when a
        frame breaks a bound (nothing of the batch is applied then)."""
        steps: list[bytearray | tuple[int, int]] = []
        now = time.monotonic()
        self.last_frame = now
        typed = 0
        for raw in batch:
            if len(raw) > MAX_FRAME:
                self.close(CLOSE_TOO_BIG, f"a frame is over {MAX_FRAME} bytes", "frame_too_large")
                return
            self.frames.append(now)
            while self.frames and self.frames[0] < now - 10:
                self.frames.popleft()
            if len(self.frames) > MAX_FRAMES_PER_10S:
                why = f"over {MAX_FRAMES_PER_10S} frames in 10 s"
                self.close(CLOSE_TOO_MUCH, why, "too_many_frames")
                return
            got = self.frame(raw)
            if isinstance(got, tuple):
                if steps and isinstance(steps[-1], tuple):
                    steps[-1] = got
                else:
                    steps.append(got)
            elif got:
                typed += len(got)
                if steps and isinstance(steps[-1], bytearray):
                    steps[-1] += got
                else:
                    steps.append(bytearray(got))
        if typed and not self.account_input(now, typed):
            return
        for step in steps:
            if isinstance(step, tuple):
                self.sandboxes.resize(self.sandbox, self.process_id, *step)
                continue
            for start in range(0, len(step), MAX_BATCH):
                piece = bytes(step[start : start + MAX_BATCH])
                self.sandboxes.send_input(self.sandbox, self.process_id, piece)

    def account_input(self, now: float, n: int) -> bool:
        self.inputs.append((now, n))
        while self.inputs and self.inputs[0][0] < now - 10:
            self.inputs.popleft()
        if sum(x for _, x in self.inputs) > MAX_INPUT_PER_10S:
            why = f"over {MAX_INPUT_PER_10S} bytes of input in 10 s"
            self.close(CLOSE_TOO_MUCH, why, "too_much_input")
            return False
        return True

    def frame(self, raw: str | bytes) -> bytes | tuple[int, int] | None:
        """One client frame: input bytes, a new size, or None (answered or refused here)."""
        if isinstance(raw, bytes):
            return raw
        try:
            frame = orjson.loads(raw)
        except orjson.JSONDecodeError:
            self.send({"type": "error", "code": "invalid_frame", "message": "not JSON"})
            return None
        kind = frame.get("type") if isinstance(frame, dict) else None
        if kind == "input" and isinstance(frame.get("data"), str):
            return str(frame["data"]).encode()
        if kind == "resize":
            size = _size(frame.get("cols"), frame.get("rows"))
            if size is None:
                why = f"cols 1-{MAX_COLS} and rows 1-{MAX_ROWS}, as integers"
                self.send({"type": "error", "code": "invalid_size", "message": why})
            return size
        if kind == "ping":
            self.send({"type": "pong"})
            return None
        why = 'frames are {"type": "input", "data"}, {"type": "resize", "cols", "rows"}, ping'
        self.send({"type": "error", "code": "invalid_frame", "message": why})
        return None


# Both under the v1 sandboxes blueprint: /v1/sandboxes/<sandbox_id>/terminal.
@v1_sandboxes.bp.post("/<sandbox_id>/terminal")
@tenant_from_api_key
def terminal_ticket(tenant_id: str, sandbox_id: str) -> tuple[Response, int]:
    services = current_services()
    ticket, ttl = issue_ticket(services, tenant_id, sandbox_id)
    body = {"ticket": ticket, "expires_in": ttl, "url": f"/v1/sandboxes/{sandbox_id}/terminal"}
    return jsonify(TerminalTicket().dump(body)), 201


@sock.route("/<sandbox_id>/terminal", bp=v1_sandboxes.bp)
def terminal_ws(ws: Any, sandbox_id: str) -> None:
    services = current_services()
    term: Terminal | None = None
    try:
        ticket = Tickets(services.redis).redeem(request.args.get("ticket", ""))
        if ticket is None:
            ws.close(reason=CLOSE_BAD_TICKET, message="missing, used or expired ticket")
            return
        if ticket.sandbox_id != sandbox_id:
            raise SandboxNotFound(f"The sandbox {sandbox_id[:64]} was not found")
        sandbox = services.sandboxes.get(ticket.tenant_id, sandbox_id)
        term = Terminal(ws, services, sandbox)
        size = _size(request.args.get("cols"), request.args.get("rows")) or DEFAULT_SIZE
        term.hold_slots()
        term.start(size)
        term.send({"type": "ready", "cols": size[0], "rows": size[1]})
    except PaddockError as exc:
        logger.warning("terminal on sandbox %s refused: %s", sandbox_id[:64], exc.code)
        if term is None:
            term = Terminal(ws, services, _NO_SANDBOX)
        term.refuse(exc)
        term.end()
        return
    except ConnectionClosed:
        if term is not None:
            term.end()
        return
    pump = threading.Thread(target=term.pump, daemon=True, name=f"term-{sandbox_id}")
    try:
        pump.start()
        term.serve()
    finally:
        term.end()
    if pump.is_alive():
        pump.join(OUTPUT_BLOCK_MS / 1000 + 5)


# What a refusal before the sandbox was found closes (it touches no sandbox).
_NO_SANDBOX = Sandbox("", "", "", "", "", 0.0)
