"""envd's plain HTTP routes: ``GET /files`` (download), ``POST /files`` (upload: one
``application/octet-stream`` body, or ``multipart/form-data`` with one or more ``file`` parts
named by their paths) and ``GET /health``.

Each file goes to the sandbox through its host's queue in one piece (as the other APIs'
writes), so an upload is bounded by PADDOCK_MAX_FILE_BYTES as a whole (413 beyond it, read no
further); a gzip body (``Content-Encoding: gzip``) is inflated within the same bound. Errors
answer ``{"message": ...}`` with the status the SDK maps (errors.py)."""

from __future__ import annotations

import zlib
from typing import Any

import orjson
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.wrappers import Request, Response

from shared.errors import FileTooLarge, PaddockError, ValidationFailed
from web.api.envd import access, errors
from web.api.envd.entries import written
from web.services import Services

# Room for multipart's boundaries and part headers around the bytes of the files.
_MULTIPART_SLACK = 64 << 10
_MAX_FILES = 64
_METADATA = "x-metadata-"


def handle(services: Services, request: Request) -> Response:
    """Answer a ``/files`` or ``/health`` request (the caller routed it here)."""
    # Lower-case names, as access.py reads them (the RPC side's headers are so already).
    headers = {k.lower(): v for k, v in request.headers.items()}
    try:
        if request.path == "/health":
            access.authorise(services, headers)
            return Response(status=204)
        if request.path != "/files":
            return _answer(404, f"no such envd route: {request.path[:200]}")
        sandbox = access.authorise(services, headers)
        access.check_user(headers, request.args.get("username"))
        if request.method == "GET":
            path = access.resolve(request.args.get("path", ""))
            data = services.sandboxes.read_file(sandbox, path)
            return Response(data, 200, content_type="application/octet-stream")
        if request.method == "POST":
            answer = [
                written(path) for path in _upload(services, sandbox, request)
            ]  # each written whole, in order
            return Response(_json(answer), 200, content_type="application/json")
        return _answer(405, "method not allowed")
    except PaddockError as exc:
        return _answer(errors.http_status(exc), errors.message(exc))


def _upload(services: Services, sandbox: Any, request: Request) -> list[str]:
    """Write each uploaded file; their paths. Raises FileTooLarge, ValidationFailed, the
    host's errors."""
    if any(k.lower().startswith(_METADATA) for k, _ in request.headers.items()):
        raise ValidationFailed({"metadata": "file metadata is not kept by Paddock"})
    limit = services.settings.max_file_bytes
    query_path = request.args.get("path")
    if request.mimetype == "multipart/form-data":
        request.max_content_length = limit + _MULTIPART_SLACK
        request.max_form_parts = _MAX_FILES * 4
        try:
            parts = request.files.getlist("file")
        except RequestEntityTooLarge:
            raise FileTooLarge(f"the upload is larger than {limit} bytes") from None
        if not parts or len(parts) > _MAX_FILES:
            raise ValidationFailed({"file": f"1 to {_MAX_FILES} files, each a 'file' part"})
        targets = []
        for part in parts:
            name = query_path if len(parts) == 1 and query_path else part.filename
            data = part.stream.read(limit + 1)
            if len(data) > limit:
                raise FileTooLarge(f"file is larger than {limit} bytes: {name}")
            targets.append((access.resolve(name or ""), data))
    else:
        if not query_path:
            raise ValidationFailed({"path": "required for an octet-stream upload"})
        data = _body(request, limit)
        targets = [(access.resolve(query_path), data)]
    for path, data in targets:
        services.sandboxes.write_file(sandbox, path, data)
    return [path for path, _ in targets]


def _body(request: Request, limit: int) -> bytes:
    """The whole body (inflated when gzip), at most ``limit`` bytes. Raises FileTooLarge,
    ValidationFailed (an encoding other than gzip, or a broken gzip stream)."""
    encoding = (request.headers.get("Content-Encoding") or "identity").lower()
    if encoding not in ("identity", "gzip"):
        raise ValidationFailed({"Content-Encoding": "identity or gzip"})
    too_long = request.content_length is not None and request.content_length > limit
    if encoding == "identity" and too_long:
        raise FileTooLarge(f"file is larger than {limit} bytes")
    stream = request.stream
    raw = stream.read(limit + 1)
    if encoding == "identity":
        if len(raw) > limit:
            raise FileTooLarge(f"file is larger than {limit} bytes")
        return raw
    # gzip: compressed bytes up to the limit, inflated to at most the limit.
    if len(raw) > limit:
        raise FileTooLarge(f"file is larger than {limit} bytes")
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        data = inflate.decompress(raw, limit + 1)
    except zlib.error:
        raise ValidationFailed({"body": "not a gzip stream"}) from None
    if len(data) > limit or inflate.unconsumed_tail:
        raise FileTooLarge(f"file is larger than {limit} bytes")
    return data


def _answer(status: int, message: str) -> Response:
    body = _json({"message": message, "code": status})
    return Response(body, status, mimetype="application/json")


def _json(value: Any) -> bytes:
    return orjson.dumps(value)
