"""HTTP/1.1 heads between the client and the sandbox's app: the request as the app receives it
(hop-by-hop headers and Paddock's own credentials removed) and the app's response headers as
the client receives them (bounded, and only what a WSGI server may send)."""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable
from http import HTTPStatus
from typing import TYPE_CHECKING

from web.ports import pages

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

# The most response header bytes (and headers) taken from a sandbox's app: the request side
# is capped by gunicorn (limit_request_line, limit_request_fields, limit_request_field_size).
MAX_HEAD_BYTES = 64 << 10
MAX_HEADERS = 100

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "expect",  # gunicorn answered any 100-continue itself
    }
)
# Paddock's credentials and routing headers: they never reach a sandbox. Authorization does
# (the app may use it), unless it carries a Paddock API key.
PADDOCK_HEADERS = frozenset(
    {
        "x-api-key",
        "x-access-token",
        "e2b-traffic-access-token",
        "e2b-sandbox-id",
        "e2b-sandbox-port",
    }
)
_API_KEY_MARK = "pdk_live_"
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_VALUE = re.compile(r"[ \t\x21-\x7e\x80-\xff]*")
_TARGET = re.compile(r"/[\x21-\x7e]*")
_OURS = frozenset({"x-forwarded-for", "x-forwarded-proto", "content-length"})


def _connection_tokens(value: str) -> set[str]:
    return {t.strip().lower() for t in value.split(",") if t.strip()}


def request_head(environ: WSGIEnvironment, upgrade: bool) -> tuple[bytes, str | None]:
    """The request line and headers to send the app, and how its body is framed (``length``:
    Content-Length, ``chunked``, or None: no body). ``upgrade`` keeps Connection/Upgrade.
    X-Forwarded-For gets the client's address appended; X-Forwarded-Proto is ours alone
    (``wsgi.url_scheme``: PortsDispatch sets it from trusted proxies), never the client's."""
    method = str(environ.get("REQUEST_METHOD", "GET"))
    raw = str(environ.get("RAW_URI", ""))
    if not _TARGET.fullmatch(raw):
        raw = urllib.parse.quote(str(environ.get("PATH_INFO", "")) or "/", safe="/;=,:@!$&'()*+~")
        if environ.get("QUERY_STRING"):
            raw += "?" + str(environ["QUERY_STRING"])
    named = _connection_tokens(str(environ.get("HTTP_CONNECTION", "")))
    headers: list[tuple[str, str]] = []
    forwarded_for = ""
    for key, value in environ.items():
        if not key.startswith("HTTP_") or not isinstance(value, str):
            continue
        name = key[5:].replace("_", "-").lower()
        # Ours replace the client's X-Forwarded-Proto (an app may trust it) and framing.
        if name in PADDOCK_HEADERS or name in _OURS:
            if name == "x-forwarded-for":
                forwarded_for = value
            continue
        if name == "authorization" and _API_KEY_MARK in value:
            continue
        if upgrade and name in ("connection", "upgrade"):
            headers.append((name, value))
            continue
        if name in HOP_BY_HOP or name in named:
            continue
        headers.append((name, value))
    if environ.get("CONTENT_TYPE"):
        headers.append(("content-type", str(environ["CONTENT_TYPE"])))
    framing: str | None = None
    if environ.get("CONTENT_LENGTH"):
        headers.append(("content-length", str(int(environ["CONTENT_LENGTH"]))))
        framing = "length"
    elif "chunked" in str(environ.get("HTTP_TRANSFER_ENCODING", "")).lower():
        headers.append(("transfer-encoding", "chunked"))
        framing = "chunked"
    client = str(environ.get("REMOTE_ADDR", ""))
    if client:
        chain = f"{forwarded_for}, {client}" if forwarded_for else client
        headers.append(("x-forwarded-for", chain))
    headers.append(("x-forwarded-proto", str(environ.get("wsgi.url_scheme", "http"))))
    if not upgrade:
        headers.append(("connection", "close"))  # one request per relay connection
    lines = [f"{method} {raw} HTTP/1.1"] + [f"{n}: {v}" for n, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"), framing


def response_headers(raw: Iterable[tuple[str, str]], chunked: bool) -> list[tuple[str, str]]:
    """The app's headers a client gets: hop-by-hop ones (and those its Connection names)
    dropped, and any a WSGI server would refuse. The body's length is said as it is read
    (http.client): none when the answer is ``chunked`` (its Content-Length would lie), else
    the one Content-Length. Raises PortError (502) past MAX_HEADERS or MAX_HEAD_BYTES, or for
    Content-Length values that disagree (a client and the proxy would frame it apart)."""
    items = list(raw)
    if len(items) > MAX_HEADERS or sum(len(n) + len(v) + 4 for n, v in items) > MAX_HEAD_BYTES:
        raise pages.bad_gateway(
            f"the app's answer has more than {MAX_HEADERS} headers or {MAX_HEAD_BYTES} bytes "
            "of them"
        )
    named = {"server", "date"}  # gunicorn sends its own
    lengths = set()
    for n, v in items:
        if n.lower() == "connection":
            named |= _connection_tokens(v)
        elif n.lower() == "content-length":
            lengths.add(v.strip(" \t"))
    if len(lengths) > 1 or not all(v.isascii() and v.isdigit() for v in lengths):
        raise pages.bad_gateway("the app's answer has a bad Content-Length, or several")
    out: list[tuple[str, str]] = []
    for n, v in items:
        lname = n.lower()
        if lname == "content-length":
            if chunked or lname in named:
                continue
            named.add(lname)  # the one value, once
        elif lname in HOP_BY_HOP or lname in named:
            continue
        if _TOKEN.fullmatch(n) and _VALUE.fullmatch(v):
            out.append((n, v.strip(" \t")))
    return out


def status_line(status: int, reason: str) -> str:
    """``"200 OK"`` for WSGI. Raises PortError (502) for a status outside 100..599."""
    if not 100 <= status <= 599:
        raise pages.bad_gateway(f"the app answered status {status}, which HTTP does not have")
    if not reason or not _VALUE.fullmatch(reason) or len(reason) > 256:
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = "Unknown"
    return f"{status} {reason.strip()}" if reason.strip() else f"{status} Unknown"
