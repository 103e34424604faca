"""The v1 API (``/v1``: accounts, API keys, secret bundles, sandboxes, templates, usage, agent
sessions; handbook specs/v1-api.md).

``bp`` is the one blueprint that carries the ``/v1`` prefix; each resource module adds its own
routes under it. ``schemas.py`` holds every request and response shape (routes answer through
their ``dump``) and ``openapi.py`` generates the document from them. The session WebSocket
(``/v1/sessions/{id}/ws``) is web/ws.py.
"""

from __future__ import annotations

from flask import Blueprint

from web.api.v1 import api_keys, auth, openapi, sandboxes, secrets, sessions, templates, usage

bp = Blueprint("v1", __name__, url_prefix="/v1")
for _child in (
    auth.bp,
    api_keys.bp,
    secrets.bp,
    sandboxes.bp,
    templates.bp,
    usage.bp,
    sessions.bp,
    openapi.bp,
):
    bp.register_blueprint(_child)
