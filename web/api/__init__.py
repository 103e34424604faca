"""The HTTP API, one package per face:

- ``e2b/``: the E2B-compatible API (``/sessions``, ``/health``, ``/openapi.json``);
- ``v1/``: Paddock's own API under ``/v1`` (its WebSocket is web/ws.py);
- ``docs.py``: the ``/docs`` page;
- ``validation.py``: request parsing both faces share (bodies through marshmallow, query
  parameters, strict JSON), failing as ``ValidationFailed``.

A route is thin: it names its credential with a decorator (web/auth.py), validates with its
face's schemas, calls a service (web/services.py) and answers through a response schema's
``dump``.
"""
