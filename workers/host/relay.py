"""The host's port relay: the web tier's way into a port of a sandbox on this host, wherever the
web runs (the wire is shared/relay.py; the HTTP and WebSocket proxy is web/ports/).

One asyncio loop in a thread of the host worker accepts connections on
``PADDOCK_RELAY_ADDR:PADDOCK_RELAY_PORT``, reads one signed ticket (HMAC with a key derived from
``PADDOCK_SECRET_KEY``: only the web can make one), looks the sandbox's address up in the
backend (its own address on this host's sandbox network; nothing in the request names an
address), connects to the port and carries bytes both ways until either side closes or no
byte passes for ``PADDOCK_PROXY_IDLE_TIMEOUT`` (and _IDLE_MARGIN: the web's own timeout
comes first). At most ``PADDOCK_RELAY_MAX_CONNECTIONS`` at
once; a connection waits for its ticket 10 s at most.

The connection starts from the host, so the egress rules (workers/backends/docker/egress.py)
let it in and let its replies out (conntrack: ESTABLISHED), while nothing a sandbox starts
reaches the host or another sandbox. A sandbox without a network (mode ``none``) has no
address and is answered ``unknown``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable

from shared import relay
from shared.errors import ConfigError
from shared.settings import Settings

logger = logging.getLogger(__name__)

_TICKET_WAIT = 10.0
_CONNECT_TIMEOUT = 5.0
# The relay's idle time is the web's and this much more: the web, which answers the client,
# gives up first and says why (504: the app did not answer), not the relay's close.
_IDLE_MARGIN = 5.0
_CHUNK = 64 << 10
_MAX_NONCES = 200_000


class Relay:
    """Takes the settings and ``address_of(sandbox_id)`` (the sandbox's address on this host,
    None when it has none here)."""

    def __init__(self, settings: Settings, address_of: Callable[[str], str | None]) -> None:
        """Raises ConfigError (no secret key; a wildcard address without
        PADDOCK_RELAY_ADVERTISE, which the web could not reach)."""
        if not settings.relay_advertise and settings.relay_addr in ("", "0.0.0.0", "::"):
            raise ConfigError(
                "PADDOCK_RELAY_ADDR is a wildcard: set PADDOCK_RELAY_ADVERTISE to the address "
                "the web tier reaches this host's relay at"
            )
        self.settings = settings
        self.address_of = address_of
        self.keys = relay.relay_keys(settings.secret_key)
        self.idle = settings.proxy_idle_timeout + _IDLE_MARGIN
        self.open = 0
        self._nonces: dict[str, float] = {}
        self._pruned = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None

    # -- life ------------------------------------------------------------------------------------
    def start(self) -> str:
        """Listen, in a thread of its own; the ``host:port`` to announce. Raises OSError when
        the address cannot be bound."""
        bound: list[str | BaseException] = []
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(
                        self._handle,
                        self.settings.relay_addr,
                        self.settings.relay_port,
                        limit=_CHUNK,  # also the most a ticket line may be (then refused)
                        reuse_address=True,
                    )
                )
                bound.append(str(self._server.sockets[0].getsockname()[1]))
            except BaseException as exc:
                bound.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()

        threading.Thread(target=run, name="relay", daemon=True).start()
        ready.wait(30)
        if not bound or isinstance(bound[0], BaseException):
            raise OSError(f"the port relay could not listen: {bound[0] if bound else 'timeout'}")
        advertise = self.settings.relay_advertise or self.settings.relay_addr
        if ":" in advertise:
            advertise = f"[{advertise.strip('[]')}]"
        return f"{advertise}:{bound[0]}"

    def stop(self) -> None:
        loop, server = self._loop, self._server
        if loop is None or server is None:
            return
        loop.call_soon_threadsafe(server.close)
        loop.call_soon_threadsafe(loop.stop)

    # -- one connection --------------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.open >= self.settings.relay_max_connections:
            await self._refuse(writer, relay.BUSY, "the relay holds its most connections")
            return
        self.open += 1
        try:
            await self._serve(reader, writer)
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
            pass  # a peer went away or stalled: both ends are closed below
        finally:
            self.open -= 1
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), _TICKET_WAIT)
            ticket = relay.verify(self.keys, self.settings.host_id, line)
        except (ValueError, TimeoutError, asyncio.LimitOverrunError) as exc:
            logger.warning("relay: ticket refused (%s)", str(exc)[:80] or type(exc).__name__)
            await self._refuse(writer, relay.AUTH, "bad ticket")
            return
        if not self._first_use(ticket):
            logger.warning("relay: sandbox %s: a ticket used twice", ticket.sandbox_id)
            await self._refuse(writer, relay.AUTH, "ticket used already")
            return
        ip = self.address_of(ticket.sandbox_id)
        if ip is None:
            await self._refuse(writer, relay.UNKNOWN, "no such sandbox with a network here")
            return
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(ip, ticket.port, limit=_CHUNK), _CONNECT_TIMEOUT
            )
        except ConnectionRefusedError:
            await self._refuse(writer, relay.REFUSED, f"nothing listens on port {ticket.port}")
            return
        except (OSError, TimeoutError) as exc:
            await self._refuse(writer, relay.UNREACHABLE, type(exc).__name__)
            return
        try:
            writer.write(b"OK\n")
            await asyncio.wait_for(writer.drain(), self.idle)
            await self._splice(reader, writer, up_reader, up_writer)
        finally:
            up_writer.close()

    async def _refuse(self, writer: asyncio.StreamWriter, code: str, message: str) -> None:
        with contextlib.suppress(OSError, TimeoutError):
            writer.write(f"ERR {code} {message}\n".encode())
            await asyncio.wait_for(writer.drain(), 5)
        writer.close()

    def _first_use(self, ticket: relay.Ticket) -> bool:
        """Whether the ticket's nonce is new (each is kept until its ticket expires)."""
        now = time.time()
        if now - self._pruned >= 1.0:
            self._nonces = {n: t for n, t in self._nonces.items() if t >= now}
            self._pruned = now
        if len(self._nonces) >= _MAX_NONCES:
            return False
        if ticket.nonce in self._nonces:
            return False
        self._nonces[ticket.nonce] = ticket.expires
        return True

    async def _splice(
        self,
        a_reader: asyncio.StreamReader,
        a_writer: asyncio.StreamWriter,
        b_reader: asyncio.StreamReader,
        b_writer: asyncio.StreamWriter,
    ) -> None:
        """Both ways until both ends closed their side (a half-close is passed on), either
        fails, or nothing passes either way for ``idle`` seconds."""
        loop = asyncio.get_running_loop()
        last = [loop.time()]

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while True:
                try:
                    data = await asyncio.wait_for(src.read(_CHUNK), self.idle)
                except TimeoutError:
                    if loop.time() - last[0] < self.idle:
                        continue  # the other way is busy
                    raise
                if not data:
                    if dst.can_write_eof():
                        with contextlib.suppress(OSError):
                            dst.write_eof()
                    return
                last[0] = loop.time()
                dst.write(data)
                await asyncio.wait_for(dst.drain(), self.idle)

        tasks = [
            asyncio.create_task(pump(a_reader, b_writer)),
            asyncio.create_task(pump(b_reader, a_writer)),
        ]
        _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for t in pending:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t


def start_relay(
    settings: Settings, address_of: Callable[[str], str | None]
) -> tuple[Relay | None, str]:
    """Start the host's relay; (it, the address to announce). (None, "") when it cannot run
    (no secret key, the address taken): logged, and the web answers 502 for this host's ports."""
    try:
        r = Relay(settings, address_of)
        return r, r.start()
    except (ConfigError, OSError) as exc:
        logger.error(
            "host %s: no port relay, its sandboxes' ports are unreachable: %s",
            settings.host_id,
            exc,
        )
        return None, ""
