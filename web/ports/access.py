"""Which sandbox port a request names (its ``Host``), and whether it may reach it.

``Host: {port}-{sandbox id}.{PADDOCK_PREVIEW_DOMAIN}`` is what the E2B SDK's ``get_host(port)``
gives. The sandbox must be one the E2B control API knows (created by ``POST /sandboxes``, or
connected to by it): its record says whether its ports are public (``allowPublicTraffic``,
true when absent, as in E2B) or need its traffic token in ``e2b-traffic-access-token``
(compared in constant time). Missing and wrong tokens are both 403, as E2B answers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shared.crypto import same
from shared.errors import SandboxNotFound
from shared.store import Sandbox
from web.api.e2b_control.state import control_state
from web.ports import pages
from web.services import Services

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

# "8000-sojem4y9-fce131d5": a port, then a Paddock sandbox id (shared/ids.py, with room).
_LABEL = re.compile(r"([0-9]{1,6})-([a-z0-9]{1,32}(?:-[a-z0-9]{1,32})?)")
_HOST_PORT = re.compile(r":[0-9]{1,5}")
_MAX_TOKEN = 512
TOKEN_HEADER = "HTTP_E2B_TRAFFIC_ACCESS_TOKEN"


@dataclass(frozen=True)
class Target:
    port: int
    sandbox_id: str


def _trusted(environ: WSGIEnvironment, header: str, proxy_hops: int) -> str:
    """What the outermost of ``PADDOCK_PROXY_HOPS`` trusted proxies put in ``header`` (an
    X-Forwarded-* list, read as ProxyFix reads it); "" when none."""
    if not proxy_hops:
        return ""
    forwarded = [h.strip() for h in str(environ.get(header, "")).split(",")]
    return forwarded[-proxy_hops] if len(forwarded) >= proxy_hops else ""


def request_host(environ: WSGIEnvironment, proxy_hops: int) -> str:
    """The host the client asked for, lower case, without its port (behind
    ``PADDOCK_PROXY_HOPS`` trusted proxies: their ``X-Forwarded-Host``)."""
    host = _trusted(environ, "HTTP_X_FORWARDED_HOST", proxy_hops)
    host = (host or str(environ.get("HTTP_HOST", ""))).strip().lower()
    m = _HOST_PORT.search(host)
    if m and m.end() == len(host):
        host = host[: m.start()]
    return host.rstrip(".")


def request_scheme(environ: WSGIEnvironment, proxy_hops: int) -> str:
    """http or https, as the client spoke to Paddock (behind ``PADDOCK_PROXY_HOPS`` trusted
    proxies: their ``X-Forwarded-Proto``)."""
    scheme = _trusted(environ, "HTTP_X_FORWARDED_PROTO", proxy_hops).lower()
    return scheme if scheme in ("http", "https") else str(environ.get("wsgi.url_scheme", "http"))


def target(host: str, suffix: str) -> Target | None:
    """The port and sandbox ``host`` names under ``suffix`` (".<preview domain>"), or None
    when it names none (the request is Paddock's own). Raises PortError (400) for a port
    outside 1..65535."""
    if not host.endswith(suffix):
        return None
    m = _LABEL.fullmatch(host[: -len(suffix)])
    if not m:
        return None
    port = int(m[1])
    if not 1 <= port <= 65535:
        raise pages.bad_request(f"port {port} is not a TCP port (1..65535)")
    return Target(port, m[2])


def authorise(services: Services, environ: WSGIEnvironment, sandbox_id: str) -> Sandbox:
    """The running sandbox a request may reach, its idle timer reset. Raises PortError: 404
    (none, another face's or being removed), 403 (its traffic token missing or wrong), 409
    (paused), 502 (no network)."""
    store = services.sandboxes.store
    tenant_id = services.sandboxes.owner(sandbox_id)
    if tenant_id is None:
        raise pages.not_found(sandbox_id)
    try:
        sandbox = store.get_sandbox(tenant_id, sandbox_id)
    except SandboxNotFound:
        raise pages.not_found(sandbox_id) from None
    state = control_state(services)
    record = state.record(sandbox)
    if not record.has_token:
        raise pages.not_found(sandbox_id)
    if not record.public:
        given = str(environ.get(TOKEN_HEADER, "")).strip()
        expected = state.tokens(sandbox).traffic if 0 < len(given) <= _MAX_TOKEN else None
        if expected is None or not same(given, expected):
            raise pages.forbidden()
    if record.paused:
        raise pages.paused(sandbox_id)
    if not sandbox.network.internet:
        raise pages.no_network(sandbox_id)
    store.touch(sandbox_id)  # only now: refused requests keep no sandbox alive
    return sandbox
