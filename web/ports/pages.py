"""The answers the port proxy gives itself (not the sandbox's app): short HTML pages that say
what failed and what to do, with the status a client can act on."""

from __future__ import annotations

import html
from collections.abc import Iterable
from http import HTTPStatus
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{status} {title}</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:40em;margin:4em auto;padding:0 1em;
color:#222}}h1{{font-size:1.4em}}code{{background:#eee;padding:0 .2em}}small{{color:#777}}</style>
</head><body><h1>{title}</h1><p>{message}</p><p><small>{status} &middot; Paddock port proxy
</small></p></body></html>
"""


class PortError(Exception):
    """A proxied request that is answered by the proxy itself: ``status``, a title and a
    message (plain text: escaped here), ``retry_after`` seconds for a 429/503."""

    def __init__(
        self, status: int, title: str, message: str, retry_after: int | None = None
    ) -> None:
        super().__init__(f"{status} {title}")
        self.status = status
        self.title = title
        self.message = message
        self.retry_after = retry_after

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        body = _PAGE.format(
            status=self.status, title=html.escape(self.title), message=html.escape(self.message)
        ).encode()
        headers = [
            ("Content-Type", "text/html; charset=utf-8"),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            ("X-Content-Type-Options", "nosniff"),
            ("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'"),
            # Said by the proxy, not the sandbox's app (tests and clients can tell them apart).
            ("X-Paddock-Proxy-Error", self.title.lower().replace(" ", "-")[:64]),
        ]
        if self.retry_after is not None:
            headers.append(("Retry-After", str(self.retry_after)))
        start_response(f"{self.status} {HTTPStatus(self.status).phrase}", headers)
        return [] if environ.get("REQUEST_METHOD") == "HEAD" else [body]


def not_found(sandbox_id: str) -> PortError:
    return PortError(
        404,
        "Sandbox not found",
        f"There is no sandbox {sandbox_id} whose ports Paddock serves: it ended, never "
        "existed, or was not made through the E2B control API (POST /sandboxes).",
    )


def forbidden() -> PortError:
    return PortError(
        403,
        "Traffic access token required",
        "This sandbox was created with allowPublicTraffic: false. Send its trafficAccessToken "
        "(from the create answer) in the e2b-traffic-access-token header.",
    )


def paused(sandbox_id: str) -> PortError:
    return PortError(
        409,
        "Sandbox paused",
        f"The sandbox {sandbox_id} is paused, so nothing in it answers. Resume it "
        "(Sandbox.connect, POST /sandboxes/{id}/connect) and try again.",
    )


def no_network(sandbox_id: str) -> PortError:
    return PortError(
        502,
        "Sandbox has no network",
        f"The sandbox {sandbox_id} was created without a network (allow_internet_access: "
        "false, or network mode none), so none of its ports can be reached from outside. "
        "Create it with the internet (allowOut/denyOut rules still apply) to use its ports.",
    )


def closed_port(sandbox_id: str, port: int) -> PortError:
    return PortError(
        502,
        "Closed port",
        f"Nothing in the sandbox {sandbox_id} listens on port {port}. Start a server on "
        f"0.0.0.0:{port} in the sandbox (listening on 127.0.0.1 only is not reachable), "
        "then reload.",
    )


def bad_gateway(message: str) -> PortError:
    return PortError(502, "Bad gateway", message)


def gateway_timeout(message: str) -> PortError:
    return PortError(504, "Gateway timeout", message)


def bad_request(message: str) -> PortError:
    return PortError(400, "Bad request", message)
