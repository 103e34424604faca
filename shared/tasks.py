"""Celery task names and queue names. The web side sends tasks by these names only."""

from __future__ import annotations

CONTROL_QUEUE = "control"

SANDBOX_CREATE = "paddock.sandbox.create"
SANDBOX_DESTROY = "paddock.sandbox.destroy"
SANDBOX_PORTS = "paddock.sandbox.ports"
FS_LIST = "paddock.fs.list"
FS_MKDIR = "paddock.fs.mkdir"
FS_REMOVE = "paddock.fs.remove"
FS_READ = "paddock.fs.read"
FS_WRITE = "paddock.fs.write"
# The envd protocol's (web/api/envd): whole entries, moves.
FS_STAT = "paddock.fs.stat"
FS_MOVE = "paddock.fs.move"
FS_ENTRIES = "paddock.fs.entries"
FS_WATCH = "paddock.fs.watch"
PROCESS_START = "paddock.process.start"
PROCESS_STDIN = "paddock.process.stdin"
PROCESS_KILL = "paddock.process.kill"
# The envd protocol's (web/api/envd/process.py).
PROCESS_SIGNAL = "paddock.process.signal"
PROCESS_RESIZE = "paddock.process.resize"
PROCESS_CLOSE_STDIN = "paddock.process.close_stdin"
SANDBOX_PAUSE = "paddock.sandbox.pause"
SANDBOX_RESUME = "paddock.sandbox.resume"
SANDBOX_USAGE = "paddock.sandbox.usage"
AGENT_DRAIN = "paddock.agent.drain"
REAP = "paddock.control.reap"
SEND_LOGIN_CODE = "paddock.control.send_login_code"


def host_queue(host_id: str) -> str:
    return f"host.{host_id}"
