"""Sandbox ports: the web tier proxies HTTP and WebSocket requests whose ``Host`` is
``{port}-{sandbox id}.{PADDOCK_PREVIEW_DOMAIN}`` (the E2B SDK's ``get_host(port)``) to that
port in that sandbox, on whichever host runs it.

``PortsDispatch`` wraps the whole application (outside EnvdDispatch): a request naming a
sandbox port is the sandbox's, whatever its path or headers; any other goes on to Paddock.
Here:

- access.py: the sandbox the Host names, and whether the request may reach it (public, or
  its traffic token); 404/403/409/502 pages otherwise (pages.py);
- upstream.py: the way in, through the relay of the sandbox's host (workers/host/relay.py,
  a signed ticket: shared/relay.py), then the HTTP exchange streamed both ways, or the
  Upgrade (WebSocket) spliced raw; wire.py: the heads, without Paddock's credentials.

Each open connection holds one of its tenant's ``PADDOCK_TENANT_MAX_PROXIED`` slots (429
past it), whoever the client is (a public sandbox's ports cost its owner's quota).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, NoReturn

import redis

from shared.errors import QuotaExceeded
from shared.relay import relay_keys
from web.ports import access, pages, upstream
from web.services import Services

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

logger = logging.getLogger(__name__)


class PortsDispatch:
    """Sends requests whose Host names a sandbox port to that port, all others to ``app``."""

    def __init__(self, app: WSGIApplication, services: Services) -> None:
        self.app = app
        self.services = services
        self.suffix = "." + services.settings.preview_domain
        self.key = relay_keys(services.settings.secret_key)[0]

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        host = access.request_host(environ, self.services.settings.proxy_hops)
        try:
            found = access.target(host, self.suffix)
        except pages.PortError as exc:
            return exc(environ, start_response)
        if found is None:
            return self.app(environ, start_response)
        try:
            return self._proxy(environ, start_response, found)
        except pages.PortError as exc:
            if exc.status >= 500:
                logger.info("sandbox %s port %d: %s", found.sandbox_id, found.port, exc)
            return exc(environ, start_response)
        except QuotaExceeded as exc:
            return pages.PortError(429, "Too many connections", exc.message, retry_after=1)(
                environ, start_response
            )
        except redis.RedisError:
            logger.exception(
                "sandbox %s port %d: the state store failed", found.sandbox_id, found.port
            )
            return pages.PortError(
                503,
                "Unavailable",
                "Paddock's state store did not answer; retry in a moment",
                retry_after=2,
            )(environ, start_response)

    def _proxy(
        self, environ: WSGIEnvironment, start_response: StartResponse, found: access.Target
    ) -> Iterable[bytes]:
        sandbox = access.authorise(self.services, environ, found.sandbox_id)
        # The app's X-Forwarded-Proto (web/ports/wire.py), as ProxyFix would set it.
        environ["wsgi.url_scheme"] = access.request_scheme(
            environ, self.services.settings.proxy_hops
        )
        is_upgrade = _is_upgrade(environ)
        if is_upgrade and "gunicorn.socket" not in environ:
            raise pages.PortError(
                501,
                "Not implemented",
                "WebSocket and Upgrade requests are proxied under gunicorn only (make up, compose)",
            )
        release = self.services.sandboxes.proxying(sandbox)
        try:
            up = upstream.open_relay(self.services, self.key, sandbox, found.port)
        except BaseException:
            release()
            raise
        activity = upstream.Activity(self.services, sandbox.sandbox_id)
        if is_upgrade:
            try:
                upstream.upgrade(environ, up, activity)
            finally:
                up.close()
                release()
            _drop_connection()
        try:
            return upstream.forward(environ, start_response, up, activity, release)
        except BaseException:
            up.close()
            release()
            raise


def _is_upgrade(environ: WSGIEnvironment) -> bool:
    connection = str(environ.get("HTTP_CONNECTION", "")).lower()
    return bool(environ.get("HTTP_UPGRADE")) and "upgrade" in {
        t.strip() for t in connection.split(",")
    }


def _drop_connection() -> NoReturn:
    """The client's socket was handed to the sandbox's app and is done: gunicorn's async
    workers close a connection whose application raises StopIteration (as flask-sock does)."""
    raise StopIteration()
