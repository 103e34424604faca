"""E2B process routes: start (optionally waiting), poll, stop, stdin.

Output answers are streamed as they are read from Redis (`schemas.process_json`, the
``Process`` schema's shape), so what a
web worker holds never depends on how much a process printed. A waiting request holds one of
its tenant's wait slots and no thread (the web server is evented).
"""

from __future__ import annotations

import _socket
import os
import socket

from flask import Blueprint, Response, request

from shared.output import Snapshot
from shared.store import Sandbox
from web.api import validation
from web.api.e2b.schemas import StartProcessParams, WriteProcessStdinRequest, process_json
from web.auth import tenant_from_e2b_key
from web.sandboxes import Sandboxes
from web.services import current_services

bp = Blueprint("processes", __name__)

# Bytes of output up to which an answer read whole in one go is written without a stream slot:
# even as one-character lines its JSON (~60 bytes a line) fits a socket's send buffer.
SMALL_ANSWER = 1024


@bp.post("/sessions/<session_id>/processes")
@tenant_from_e2b_key
def start_process(tenant_id: str, session_id: str) -> Response:
    wait = validation.bool_param("wait")
    body = validation.body(StartProcessParams(), "requestBody")
    sandboxes = current_services().sandboxes
    sandbox = sandboxes.get(tenant_id, session_id)
    if not wait:
        process_id = sandboxes.start_process(sandbox, body["cmd"], body["envVars"], body["rootdir"])
        return _answer(sandboxes, sandbox, process_id)
    with sandboxes.waiting(sandbox) as held:  # refused before anything starts
        process_id = sandboxes.start_process(sandbox, body["cmd"], body["envVars"], body["rootdir"])
        sandboxes.wait_done(sandbox, process_id, _client_connected)
        snap = sandboxes.snapshot(sandbox, process_id, held)  # the slot goes back with it
    return _answer(sandboxes, sandbox, process_id, snap)


@bp.get("/sessions/<session_id>/processes/<process_id>")
@tenant_from_e2b_key
def get_process(tenant_id: str, session_id: str, process_id: str) -> Response | tuple[str, int]:
    wait = validation.bool_param("wait")
    sandboxes = current_services().sandboxes
    sandbox = sandboxes.get(tenant_id, session_id)
    if not sandboxes.process_exists(sandbox, process_id):
        return "", 204
    if not wait:
        return _answer(sandboxes, sandbox, process_id)
    with sandboxes.waiting(sandbox) as held:
        sandboxes.wait_done(sandbox, process_id, _client_connected)
        snap = sandboxes.snapshot(sandbox, process_id, held)  # the slot goes back with it
    return _answer(sandboxes, sandbox, process_id, snap)


@bp.delete("/sessions/<session_id>/processes/<process_id>")
@tenant_from_e2b_key
def stop_process(tenant_id: str, session_id: str, process_id: str) -> Response | tuple[str, int]:
    results = validation.bool_param("results")
    sandboxes = current_services().sandboxes
    sandbox = sandboxes.get(tenant_id, session_id)
    if not sandboxes.process_exists(sandbox, process_id):
        return "", 204
    sandboxes.stop_process(sandbox, process_id)
    if not results:
        sandboxes.forget_process(sandbox, process_id)  # nothing of the output is read
        return "", 204
    resp = _answer(sandboxes, sandbox, process_id)
    # Forgotten once the answer is written (or the client went away), not before.
    resp.call_on_close(lambda: sandboxes.forget_process(sandbox, process_id))
    return resp


@bp.post("/sessions/<session_id>/processes/<process_id>/stdin")
@tenant_from_e2b_key
def write_stdin(tenant_id: str, session_id: str, process_id: str) -> tuple[str, int]:
    body = validation.body(WriteProcessStdinRequest(), "requestBody")
    sandboxes = current_services().sandboxes
    sandbox = sandboxes.get(tenant_id, session_id)
    if sandboxes.process_exists(sandbox, process_id):
        sandboxes.write_stdin(sandbox, process_id, body["stdin"])
    return "", 204


def _client_connected() -> bool:
    """False once the client has closed its connection (nothing left to read, end of file).
    Unknown servers (no socket in the environ) count as connected.

    A peek that never blocks, on a C-level socket: select() fails on descriptors past 1023,
    which an evented worker holding thousands of clients hands out, and gevent's own recv
    would wait for data instead of answering at once."""
    conn = request.environ.get("gunicorn.socket")
    if conn is None:
        return True
    try:
        # A C-level socket over a duplicate of the descriptor (the server's object may be
        # gevent's wrapper); closing the duplicate leaves the connection alone.
        raw = _socket.socket(fileno=os.dup(conn.fileno()))
        try:
            return raw.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
        finally:
            raw.close()
    except BlockingIOError:
        return True  # nothing to read: still there, waiting for its answer
    except (OSError, ValueError):
        return False


def _answer(
    sandboxes: Sandboxes, sandbox: Sandbox, process_id: str, snap: Snapshot | None = None
) -> Response:
    """The process's output (as ``snap`` saw it, else as it is now), streamed, holding one
    of the tenant's stream slots until the response is closed unless it is small. Raises
    QuotaExceeded (the tenant's answers in flight)."""
    if snap is None:
        snap = sandboxes.snapshot(sandbox, process_id)
    entries = sandboxes.output(sandbox, process_id, snap)
    small = snap.complete and snap.size <= SMALL_ANSWER
    chunks, release = sandboxes.streaming(sandbox, process_json(process_id, entries), small)
    resp = Response(chunks, mimetype="application/json")
    resp.call_on_close(release)
    return resp
