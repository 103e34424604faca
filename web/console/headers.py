"""Response headers for the pages a browser renders (``/console`` and ``/docs``).

Both pages show text the API returns, some of it tenant-controlled (sandbox metadata, bundle
and key names): the Content-Security-Policy is the second line behind escaping everything.
Only this server's own scripts run (no inline script, no eval), requests go to this origin
only (``connect-src 'self'``; the session WebSocket is same-origin ``ws(s)://``), and no other
site may frame the page (clickjacking a "revoke" button).
"""

from __future__ import annotations

from flask import Response

# 'self' in connect-src covers ws:// and wss:// to this origin in CSP Level 3 browsers
# (Chromium since 2023); older ones would need the ws URL spelled out, which depends on the
# Host the browser used.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "font-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)


def page_headers(resp: Response, csp: str = CSP) -> Response:
    """``resp`` with the headers every console and docs response carries."""
    resp.headers["Content-Security-Policy"] = csp
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Referrer-Policy"] = "no-referrer"
    resp.headers["X-Frame-Options"] = "DENY"
    resp.headers["Cross-Origin-Opener-Policy"] = "same-origin"
    return resp
