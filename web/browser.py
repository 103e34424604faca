"""Defences against a web browser driving the API for someone else.

A page the operator happens to visit can send requests to a Paddock on localhost. With keys off
(``PADDOCK_AUTH=off``, ``make up``'s default) nothing else would stop it, and DNS rebinding
would even let it read the answers. So, before any route runs:

- a request body must be JSON (``application/json`` or ``+json``): a browser can send
  ``text/plain``, a form or multipart across origins without asking first, never JSON (415);
- with keys off, the ``Host`` header must name this server (``PADDOCK_ALLOWED_HOSTS``, plus
  localhost, 127.0.0.1 and [::1]): a rebound name gets 421;
- a request whose ``Origin`` is another site's is refused (403) unless that origin is listed
  in ``PADDOCK_CORS_ORIGINS``, which also gets the CORS headers it needs. Requests without
  ``Origin`` (curl, SDKs) and same-origin ones are unaffected. The WebSocket handshake is an
  HTTP request too and gets the same checks.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Flask, Response, request

from shared.errors import PaddockError
from shared.settings import Settings

_LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]", "::1")
_BODY_METHODS = ("POST", "PUT", "PATCH", "DELETE")


class UnsupportedMediaType(PaddockError):
    status = 415
    code = "unsupported_media_type"
    message = "Request bodies must be JSON (Content-Type: application/json)"


class MisdirectedRequest(PaddockError):
    status = 421
    code = "misdirected_request"
    message = "This server does not answer for that Host (see PADDOCK_ALLOWED_HOSTS)"


class ForeignOrigin(PaddockError):
    status = 403
    code = "foreign_origin"
    message = "Requests from another site's pages are refused (see PADDOCK_CORS_ORIGINS)"


def _hostname(host: str) -> str:
    """``Host`` without its port, lower-cased (``[::1]:3000`` → ``[::1]``)."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _csv(raw: str) -> list[str]:
    return [x.strip() for x in raw.split(",") if x.strip()]


def allowed_hosts(settings: Settings) -> set[str]:
    hosts = {*_LOCAL_HOSTS, *(_hostname(h) for h in _csv(settings.allowed_hosts))}
    if settings.public_url:
        hosts.add(_hostname(urlsplit(settings.public_url).netloc))
    return hosts


def is_json(mimetype: str) -> bool:
    return mimetype == "application/json" or (
        mimetype.startswith("application/") and mimetype.endswith("+json")
    )


def register_browser_guards(app: Flask, settings: Settings) -> None:
    hosts = allowed_hosts(settings)
    cors = {o.rstrip("/").lower() for o in _csv(settings.cors_origins)}

    @app.before_request
    def guard() -> Response | None:
        origin = (request.headers.get("Origin") or "").rstrip("/").lower()
        if origin and origin not in cors and origin != request.host_url.rstrip("/").lower():
            raise ForeignOrigin()
        if not settings.auth and _hostname(request.host) not in hosts:
            raise MisdirectedRequest()
        if request.method == "OPTIONS" and origin in cors:
            return _preflight(Response(status=204))
        if request.method in _BODY_METHODS:
            has_body = bool(request.content_length) or "chunked" in (
                request.headers.get("Transfer-Encoding", "").lower()
            )
            if (request.mimetype or has_body) and not is_json(request.mimetype):
                raise UnsupportedMediaType()
        return None

    @app.after_request
    def cors_headers(resp: Response) -> Response:
        origin = (request.headers.get("Origin") or "").rstrip("/").lower()
        if origin and origin in cors:
            resp.headers["Access-Control-Allow-Origin"] = request.headers["Origin"]
            resp.headers["Access-Control-Expose-Headers"] = "X-Request-Id, Retry-After"
            resp.vary.add("Origin")
        return resp


def _preflight(resp: Response) -> Response:
    resp.headers["Access-Control-Allow-Methods"] = "GET, POST, PUT, PATCH, DELETE"
    resp.headers["Access-Control-Allow-Headers"] = (
        "Authorization, X-API-Key, Content-Type, If-Match"
    )
    resp.headers["Access-Control-Max-Age"] = "600"
    return resp
