"""The HTTP client both LLM SDKs send through, so that a tenant's ``base_url`` cannot steer the
worker to an internal service.

- No redirects are followed: a 3xx goes back to the SDK as an error (``llm_redirect_refused``),
  and the address it names gets no request.
- Every connection resolves the host once, here, checks every address with
  `shared.netpolicy.address_allowed` (the rule `check_base_url` uses, with the operator's
  allow-list), connects to a checked address and nothing else (no second resolution, so a name
  that answers differently the next time gains nothing), and checks the connected peer again.
- TLS still verifies the certificate against the host *name* of the URL: httpcore starts TLS
  with the origin's host as the server name, whatever address the socket went to.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Iterator

import httpcore2
import httpx2

from shared.netpolicy import RESOLVE_TIMEOUT, address_allowed, resolve

logger = logging.getLogger(__name__)

Resolver = Callable[[str, int, float], list[str]]
# A client lives for one step (a request and the SDK's retries of it): small limits are plenty.
LIMITS = httpx2.Limits(max_connections=100, max_keepalive_connections=20)
# A chat completion is kilobytes; a body past this is not one.
MAX_REPLY_BYTES = 16 << 20


class AddressRefused(httpcore2.ConnectError):
    """The endpoint's host resolved to, or its connection reached, an address the policy
    refuses. The message names the host the tenant gave, never the address."""

    def __init__(self, host: str) -> None:
        super().__init__(f"{host} resolves to an address the LLM network policy refuses")
        self.host = host


class PinnedBackend(httpcore2.NetworkBackend):
    """An httpcore network backend that connects only to addresses that pass the policy.

    ``allowed`` is PADDOCK_LLM_ALLOWED_HOSTS; ``None`` skips the address rule (a caller whose
    base_url is trusted). ``resolver`` and ``inner`` are parameters so tests can swap them.
    """

    def __init__(
        self,
        allowed: str | None,
        resolver: Resolver = resolve,
        inner: httpcore2.NetworkBackend | None = None,
    ) -> None:
        self.allowed = allowed
        self.resolver = resolver
        self.inner = inner or httpcore2.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore2.SOCKET_OPTION] | None = None,
    ) -> httpcore2.NetworkStream:
        """Resolve ``host``, check, connect to a checked address, check the peer.

        Raises:
            AddressRefused: an address, or the connected peer, fails the policy.
            httpcore2.ConnectError: the host does not resolve, or no address accepts.
            httpcore2.ConnectTimeout: connecting took longer than ``timeout``.
        """
        budget = RESOLVE_TIMEOUT if timeout is None else min(timeout, RESOLVE_TIMEOUT)
        try:
            addresses = self.resolver(host, port, budget)
        except OSError as exc:
            raise httpcore2.ConnectError(f"{host} does not resolve: {exc}") from None
        if not addresses:
            raise httpcore2.ConnectError(f"{host} does not resolve")
        if not self._permits(host, addresses):
            logger.warning("llm endpoint %s refused: resolves to %s", host, ", ".join(addresses))
            raise AddressRefused(host)
        options = list(socket_options or ())
        failure: httpcore2.ConnectError | httpcore2.ConnectTimeout | None = None
        for address in addresses:  # as socket.create_connection would: the first that accepts
            try:
                # A literal address: the inner backend's getaddrinfo does no DNS lookup.
                stream = self.inner.connect_tcp(address, port, timeout, local_address, options)
            except (httpcore2.ConnectError, httpcore2.ConnectTimeout) as exc:
                failure = exc
                continue
            self._check_peer(host, address, stream)
            return stream
        assert failure is not None
        raise failure

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore2.SOCKET_OPTION] | None = None,
    ) -> httpcore2.NetworkStream:
        raise httpcore2.ConnectError("the LLM client connects over TCP only")

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)

    def _permits(self, host: str, addresses: list[str]) -> bool:
        return self.allowed is None or address_allowed(host, addresses, self.allowed)

    def _check_peer(self, host: str, address: str, stream: httpcore2.NetworkStream) -> None:
        # Belt and braces: the socket must be connected to the address that was checked, and
        # that address must still pass. A stream that cannot say where it went is refused.
        peer = stream.get_extra_info("server_addr")
        where = str(peer[0]) if isinstance(peer, tuple) and peer else None
        if (
            where is None
            or ipaddress.ip_address(where) != ipaddress.ip_address(address)
            or not self._permits(host, [where])
        ):
            stream.close()
            logger.warning("llm endpoint %s refused: connected to %s", host, where)
            raise AddressRefused(host)


class CappedStream(httpx2.SyncByteStream):
    """A reply body that may be at most ``max_bytes`` long and must be read by ``deadline``
    (monotonic). The endpoint is the tenant's to choose: without these a reply of gigabytes
    would be held whole in the worker's memory (the SDKs read the body at once), and one that
    drips a byte per read timeout would hold a worker thread for hours."""

    def __init__(self, inner: httpx2.SyncByteStream, max_bytes: int, deadline: float) -> None:
        self.inner = inner
        self.max_bytes = max_bytes
        self.deadline = deadline

    def __iter__(self) -> Iterator[bytes]:
        seen = 0
        for chunk in self.inner:
            seen += len(chunk)
            if seen > self.max_bytes:
                raise httpx2.RemoteProtocolError(
                    f"the LLM reply is larger than {self.max_bytes >> 20} MiB"
                )
            if time.monotonic() > self.deadline:
                raise httpx2.ReadTimeout("the LLM reply took too long to arrive whole")
            yield chunk

    def close(self) -> None:
        self.inner.close()


class PinnedTransport(httpx2.HTTPTransport):
    """httpx2's own transport, with a connection pool that connects through `PinnedBackend`,
    and reply bodies capped in size and total time (`CappedStream`)."""

    def __init__(
        self,
        backend: PinnedBackend,
        verify: ssl.SSLContext | None = None,
        limits: httpx2.Limits = LIMITS,
        max_reply_bytes: int = MAX_REPLY_BYTES,
        reply_time: float = 600.0,
    ) -> None:
        self.max_reply_bytes = max_reply_bytes
        self.reply_time = reply_time
        # trust_env=False: SSL_CERT_FILE / SSL_CERT_DIR in the worker's environment would change
        # which CAs may vouch for an endpoint.
        ssl_context = verify or httpx2.create_ssl_context(verify=True, trust_env=False)
        super().__init__(verify=ssl_context, trust_env=False, limits=limits)
        # httpx2.HTTPTransport takes no network backend, so its pool (unused, no connections
        # yet) is replaced by one built with the same settings and ours. `_pool` is private:
        # it is what handle_request() and close() use, and tests/unit/test_llm_http.py
        # (test_the_transport_connects_through_the_pinned_backend) fails if an upgrade stops
        # using it, rather than letting requests bypass the policy.
        self._pool = httpcore2.ConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            socket_options=_keepalive_options(),
            network_backend=backend,
        )

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        deadline = time.monotonic() + self.reply_time
        response = super().handle_request(request)
        assert isinstance(response.stream, httpx2.SyncByteStream)
        response.stream = CappedStream(response.stream, self.max_reply_bytes, deadline)
        return response


def llm_http_client(
    timeout: float,
    allowed_hosts: str | None,
    *,
    verify: ssl.SSLContext | None = None,
    resolver: Resolver = resolve,
) -> httpx2.Client:
    """The ``http_client`` for an ``anthropic.Anthropic`` or ``openai.OpenAI``: no redirects,
    connections pinned to addresses that pass the policy with ``allowed_hosts`` (``None``: no
    address rule). Close it (closing the SDK client does) to close its connections."""
    # A reply has the whole of one read timeout per read, and twice the timeout in all.
    transport = PinnedTransport(
        PinnedBackend(allowed_hosts, resolver), verify=verify, reply_time=2 * timeout
    )
    return httpx2.Client(
        transport=transport,
        follow_redirects=False,
        # trust_env=False: HTTP(S)_PROXY / ALL_PROXY in the worker's environment would send
        # conversations and tenants' keys through a proxy (and pin the proxy, not the endpoint).
        # httpx2 ignores them anyway when it is given a transport; this keeps it so.
        trust_env=False,
        timeout=timeout,
    )


def _keepalive_options() -> list[httpcore2.SOCKET_OPTION]:
    # As the SDKs' own clients: a reply can take minutes with the connection silent, and
    # keepalive probes stop a NAT or load balancer from dropping it meanwhile.
    options: list[httpcore2.SOCKET_OPTION] = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    for name, value in (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 60), ("TCP_KEEPCNT", 5)):
        if hasattr(socket, name):
            options.append((socket.IPPROTO_TCP, getattr(socket, name), value))
    return options
