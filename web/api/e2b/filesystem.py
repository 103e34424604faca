"""E2B filesystem routes. The published spec says ``dirs``/``files``, the generated client
``dir``/``file``: both are served by the same functions."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from web.api import validation
from web.api.e2b.schemas import (
    ListFilesystemDirResponse,
    ReadFilesystemFileResponse,
    WriteFilesystemFileRequest,
)
from web.auth import tenant_from_e2b_key
from web.services import current_services

bp = Blueprint("filesystem", __name__)


@bp.get("/sessions/<session_id>/filesystem/dir")
@bp.get("/sessions/<session_id>/filesystem/dirs")
@tenant_from_e2b_key
def list_dir(tenant_id: str, session_id: str) -> Response:
    path = validation.path_param()
    sandboxes = current_services().sandboxes
    entries = sandboxes.list_dir(sandboxes.get(tenant_id, session_id), path)
    return jsonify(ListFilesystemDirResponse().dump({"entries": entries}))


@bp.put("/sessions/<session_id>/filesystem/dir")
@bp.put("/sessions/<session_id>/filesystem/dirs")
@tenant_from_e2b_key
def make_dir(tenant_id: str, session_id: str) -> tuple[str, int]:
    path = validation.path_param()
    sandboxes = current_services().sandboxes
    sandboxes.make_dir(sandboxes.get(tenant_id, session_id), path)
    return "", 204


@bp.delete("/sessions/<session_id>/filesystem")
@tenant_from_e2b_key
def remove(tenant_id: str, session_id: str) -> tuple[str, int]:
    path = validation.path_param()
    sandboxes = current_services().sandboxes
    sandboxes.remove(sandboxes.get(tenant_id, session_id), path)
    return "", 204


@bp.get("/sessions/<session_id>/filesystem/file")
@bp.get("/sessions/<session_id>/filesystem/files")
@tenant_from_e2b_key
def read_file(tenant_id: str, session_id: str) -> Response:
    path = validation.path_param()
    sandboxes = current_services().sandboxes
    data = sandboxes.read_file(sandboxes.get(tenant_id, session_id), path)
    content = data.decode("utf-8", "replace")
    return jsonify(ReadFilesystemFileResponse().dump({"content": content}))


@bp.put("/sessions/<session_id>/filesystem/file")
@bp.put("/sessions/<session_id>/filesystem/files")
@tenant_from_e2b_key
def write_file(tenant_id: str, session_id: str) -> tuple[str, int]:
    path = validation.path_param()
    body = validation.body(WriteFilesystemFileRequest(), "requestBody")
    sandboxes = current_services().sandboxes
    sandbox = sandboxes.get(tenant_id, session_id)
    sandboxes.write_file(sandbox, path, body["content"].encode("utf-8"))
    return "", 204
