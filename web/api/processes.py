"""E2B process routes: start (optionally waiting), poll, stop, stdin."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from web.api import validation
from web.api.deps import sandbox, services
from web.api.schemas import StartProcessBody, StdinBody, process_json

bp = Blueprint("processes", __name__)


@bp.post("/sessions/<session_id>/processes")
def start_process(session_id: str) -> Response:
    wait = validation.bool_param("wait")
    body = validation.body(StartProcessBody(), "requestBody")
    sb = sandbox(session_id)
    sbx = services().sandboxes
    process_id = sbx.start_process(sb, body["cmd"], body["envVars"], body["rootdir"])
    return jsonify(process_json(process_id, sbx.output(sb, process_id, wait)))


@bp.get("/sessions/<session_id>/processes/<process_id>")
def get_process(session_id: str, process_id: str) -> Response | tuple[str, int]:
    wait = validation.bool_param("wait")
    sb = sandbox(session_id)
    sbx = services().sandboxes
    if not sbx.process_exists(sb, process_id):
        return "", 204
    return jsonify(process_json(process_id, sbx.output(sb, process_id, wait)))


@bp.delete("/sessions/<session_id>/processes/<process_id>")
def stop_process(session_id: str, process_id: str) -> Response | tuple[str, int]:
    results = validation.bool_param("results")
    sb = sandbox(session_id)
    sbx = services().sandboxes
    if not sbx.process_exists(sb, process_id):
        return "", 204
    out = sbx.stop_process(sb, process_id)
    if results:
        return jsonify(process_json(process_id, out))
    return "", 204


@bp.post("/sessions/<session_id>/processes/<process_id>/stdin")
def write_stdin(session_id: str, process_id: str) -> tuple[str, int]:
    body = validation.body(StdinBody(), "requestBody")
    sb = sandbox(session_id)
    sbx = services().sandboxes
    if sbx.process_exists(sb, process_id):
        sbx.write_stdin(sb, process_id, body["stdin"])
    return "", 204
