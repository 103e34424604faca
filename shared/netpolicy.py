"""Where a tenant may point the agent's LLM client: not at loopback, private or link-local
addresses (that would let a tenant use our workers to reach internal services), unless the
operator allowed the host by name or CIDR in PADDOCK_LLM_ALLOWED_HOSTS."""

from __future__ import annotations

import ipaddress
import socket
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from urllib.parse import urlsplit

from shared.errors import BadRequest

RESOLVE_TIMEOUT = 5.0
_resolver = ThreadPoolExecutor(max_workers=4, thread_name_prefix="resolve")


class BaseUrlRefused(BadRequest):
    code = "base_url_not_allowed"


def _allowed(host: str, addresses: list[str], allowed: str) -> bool:
    for entry in (e.strip() for e in allowed.split(",")):
        if not entry:
            continue
        if entry.lower() == host.lower():
            return True
        try:
            net = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            continue
        if addresses and all(ipaddress.ip_address(a) in net for a in addresses):
            return True
    return False


def _internal(addr: str) -> bool:
    ip = ipaddress.ip_address(addr)
    return (
        ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_reserved
        or ip.is_multicast
        or ip.is_unspecified
    )


def check_base_url(url: str, allowed: str) -> None:
    """Raises BaseUrlRefused for a malformed URL or one whose host resolves to an internal
    address without being allowed."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BaseUrlRefused("llm.base_url must be an http(s) URL with a host")
    host = parts.hostname
    try:
        infos = _resolver.submit(socket.getaddrinfo, host, parts.port or 443).result(
            RESOLVE_TIMEOUT
        )
        addresses = sorted({str(i[4][0]) for i in infos})
    except (OSError, FutureTimeout):
        raise BaseUrlRefused(f"llm.base_url host {host!r} does not resolve") from None
    if _allowed(host, addresses, allowed):
        return
    if any(_internal(a) for a in addresses):
        raise BaseUrlRefused(
            f"llm.base_url host {host!r} is a loopback, private or link-local address; an "
            "operator can allow it with PADDOCK_LLM_ALLOWED_HOSTS"
        )
