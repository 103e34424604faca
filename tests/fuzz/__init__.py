"""Schema fuzzing (``make fuzz``, ``python -m tests.fuzz``): schemathesis generates requests
from both OpenAPI documents the web tier serves (``/openapi.json``, the E2B API, and
``/v1/openapi.json``) and sends them to a real private stack with auth on. Every answer must
be a documented status code with the documented content type and body schema, and none a
5xx. Not collected by pytest (no ``test_`` modules): the run takes minutes."""
