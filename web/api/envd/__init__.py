"""The envd protocol: what the official E2B SDKs send to the daemon inside a sandbox, served by
the web tier on its own port (the same as every other API), for the sandbox named in the
``E2b-Sandbox-Id`` header. With ``E2B_SANDBOX_URL`` (and ``E2B_API_URL``) pointing at
Paddock, ``sandbox.files``, ``sandbox.commands`` and ``sandbox.pty`` work unchanged.

A request that carries ``E2b-Sandbox-Id`` is envd's, whatever its path (``/health`` too,
which without the header is Paddock's own): ``EnvdDispatch`` sends it here before Flask sees
it. Here:

- ``/filesystem.Filesystem/*`` and ``/process.Process/*``: Connect RPCs (unary, server
  streaming and client streaming, JSON or binary protobuf, over HTTP/1.1) served by
  ``connectrpc``'s WSGI application from the modules generated from ``proto/`` (``gen/``,
  ``make proto``), implemented by filesystem.py and process.py (``sandbox.commands`` and
  ``sandbox.pty``: processes started, followed and reconnected to with their output from
  Redis, input, signals, terminal size; table.py their pids);
- ``/files``, ``/health``: files.py;
- access.py: the two checks every call passes (the sandbox's access token, the sandbox
  looked up in the tenant that created it), what ``user``/``root`` mean, paths;
- errors.py: Paddock's errors as Connect codes and HTTP statuses the SDK maps.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from werkzeug.wrappers import Request

from web.api.envd import files
from web.api.envd.filesystem import FilesystemService
from web.api.envd.gen.filesystem_connect import FilesystemWSGIApplication
from web.api.envd.gen.process_connect import ProcessWSGIApplication
from web.api.envd.process import ProcessService
from web.services import Services

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

# The largest RPC request body read (paths and options only: file bytes go by /files).
_RPC_READ_MAX = 64 << 10
# The process service's: a program's arguments and env vars, a message of input.
_PROCESS_READ_MAX = 1 << 20
_HEADER = "HTTP_E2B_SANDBOX_ID"


class EnvdApp:
    """The envd protocol as one WSGI application."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.filesystem = FilesystemWSGIApplication(
            FilesystemService(services), read_max_bytes=_RPC_READ_MAX
        )
        self.process = ProcessWSGIApplication(
            ProcessService(services), read_max_bytes=_PROCESS_READ_MAX
        )

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path.startswith(self.filesystem.path + "/"):
            return self.filesystem(environ, start_response)
        if path.startswith(self.process.path + "/"):
            return self.process(environ, start_response)
        return files.handle(self.services, Request(environ))(environ, start_response)


class EnvdDispatch:
    """Sends requests that name a sandbox in ``E2b-Sandbox-Id`` to ``envd``, all others to
    ``app`` (the Flask application's WSGI callable)."""

    def __init__(self, app: WSGIApplication, envd: EnvdApp) -> None:
        self.app = app
        self.envd = envd

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if _HEADER in environ:
            return self.envd(environ, start_response)
        return self.app(environ, start_response)
