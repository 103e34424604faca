"""Who may act on which sandbox through the envd protocol, as whom, and on which path.

The SDK names the sandbox in ``E2b-Sandbox-Id`` and proves it may act on it with the
sandbox's envd access token in ``X-Access-Token`` (handed out by the control API's create and
connect, web/api/e2b_control/state.py). No API key comes with these calls, so the two checks
are: the token is that sandbox's (compared by digest), and the sandbox is looked up scoped to
the tenant that created it (``Sandboxes.get``: a sandbox being deleted, lost or another
tenant's is not found), which also resets its idle timer like any request naming it.

``user``: the SDK sends ``Authorization: Basic base64("<user>:")``. Every operation runs as
the sandbox user (uid 1000, what the supervisor runs as): "user" is that account, and "root"
is accepted but **mapped to the sandbox user** (no operation gains privileges; where root
would be needed, the sandbox user's permission error is answered). Any other name is refused.
"""

from __future__ import annotations

import base64
import binascii
import posixpath
import re
from collections.abc import Mapping

from shared.errors import SandboxNotFound, SandboxPaused, Unauthorized, ValidationFailed
from shared.store import Sandbox
from web.api.e2b_control.state import control_state
from web.services import Services
from workers.backends.base import SANDBOX_HOME, SANDBOX_USER

# Paddock's ids (shared/ids.py), with room; anything else names no sandbox.
_SANDBOX_ID = re.compile(r"[a-z0-9]{1,32}(-[a-z0-9]{1,32})?")
_MAX_TOKEN = 512
MAX_PATH = 4096
USERS = (SANDBOX_USER, "root")


_BAD_TOKEN = "invalid or missing access token for this sandbox (X-Access-Token)"


def authorise(services: Services, headers: Mapping[str, str]) -> Sandbox:
    """The sandbox the request names, once its access token is checked. Raises
    Unauthorized, SandboxNotFound (gone, being deleted, lost), SandboxPaused."""
    sandbox_id = headers.get("e2b-sandbox-id", "")
    token = headers.get("x-access-token", "")
    if not _SANDBOX_ID.fullmatch(sandbox_id) or not 0 < len(token) <= _MAX_TOKEN:
        raise Unauthorized(_BAD_TOKEN)
    state = control_state(services)
    if not state.check_access_token(sandbox_id, token):
        raise Unauthorized(_BAD_TOKEN)
    tenant_id = services.sandboxes.owner(sandbox_id)
    if tenant_id is None:
        raise SandboxNotFound(f"The sandbox {sandbox_id} was not found")
    try:
        sandbox = services.sandboxes.get(tenant_id, sandbox_id)
    except SandboxNotFound:
        raise SandboxNotFound(f"The sandbox {sandbox_id} was not found") from None
    if state.record(sandbox).paused:
        raise SandboxPaused(f"The sandbox {sandbox_id} is paused: connect to resume it")
    return sandbox


def check_user(headers: Mapping[str, str], query_user: str | None = None) -> str:
    """The user the request asks for ("user" when none): from ``username`` in the query
    (/files) or the Basic ``Authorization`` header (RPCs). Raises ValidationFailed for a user
    other than "user" or "root" (see the module docstring for what root means)."""
    user = query_user
    auth = headers.get("authorization", "")
    if user is None and auth[:6].lower() == "basic ":
        try:
            user = base64.b64decode(auth[6:].strip(), validate=True).decode().partition(":")[0]
        except (binascii.Error, UnicodeDecodeError):
            raise ValidationFailed({"authorization": "not Basic base64(user:)"}) from None
    user = user or SANDBOX_USER
    if user not in USERS:
        raise ValidationFailed(
            {"user": f"unknown user {user[:64]!r}: Paddock sandboxes have 'user' (root maps to it)"}
        )
    return user


def resolve(path: str, field: str = "path") -> str:
    """``path`` as an absolute, normalised path inside the sandbox: relative paths and ``~``
    are the sandbox user's home, as envd does. Only the sandbox's supervisor ever opens it.
    Raises ValidationFailed (too long, a NUL byte)."""
    if len(path) > MAX_PATH or "\x00" in path:
        raise ValidationFailed({field: f"must be at most {MAX_PATH} characters, without NUL"})
    if path == "~" or path.startswith("~/"):
        path = SANDBOX_HOME + path[1:]
    full = posixpath.normpath(posixpath.join(SANDBOX_HOME, path))
    # normpath keeps a leading "//" (POSIX allows it a meaning): one slash is the same path.
    return "/" + full.lstrip("/")
