"""One proxied connection: through the relay of the sandbox's host (shared/relay.py) to the port,
then an HTTP exchange streamed both ways, or, for an Upgrade (WebSocket), the client's socket
spliced to the app's until either closes.

Nothing is held whole: request bodies go up 64 KiB at a time as the client sends them, answers
come down as the app sends them, and a client that stops reading stops the app's side too
(TCP back-pressure through the relay). Every socket has a timeout, the client's included from
before its body is read: a connection that passes no byte either way for
``PADDOCK_PROXY_IDLE_TIMEOUT`` seconds is closed (a client whose body stops coming gets 408,
an app that does not answer 504), and with it the tenant's slot.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from shared import relay
from shared.store import Sandbox
from web.ports import pages, wire
from web.services import Services

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

logger = logging.getLogger(__name__)

CHUNK = 64 << 10
_CONNECT_TIMEOUT = 5.0
_REPLY_TIMEOUT = 15.0  # the relay's own connect to the sandbox takes 5 s at most
_TOUCH_EVERY = 30.0  # traffic keeps the sandbox from idling out, one Redis write per this


class Activity:
    """Resets the sandbox's idle timer while bytes pass (at most every _TOUCH_EVERY s)."""

    def __init__(self, services: Services, sandbox_id: str) -> None:
        self.services = services
        self.sandbox_id = sandbox_id
        self.touched = time.monotonic()

    def mark(self) -> None:
        now = time.monotonic()
        if now - self.touched >= _TOUCH_EVERY:
            self.touched = now
            with contextlib.suppress(Exception):  # Redis away: the traffic goes on
                self.services.sandboxes.store.touch(self.sandbox_id)


def open_relay(services: Services, key: bytes, sandbox: Sandbox, port: int) -> socket.socket:
    """A connection to ``port`` in the sandbox, through its host's relay. Raises PortError:
    502 (no relay, nothing listening, unreachable), 503 (relay full), 504."""
    sid = sandbox.sandbox_id
    at = services.sandboxes.store.host_relay(sandbox.host_id)
    if not at:
        raise pages.bad_gateway(
            f"the host of sandbox {sid} runs no port relay (its worker is down or could not "
            "start one; see its log)"
        )
    host, _, port_text = at.rpartition(":")
    try:
        sock = socket.create_connection((host.strip("[]"), int(port_text)), _CONNECT_TIMEOUT)
    except (OSError, ValueError) as exc:
        logger.warning(
            "sandbox %s: relay %s of host %s unreachable: %s", sid, at, sandbox.host_id, exc
        )
        raise pages.bad_gateway(f"the host of sandbox {sid} cannot be reached") from None
    try:
        sock.settimeout(_REPLY_TIMEOUT)
        sock.sendall(relay.sign(key, sandbox.host_id, sid, port))
        reply = _read_line(sock)
    except OSError:
        sock.close()
        raise pages.gateway_timeout(f"the host of sandbox {sid} did not answer") from None
    if reply == "OK":
        sock.settimeout(services.settings.proxy_idle_timeout)
        return sock
    sock.close()
    code = reply.split(" ")[1] if reply.startswith("ERR ") and " " in reply else ""
    if code == relay.REFUSED:
        raise pages.closed_port(sid, port)
    if code == relay.BUSY:
        raise pages.PortError(
            503,
            "Busy",
            "the sandbox's host holds its most proxied connections (PADDOCK_RELAY_MAX_CONNECTIONS)",
            retry_after=1,
        )
    if code == relay.AUTH:
        logger.error(
            "sandbox %s: the relay of host %s refused our ticket: do the web and the "
            "host have the same PADDOCK_SECRET_KEY?",
            sid,
            sandbox.host_id,
        )
    if code == relay.UNKNOWN:
        raise pages.bad_gateway(f"the sandbox {sid} has no address on its host (it is ending)")
    raise pages.bad_gateway(f"port {port} of sandbox {sid} cannot be reached")


def _read_line(sock: socket.socket) -> str:
    """The relay's one-line reply, read a byte at a time: what follows it is the app's."""
    buf = bytearray()
    while len(buf) < relay.MAX_LINE:
        b = sock.recv(1)
        if not b:
            break
        if b == b"\n":
            return buf.decode("ascii", "replace")
        buf += b
    return ""


# -- HTTP ----------------------------------------------------------------------------------------
def send_body(environ: WSGIEnvironment, up: socket.socket, framing: str | None) -> None:
    """The client's body to the app, as it comes (gunicorn has undone any chunking). Raises
    PortError (400, 408) when the client's body is cut short or stops coming (its socket's
    timeout), OSError when the app's side fails."""
    if framing is None:
        return
    body = environ["wsgi.input"]

    def read(n: int) -> bytes:
        try:
            data: bytes = body.read(n)
        except OSError:  # a timeout, or the client went away (gunicorn's NoMoreData)
            raise pages.PortError(
                408,
                "Request timeout",
                "the request body stopped coming (PADDOCK_PROXY_IDLE_TIMEOUT)",
            ) from None
        return data

    if framing == "length":
        left = int(environ["CONTENT_LENGTH"])
        while left > 0:
            data = read(min(CHUNK, left))
            if not data:
                raise pages.bad_request("the request body ended before its Content-Length")
            up.sendall(data)
            left -= len(data)
        return
    while True:
        data = read(CHUNK)
        if not data:
            up.sendall(b"0\r\n\r\n")
            return
        up.sendall(b"%x\r\n%s\r\n" % (len(data), data))


class Answer:
    """The app's answer body as WSGI chunks; ``close`` (called by the server, written or not)
    frees the connection and the slot."""

    def __init__(
        self,
        resp: http.client.HTTPResponse,
        up: socket.socket,
        client: _Client,
        activity: Activity,
        done: Callable[[], None],
    ) -> None:
        self.resp = resp
        self.up = up
        self.client = client
        self.activity = activity
        self.done = done

    def __iter__(self) -> Iterator[bytes]:
        try:
            while True:
                chunk = self.resp.read1(CHUNK)
                if not chunk:
                    return
                self.activity.mark()
                yield chunk
        except (OSError, http.client.HTTPException) as exc:
            # The answer is cut short: the client must see its connection end, not a
            # shorter body on a connection kept alive.
            logger.info("sandbox %s: answer cut (%s)", self.activity.sandbox_id, type(exc).__name__)
            self.client.cut()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.resp.close()
            self.up.close()
        self.client.restore()
        self.done()


class _Client:
    """The client's socket (gunicorn's; absent under other servers), given the relay
    connection's idle timeout while the exchange lasts, so a client that stops sending its
    body or reading the answer cannot hold the app's side and the tenant's slot for ever."""

    def __init__(self, environ: WSGIEnvironment, timeout: float | None) -> None:
        self.sock: Any = environ.get("gunicorn.socket")
        self.was: float | None = None
        if self.sock is not None:
            self.was = self.sock.gettimeout()
            self.sock.settimeout(timeout)

    def cut(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)

    def restore(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.settimeout(self.was)


def forward(
    environ: WSGIEnvironment,
    start_response: StartResponse,
    up: socket.socket,
    activity: Activity,
    done: Callable[[], None],
) -> Answer:
    """Send the request up, answer with the app's status and headers, and return its body
    (an Answer that ends with ``done``). Raises PortError: 400 and 408 (see send_body), 502
    or 504 when the app sends no valid answer."""
    head, framing = wire.request_head(environ, upgrade=False)
    client = _Client(environ, up.gettimeout())
    try:
        try:
            up.sendall(head)
            send_body(environ, up, framing)
        except OSError:
            pass  # the app stopped reading (it may have answered early): read what it said
        method = str(environ.get("REQUEST_METHOD", "GET"))
        resp = http.client.HTTPResponse(up, method=method)
        try:
            resp.begin()
        except TimeoutError:
            raise pages.gateway_timeout("the app in the sandbox did not answer in time") from None
        except (OSError, http.client.HTTPException) as exc:
            raise pages.bad_gateway(
                f"the app in the sandbox sent no valid HTTP answer ({type(exc).__name__})"
            ) from None
        status = wire.status_line(resp.status, resp.reason)
        headers = wire.response_headers(resp.getheaders(), chunked=bool(resp.chunked))
    except BaseException:
        client.restore()
        raise
    start_response(status, headers)
    return Answer(resp, up, client, activity, done)


# -- Upgrade (WebSocket) -------------------------------------------------------------------------
def upgrade(environ: WSGIEnvironment, up: socket.socket, activity: Activity) -> None:
    """Send the Upgrade request up, then join the client's socket to the app's, raw, both ways,
    until both closed, either failed, or neither sent a byte for the idle time. Returns when
    the connection is over (the caller makes the server drop it). Raises PortError before
    anything was written to the client (the app sent no answer head)."""
    client = environ["gunicorn.socket"]
    idle = float(up.gettimeout() or 300.0)
    client.settimeout(idle)  # the connection is dropped afterwards: nothing to restore
    head, framing = wire.request_head(environ, upgrade=True)
    try:
        up.sendall(head)
        send_body(environ, up, framing)
    except OSError:
        raise pages.bad_gateway("the app in the sandbox closed the connection") from None
    first = _answer_head(up)  # the 101 (or a refusal) and whatever came with it
    client.sendall(first)
    activity.mark()
    splice(client, up, idle, activity)


def _answer_head(up: socket.socket) -> bytes:
    """The app's answer head (and any bytes that came after it in the same reads). Raises
    PortError when it sends none within wire.MAX_HEAD_BYTES or the idle time."""
    buf = bytearray()
    try:
        while b"\r\n\r\n" not in buf:
            if len(buf) > wire.MAX_HEAD_BYTES:
                raise pages.bad_gateway("the app's answer head is too large")
            data = up.recv(CHUNK)
            if not data:
                raise pages.bad_gateway("the app in the sandbox closed the connection")
            buf += data
    except TimeoutError:
        raise pages.gateway_timeout("the app in the sandbox did not answer in time") from None
    except OSError as exc:
        raise pages.bad_gateway(f"the app's connection failed ({type(exc).__name__})") from None
    if not buf.startswith(b"HTTP/1."):
        raise pages.bad_gateway("the app in the sandbox sent no valid HTTP answer")
    return bytes(buf)


def splice(a: socket.socket, b: socket.socket, idle: float, activity: Activity) -> None:
    """Carry bytes both ways between two sockets (each with ``idle`` as its timeout) until
    both ends closed their side, either fails, or no byte passed either way for ``idle``
    seconds. The other direction runs in a thread (a greenlet under gunicorn's gevent)."""
    last = [time.monotonic()]

    def stop() -> None:
        for s in (a, b):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                try:
                    data = src.recv(CHUNK)
                except TimeoutError:
                    if time.monotonic() - last[0] < idle:
                        continue  # the other way is busy
                    stop()
                    return
                if not data:
                    with contextlib.suppress(OSError):
                        dst.shutdown(socket.SHUT_WR)
                    return
                last[0] = time.monotonic()
                activity.mark()
                dst.sendall(data)
        except OSError:
            stop()

    other = threading.Thread(target=pump, args=(b, a), name="port-splice", daemon=True)
    other.start()
    pump(a, b)
    other.join(idle + 5)
    if other.is_alive():
        stop()
        other.join(5)
