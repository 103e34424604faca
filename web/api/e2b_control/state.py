"""What the E2B control API keeps of a sandbox besides Paddock's own record: its metadata, its
env vars and access tokens (sealed), whether it is paused, and the timeout last asked for; and
how its timers move (the E2B timeout is Paddock's expiry index, within the maximum lifetime;
a paused sandbox leaves the idle index).

One hash per sandbox (``keys.e2b_sandbox``), expiring by itself a while after the sandbox's
maximum lifetime: it is read only after the tenant-scoped lookup of the sandbox
(``Sandboxes.get``), so one that outlives its sandbox is never seen. A sandbox made by another
face of Paddock (``/sessions``, ``/v1``) has none until the E2B API first connects to it.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import dataclass, field

import redis

from shared import keys
from shared.crypto import SecretBox, same
from shared.errors import SandboxNotFound, SandboxStateConflict
from shared.redisio import read_hash
from shared.settings import Settings
from shared.store import Sandbox
from web.services import Services

# Seconds the record outlives the sandbox's maximum lifetime (then Redis drops it).
_RECORD_GRACE = 3600

# Lua: move a running sandbox's timers in one step, refusing one that is being deleted, lost or
# gone (0) or that lives as long as its agent session (2).
# KEYS: the sandbox, expiry index, idle index, the E2B record.
# ARGV: sandbox id, new end, allow shorter ('1'/'0'), op ('end'|'pause'|'resume'), now,
#       timeout asked ('' to keep), the record's expiry (unix ms).
# op 'end' on a paused sandbox only remembers the timeout: its end is held at the maximum
# lifetime until it is resumed.
_TIMERS = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
if redis.call('HEXISTS', KEYS[1], 'session') == 1 then return 2 end
if ARGV[6] ~= '' then redis.call('HSET', KEYS[4], 'timeout', ARGV[6]) end
if ARGV[4] == 'pause' then
  redis.call('HSET', KEYS[4], 'paused', '1', 'paused_at', ARGV[5])
  redis.call('ZREM', KEYS[3], ARGV[1])
elseif ARGV[4] == 'resume' then
  redis.call('HSET', KEYS[4], 'paused', '0')
  redis.call('ZADD', KEYS[3], ARGV[5], ARGV[1])
elseif redis.call('HGET', KEYS[4], 'paused') == '1' then
  redis.call('PEXPIREAT', KEYS[4], ARGV[7])
  return 1
end
redis.call('PEXPIREAT', KEYS[4], ARGV[7])
local cur = tonumber(redis.call('ZSCORE', KEYS[2], ARGV[1]) or '0')
local new = tonumber(ARGV[2])
if ARGV[3] == '1' or new > cur then redis.call('ZADD', KEYS[2], new, ARGV[1]) end
return 1
"""


@dataclass(frozen=True)
class Record:
    """The E2B side of one sandbox (an empty record: a sandbox made by another API)."""

    metadata: dict[str, str] = field(default_factory=dict)
    paused: bool = False
    timeout: int | None = None
    public: bool = True
    internet: bool | None = None
    has_token: bool = False


@dataclass(frozen=True)
class Tokens:
    access: str
    traffic: str | None


class ControlState:
    """The E2B control API's state of sandboxes. Takes its settings, Redis and SecretBox."""

    def __init__(self, settings: Settings, r: redis.Redis, box: SecretBox) -> None:
        self.settings = settings
        self.r = r
        self.box = box
        self._timers = r.register_script(_TIMERS)

    # -- the record ----------------------------------------------------------------------------
    def adopt(
        self,
        sandbox: Sandbox,
        *,
        metadata: dict[str, str],
        env: dict[str, str],
        timeout: int,
        public: bool,
        internet: bool | None,
    ) -> Tokens:
        """Write a new sandbox's record (a fresh access token, and a traffic token when its
        ports are not public) and set its end ``timeout`` seconds from now. Raises
        SandboxNotFound when the sandbox ended meanwhile."""
        tokens = Tokens(_token(), None if public else _token())
        mapping: dict[str | bytes, bytes | float | int | str] = {
            "metadata": json.dumps(metadata, separators=(",", ":")),
            "env": self.box.seal_text(json.dumps(env)),
            "token": self.box.seal_text(tokens.access),
            "token_sha256": _digest(tokens.access),
            "traffic": self.box.seal_text(tokens.traffic) if tokens.traffic else "",
            "public": "1" if public else "0",
            "internet": "" if internet is None else ("1" if internet else "0"),
            "timeout": str(timeout),
            "paused": "0",
        }
        pipe = self.r.pipeline()
        pipe.hset(keys.e2b_sandbox(sandbox.sandbox_id), mapping=mapping)
        pipe.pexpireat(keys.e2b_sandbox(sandbox.sandbox_id), self._record_expiry(sandbox))
        pipe.execute()
        self.set_end(sandbox, timeout, allow_shorter=True)
        return tokens

    def record(self, sandbox: Sandbox) -> Record:
        data = read_hash(self.r, keys.e2b_sandbox(sandbox.sandbox_id))
        if not data:
            return Record()
        try:
            metadata = json.loads(data.get("metadata") or "{}")
        except ValueError:
            metadata = {}
        timeout = data.get("timeout", "")
        internet = data.get("internet", "")
        return Record(
            metadata=metadata if isinstance(metadata, dict) else {},
            paused=data.get("paused") == "1",
            timeout=int(timeout) if timeout.isdigit() else None,
            public=data.get("public", "1") == "1",
            internet=None if internet == "" else internet == "1",
            has_token=bool(data.get("token")),
        )

    def tokens(self, sandbox: Sandbox) -> Tokens:
        """The sandbox's tokens, to answer a connect; a sandbox made by another API gets its
        access token now (its ports stay public). Raises SandboxNotFound."""
        key = keys.e2b_sandbox(sandbox.sandbox_id)
        data = read_hash(self.r, key)
        if not data.get("token"):
            access = _token()
            sealed = self.box.seal_text(access)
            # HSETNX: two first connects at once agree on one token.
            if self.r.hsetnx(key, "token", sealed):
                self.r.hset(key, "token_sha256", _digest(access))
                self.r.pexpireat(key, self._record_expiry(sandbox))
            data = read_hash(self.r, key)
        if not data.get("token"):
            raise SandboxNotFound()  # its record went with it meanwhile
        traffic = data.get("traffic") or ""
        return Tokens(
            self.box.open_text(data["token"]),
            self.box.open_text(traffic) if traffic else None,
        )

    def check_access_token(self, sandbox_id: str, token: str) -> bool:
        """Whether ``token`` is the sandbox's envd access token (for the envd protocol; the
        caller checks the tenant as well)."""
        digest = self.r.hget(keys.e2b_sandbox(sandbox_id), "token_sha256")
        if not digest or not token:
            return False
        return same(digest.decode() if isinstance(digest, bytes) else str(digest), _digest(token))

    def env_vars(self, sandbox_id: str) -> dict[str, str]:
        """The env vars the sandbox was created with (for processes started through envd)."""
        sealed = self.r.hget(keys.e2b_sandbox(sandbox_id), "env")
        if not sealed:
            return {}
        text = sealed.decode() if isinstance(sealed, bytes) else str(sealed)
        env = json.loads(self.box.open_text(text))
        return {str(k): str(v) for k, v in env.items()} if isinstance(env, dict) else {}

    # -- timers --------------------------------------------------------------------------------
    def max_end(self, sandbox: Sandbox) -> float:
        """The end of the sandbox's maximum lifetime (Unix seconds)."""
        return sandbox.created_at + self.settings.sandbox_max_lifetime

    def set_end(self, sandbox: Sandbox, timeout: int, allow_shorter: bool) -> None:
        """End the sandbox ``timeout`` seconds from now (within its maximum lifetime; only
        later than now's end unless ``allow_shorter``). A paused sandbox keeps its end and
        remembers the timeout for its resume. Raises SandboxNotFound, SandboxStateConflict
        (an agent session's sandbox)."""
        self._run(sandbox, "end", timeout, allow_shorter)

    def mark_paused(self, sandbox: Sandbox) -> None:
        """The sandbox was frozen: no idle time counts and its end is held at its maximum
        lifetime until it is resumed. Raises SandboxNotFound, SandboxStateConflict."""
        self._run(sandbox, "pause", None, True)

    def mark_resumed(self, sandbox: Sandbox, timeout: int) -> None:
        """The sandbox runs again: its idle timer starts now and it ends ``timeout`` seconds
        from now. Raises SandboxNotFound, SandboxStateConflict."""
        self._run(sandbox, "resume", timeout, True)

    def _run(self, sandbox: Sandbox, op: str, timeout: int | None, allow_shorter: bool) -> None:
        now = time.time()
        new_end = self.max_end(sandbox) if timeout is None else now + timeout
        got = self._timers(
            keys=[
                keys.sandbox(sandbox.sandbox_id),
                keys.expiry_index(),
                keys.idle_index(),
                keys.e2b_sandbox(sandbox.sandbox_id),
            ],
            args=[
                sandbox.sandbox_id,
                min(new_end, self.max_end(sandbox)),
                "1" if allow_shorter else "0",
                op,
                now,
                "" if timeout is None else str(timeout),
                self._record_expiry(sandbox),
            ],
        )
        if got == 0:
            raise SandboxNotFound()
        if got == 2:
            raise SandboxStateConflict(
                "this sandbox belongs to an agent session and lives exactly as long as it"
            )

    def _record_expiry(self, sandbox: Sandbox) -> int:
        """Unix ms; never in the past (a web clock behind the creator's would delete it)."""
        return int((max(self.max_end(sandbox), time.time()) + _RECORD_GRACE) * 1000)


def control_state(services: Services) -> ControlState:
    return ControlState(services.settings, services.redis, services.box)


def _token() -> str:
    return secrets.token_urlsafe(32)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
