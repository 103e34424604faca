"""The E2B-compatible API (``/sessions``, the 2023 E2B REST API; handbook specs/e2b-compat.md).

This is the one place in web/ that says "session" for a sandbox: E2B's word stays on its wire
(paths, ``sessionID``, "Session not found"), and everything below the routes speaks of
sandboxes. One module per resource; ``schemas.py`` holds every request and response shape and
``openapi.py`` generates the document from them.
"""

from __future__ import annotations

from flask import Blueprint

from web.api.e2b import filesystem, health, openapi, processes, sessions

bp = Blueprint("e2b", __name__)
for _child in (health.bp, openapi.bp, sessions.bp, filesystem.bp, processes.bp):
    bp.register_blueprint(_child)
