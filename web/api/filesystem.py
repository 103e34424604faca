"""E2B filesystem routes. The published spec says ``dirs``/``files``, the generated client
``dir``/``file``: both are served by the same functions."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from web.api import validation
from web.api.deps import sandbox, services
from web.api.schemas import WriteFileBody

bp = Blueprint("filesystem", __name__)


@bp.get("/sessions/<session_id>/filesystem/dir")
@bp.get("/sessions/<session_id>/filesystem/dirs")
def list_dir(session_id: str) -> Response:
    path = validation.path_param()
    sb = sandbox(session_id)
    return jsonify({"entries": services().sandboxes.list_dir(sb, path)})


@bp.put("/sessions/<session_id>/filesystem/dir")
@bp.put("/sessions/<session_id>/filesystem/dirs")
def make_dir(session_id: str) -> tuple[str, int]:
    path = validation.path_param()
    services().sandboxes.make_dir(sandbox(session_id), path)
    return "", 204


@bp.delete("/sessions/<session_id>/filesystem")
def remove(session_id: str) -> tuple[str, int]:
    path = validation.path_param()
    services().sandboxes.remove(sandbox(session_id), path)
    return "", 204


@bp.get("/sessions/<session_id>/filesystem/file")
@bp.get("/sessions/<session_id>/filesystem/files")
def read_file(session_id: str) -> Response:
    path = validation.path_param()
    data = services().sandboxes.read_file(sandbox(session_id), path)
    return jsonify({"content": data.decode("utf-8", "replace")})


@bp.put("/sessions/<session_id>/filesystem/file")
@bp.put("/sessions/<session_id>/filesystem/files")
def write_file(session_id: str) -> tuple[str, int]:
    path = validation.path_param()
    body = validation.body(WriteFileBody(), "requestBody")
    services().sandboxes.write_file(sandbox(session_id), path, body["content"].encode("utf-8"))
    return "", 204
