"""``/console``: the web console, a same-origin page of our own HTML, CSS and JavaScript.

The console is a client of the public APIs and nothing else: it logs in with the v1 email
code, keeps the account token and the API key it works with in the tab's ``sessionStorage``
and sends them as ``Authorization`` headers (never in a URL or a cookie, so no request another
site makes carries them and the browser guards of web/browser.py stay as they are). The API
key is the tab's own, made at login to end with the account token (``expires_in``). Sandboxes'
processes and listings go through the E2B-compatible ``/sessions`` routes, file bytes through
envd's ``/files`` (the sandbox's access token from the control API's connect), the rest
through ``/v1``; the session WebSocket is the only URL with a token, the session JWT that the spec
has browsers pass as ``?token=`` (scoped to one session, never logged), besides the terminal
socket's one-use ticket (web/terminal.py: fetched with the API key just before it connects).

What the server adds here is only files and headers: a strict Content-Security-Policy (no
inline script, same-origin requests only, no framing) on every response.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, abort, redirect, send_from_directory
from werkzeug.wrappers import Response as BaseResponse

from web.console import vendor
from web.console.headers import page_headers

bp = Blueprint("console", __name__, url_prefix="/console")

STATIC_DIR = Path(__file__).parent / "static"
# Served by name from this list only (nothing else in the folder is reachable). The terminal's
# files (terminal.js and xterm.js's, vendor.FILES from web/console/vendor/) are loaded only by
# a sandbox's page, so the first page stays small.
FILES = frozenset({"console.js", "console.css", "terminal.js"})
ASSET_MAX_AGE = 300  # seconds: a deploy's new console reaches open tabs on their next load


@bp.get("")
def root() -> BaseResponse:
    return redirect("/console/", code=308)


@bp.get("/")
def index() -> Response:
    # The page itself is never cached: it names the scripts, which may change with a deploy.
    resp = send_from_directory(STATIC_DIR, "index.html", max_age=0)
    resp.headers["Cache-Control"] = "no-store"
    return page_headers(resp)


@bp.get("/assets/<name>")
def asset(name: str) -> Response:
    if name in FILES:
        folder = STATIC_DIR
    elif name in vendor.FILES:
        folder = vendor.VENDOR_DIR  # 404 until `make images` fetched them
    else:
        abort(404)
    return page_headers(send_from_directory(folder, name, max_age=ASSET_MAX_AGE))
