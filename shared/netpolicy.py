"""Where a tenant may point the agent's LLM client: not at loopback, private or link-local
addresses (that would let a tenant use our workers to reach internal services), unless the
operator allowed the host by name or CIDR in PADDOCK_LLM_ALLOWED_HOSTS.

`address_allowed` is the one rule. `check_base_url` applies it to a URL before anything is sent
(a clear error when a session is made); the LLM client's connections apply it again to the
addresses they actually use (workers/agent/http.py), because a name can resolve differently the
second time.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from urllib.parse import urlsplit

from shared.errors import BadRequest

RESOLVE_TIMEOUT = 5.0
_resolver = ThreadPoolExecutor(max_workers=4, thread_name_prefix="resolve")
# Shared address space (RFC 6598): carrier NAT, but also overlay networks such as Tailscale's,
# which hold internal services; `ipaddress` counts it as neither private nor global.
_SHARED_SPACE = ipaddress.ip_network("100.64.0.0/10")


class BaseUrlRefused(BadRequest):
    code = "base_url_not_allowed"


def resolve(host: str, port: int, timeout: float = RESOLVE_TIMEOUT) -> list[str]:
    """The addresses ``host`` resolves to, in the resolver's order, each once.

    Raises:
        OSError: the name does not resolve, or not within ``timeout`` seconds.
    """
    # In a thread so that a resolver that never answers costs ``timeout``, not the task.
    future = _resolver.submit(socket.getaddrinfo, host, port, 0, socket.SOCK_STREAM)
    try:
        infos = future.result(timeout)
    except FutureTimeout:
        raise OSError(f"resolving {host!r} took longer than {timeout:g} s") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def address_allowed(host: str, addresses: Sequence[str], allowed: str) -> bool:
    """Whether the LLM client may connect to ``host`` at ``addresses``: the operator allowed
    ``host`` by name in ``allowed`` (PADDOCK_LLM_ALLOWED_HOSTS), or every address lies in one
    CIDR of it, or none of the addresses is internal (loopback, private, link-local, shared
    space, reserved, multicast, unspecified). One internal address refuses them all: a client
    may connect to any of them."""
    return _allowed(host, addresses, allowed) or not any(_internal(a) for a in addresses)


def check_base_url(url: str, allowed: str) -> None:
    """Raises BaseUrlRefused for a malformed URL or one whose host resolves to an internal
    address without being allowed."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BaseUrlRefused("llm.base_url must be an http(s) URL with a host")
    host = parts.hostname
    try:
        addresses = resolve(host, parts.port or 443)
    except OSError:
        raise BaseUrlRefused(f"llm.base_url host {host!r} does not resolve") from None
    if not address_allowed(host, addresses, allowed):
        raise BaseUrlRefused(
            f"llm.base_url host {host!r} is a loopback, private or link-local address; an "
            "operator can allow it with PADDOCK_LLM_ALLOWED_HOSTS"
        )


def _ip(addr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    ip = ipaddress.ip_address(addr)
    # ::ffff:127.0.0.1 reaches 127.0.0.1: judge (and allow) it as the IPv4 address it is.
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _allowed(host: str, addresses: Sequence[str], allowed: str) -> bool:
    for entry in (e.strip() for e in allowed.split(",")):
        if not entry:
            continue
        if entry.lower() == host.lower():
            return True
        try:
            net = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            continue
        if addresses and all(_ip(a) in net for a in addresses):
            return True
    return False


def _internal(addr: str) -> bool:
    ip = _ip(addr)
    return (
        ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_reserved
        or ip.is_multicast
        or ip.is_unspecified
        or ip in _SHARED_SPACE
    )
