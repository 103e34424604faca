"""Agent sessions and their event history.

Every server frame of the protocol that belongs to the session (task_started, stdout, stderr,
message, tool_call, exit, error, secrets_updated) is appended to one Redis Stream with a seq
given in the same atomic step; the stream id is ``<seq>-0``, so "everything after seq N" is a
plain XREAD from ``N-0``. Any writer (a worker running the agent, a web replica rotating a
bundle) can append without breaking the order.

A prompt sent to a session is a *job* in the code (a Celery task is a task). The v1 wire and the
stored data keep the word "task" (``task_id``, ``task_started``, the ``:tasks`` queue key, the
``current_task`` and ``pop_task`` fields), so clients and data already in Redis stay valid.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import redis

from shared import keys
from shared.errors import QuotaExceeded, SessionNotFound
from shared.redisio import read_hash, read_set, text
from shared.slots import NOW_MS_LUA
from shared.store import QUOTA_RETRY_AFTER

# seq = INCR; XADD with id "<seq>-0"; the frame is the given JSON object with "seq" first.
# KEYS: events, seq counter, session hash; ARGV: frame, ttl, token ("" none). A frame with the
# token of the last one appended was appended already (its reply was lost when Redis went
# away): its seq is returned, nothing is appended twice.
_APPEND = """
if ARGV[3] ~= '' and redis.call('HGET', KEYS[3], 'emit_token') == ARGV[3] then
  return tonumber(redis.call('HGET', KEYS[3], 'emit_seq'))
end
local seq = redis.call('INCR', KEYS[2])
local frame = '{"seq":' .. seq .. ',' .. string.sub(ARGV[1], 2)
redis.call('XADD', KEYS[1], seq .. '-0', 'e', frame)
if tonumber(ARGV[2]) > 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  redis.call('EXPIRE', KEYS[2], ARGV[2])
end
if ARGV[3] ~= '' and redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('HSET', KEYS[3], 'emit_token', ARGV[3], 'emit_seq', seq)
end
return seq
"""

# Count a tenant's live sessions (not ended, not expired) plus the ones being created, and
# reserve a place for a new one under the limit, in one step: concurrent creates cannot
# overshoot. Ids whose record is gone (ended and past their history) are pruned on the way.
# KEYS: the tenant's session ids, its sessions being created (a keys.slots set scored by expiry
# in ms).  ARGV: session key prefix, limit (-1: count only), session id, hold ms.
# -> {1 reserved | 0 not, sessions counted (the new one included)}
_RESERVE = (
    NOW_MS_LUA
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local used = redis.call('ZCARD', KEYS[2])
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local s = redis.call('HMGET', ARGV[1] .. id, 'state', 'expires_at')
  if not s[1] then
    redis.call('SREM', KEYS[1], id)
  elseif s[1] ~= 'ended' and tonumber(s[2] or '0') * 1000 > now then
    used = used + 1
  end
end
local limit = tonumber(ARGV[2])
if limit < 0 or used >= limit then return {0, used} end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]), ARGV[3])
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[4]) + 1000)
return {1, used + 1}
"""
)

# Charge command output streamed into a session's history against the session's budget and the
# tenant's (the sum of its last STREAM_WINDOW_HOURS hourly counters).
# KEYS: session counter, tenant hour counters (this hour first); ARGV: size, session cap,
# tenant cap, ttl. Returns false when charged, else the name of the full budget.
_CHARGE = """
local n = tonumber(ARGV[1])
if tonumber(redis.call('GET', KEYS[1]) or '0') + n > tonumber(ARGV[2]) then return 'session' end
local sum = 0
for i = 2, #KEYS do sum = sum + tonumber(redis.call('GET', KEYS[i]) or '0') end
if sum + n > tonumber(ARGV[3]) then return 'tenant' end
redis.call('INCRBY', KEYS[1], n)
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('INCRBY', KEYS[2], n)
redis.call('EXPIRE', KEYS[2], ARGV[4])
return false
"""
# Queue a job (a prompt; "task" on the wire) unless ARGV[2] already wait. KEYS: the queue;
# ARGV: job JSON, limit.
_ENQUEUE = """
if redis.call('LLEN', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
return redis.call('RPUSH', KEYS[1], ARGV[1])
"""
# Take the next queued job, once per token: a retry after a lost reply (Redis went away)
# gets the same job instead of losing it and taking the one behind. The job is kept on the
# session (field ``pop_task``) until the taker confirms (``taken``). KEYS: queue, session hash;
# ARGV: token
_POP = """
if redis.call('HGET', KEYS[2], 'pop_token') == ARGV[1] then
  return redis.call('HGET', KEYS[2], 'pop_task')
end
local t = redis.call('LPOP', KEYS[1])
if t and redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('HSET', KEYS[2], 'pop_token', ARGV[1], 'pop_task', t)
end
return t
"""
# Release the runner lock only if ``owner`` still holds it. KEYS: lock; ARGV: owner
_DROP = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# Session lifetime (at most 2 h) + history after its end (1 h), rounded up to whole hours.
STREAM_WINDOW_HOURS = 4

ENDED_STATES = ("ended",)
# The keys.slots kind that holds the places of sessions being created.
CREATING = "session-creates"


@dataclass(frozen=True)
class ChatSession:
    session_id: str
    tenant_id: str
    sandbox_id: str
    host_id: str
    template: str
    agent: dict[str, Any]
    llm: dict[str, Any]
    secrets: list[str]
    user_id: str
    state: str
    created_at: float
    expires_at: float

    @property
    def ended(self) -> bool:
        return self.state in ENDED_STATES or time.time() >= self.expires_at


class Sessions:
    def __init__(self, r: redis.Redis) -> None:
        self.r = r
        self._append = r.register_script(_APPEND)
        self._reserve = r.register_script(_RESERVE)
        self._charge = r.register_script(_CHARGE)
        self._enqueue = r.register_script(_ENQUEUE)
        self._pop = r.register_script(_POP)
        self._drop = r.register_script(_DROP)

    # -- the per-tenant quota ----------------------------------------------------------------
    def reserve(self, tenant_id: str, session_id: str, limit: int, hold: float) -> None:
        """Hold one of the tenant's ``limit`` live-session places for ``session_id`` while it
        is being created (``create`` turns the hold into the session; ``release`` gives it
        back; a holder that dies stops counting after ``hold`` seconds).

        Raises QuotaExceeded when the tenant's live and starting sessions reach ``limit``.
        """
        reserved, _ = self._count_and_reserve(tenant_id, session_id, limit, hold)
        if not reserved:
            raise QuotaExceeded(
                f"agent session quota reached: {limit} live sessions per tenant "
                "(PADDOCK_TENANT_MAX_SESSIONS); end one first (DELETE /v1/sessions/{id})",
                retry_after=QUOTA_RETRY_AFTER,
            )

    def release(self, tenant_id: str, session_id: str) -> None:
        """Give back the place ``reserve`` held (a no-op once the session exists)."""
        self.r.zrem(keys.slots(CREATING, tenant_id), session_id)

    def live_count(self, tenant_id: str) -> int:
        """The tenant's sessions that count against its quota: live ones and ones starting."""
        return self._count_and_reserve(tenant_id, "", -1, 0)[1]

    def _count_and_reserve(
        self, tenant_id: str, session_id: str, limit: int, hold: float
    ) -> tuple[bool, int]:
        got = self._reserve(
            keys=[keys.tenant_sessions(tenant_id), keys.slots(CREATING, tenant_id)],
            args=[keys.session(""), limit, session_id, max(1, int(hold * 1000))],
        )
        return bool(int(got[0])), int(got[1])

    # -- records -----------------------------------------------------------------------------
    def create(self, s: ChatSession) -> None:
        """Record the session; the place ``reserve`` held for it becomes the session itself."""
        pipe = self.r.pipeline()
        pipe.hset(
            keys.session(s.session_id),
            mapping={
                "tenant": s.tenant_id,
                "sandbox": s.sandbox_id,
                "host": s.host_id,
                "template": s.template,
                "agent": json.dumps(s.agent),
                "llm": json.dumps(s.llm),
                "secrets": json.dumps(s.secrets),
                "user_id": s.user_id,
                "state": s.state,
                "created_at": s.created_at,
                "expires_at": s.expires_at,
            },
        )
        pipe.sadd(keys.tenant_sessions(s.tenant_id), s.session_id)
        pipe.zadd(keys.session_expiry(), {s.session_id: s.expires_at})
        for name in s.secrets:
            pipe.sadd(keys.secret_users(s.tenant_id, name), s.session_id)
        pipe.zrem(keys.slots(CREATING, s.tenant_id), s.session_id)
        pipe.execute()

    def load(self, session_id: str) -> ChatSession | None:
        d = read_hash(self.r, keys.session(session_id))
        if not d:
            return None
        return ChatSession(
            session_id=session_id,
            tenant_id=d["tenant"],
            sandbox_id=d["sandbox"],
            host_id=d["host"],
            template=d["template"],
            agent=json.loads(d["agent"]),
            llm=json.loads(d["llm"]),
            secrets=json.loads(d["secrets"]),
            user_id=d["user_id"],
            state=d["state"],
            created_at=float(d["created_at"]),
            expires_at=float(d["expires_at"]),
        )

    def get(self, tenant_id: str, session_id: str) -> ChatSession:
        """The tenant's session (ended ones too). Raises SessionNotFound."""
        s = self.load(session_id)
        if s is None or s.tenant_id != tenant_id:
            raise SessionNotFound()
        return s

    def of_tenant(self, tenant_id: str) -> list[ChatSession]:
        found = (self.load(i) for i in sorted(read_set(self.r, keys.tenant_sessions(tenant_id))))
        return [s for s in found if s is not None]

    def end(self, s: ChatSession, keep_for: int) -> bool:
        """Mark ended and release its bundles; False if it already was. Its history is kept
        ``keep_for`` seconds more so late readers can page through it."""
        if self.r.hget(keys.session(s.session_id), "state") == b"ended":
            return False
        pipe = self.r.pipeline()
        pipe.hset(keys.session(s.session_id), mapping={"state": "ended", "ended_at": time.time()})
        pipe.zrem(keys.session_expiry(), s.session_id)
        for name in s.secrets:
            pipe.srem(keys.secret_users(s.tenant_id, name), s.session_id)
        pipe.delete(
            keys.session_jobs(s.session_id),
            keys.session_cancel(s.session_id),
            keys.session_conversation(s.session_id),
        )
        for key in (
            keys.session(s.session_id),
            keys.session_events(s.session_id),
            keys.session_seq(s.session_id),
            keys.session_output_bytes(s.session_id),
        ):
            pipe.expire(key, keep_for)
        pipe.execute()
        return True

    def due(self, now: float) -> list[str]:
        return [text(x) for x in self.r.zrangebyscore(keys.session_expiry(), "-inf", now)]

    def sessions_using(self, tenant_id: str, bundle: str) -> list[str]:
        return sorted(text(x) for x in self.r.smembers(keys.secret_users(tenant_id, bundle)))

    # -- events ------------------------------------------------------------------------------
    def emit(self, session_id: str, frame: dict[str, Any], token: str = "") -> int:
        """Append one server frame; returns its seq. With a ``token`` (unique per frame) the
        call is safe to repeat after a lost reply: the frame is appended once."""
        body = json.dumps(frame, separators=(",", ":"))
        return int(
            self._append(
                keys=[
                    keys.session_events(session_id),
                    keys.session_seq(session_id),
                    keys.session(session_id),
                ],
                args=[body, 0, token],
            )
        )

    def charge_output(
        self, session_id: str, tenant_id: str, size: int, session_cap: int, tenant_cap: int
    ) -> str | None:
        """Count ``size`` bytes of command output about to enter the session's history.
        Returns None when it fits, else the budget that is full ("session" or "tenant").

        History outlives its session by HISTORY_AFTER_END, so a tenant's share is counted
        per hour: every byte is gone within STREAM_WINDOW_HOURS of being written, and the sum
        over that many hours bounds what the tenant's sessions hold in Redis at any moment.
        """
        hour = int(time.time() // 3600)
        buckets = [
            keys.tenant_stream_bytes(tenant_id, hour - i) for i in range(STREAM_WINDOW_HOURS)
        ]
        got = self._charge(
            keys=[keys.session_output_bytes(session_id), *buckets],
            args=[size, session_cap, tenant_cap, (STREAM_WINDOW_HOURS + 1) * 3600],
        )
        return text(got) if got else None

    def last_seq(self, session_id: str) -> int:
        return int(self.r.get(keys.session_seq(session_id)) or 0)

    def events_after(
        self, session_id: str, after: int, limit: int, block_ms: int | None = None
    ) -> list[dict[str, Any]]:
        """Frames with seq > ``after``, oldest first; with ``block_ms`` wait for new ones."""
        key = keys.session_events(session_id)
        if block_ms is None:
            entries = self.r.xrange(key, min=f"{after + 1}-0", count=limit)
        else:
            resp = self.r.xread({key: f"{after}-0"}, count=limit, block=block_ms)
            entries = resp[0][1] if resp else []
        return [json.loads(fields[b"e"]) for _id, fields in entries]

    # -- the agent's conversation ----------------------------------------------------------
    def save_conversation(self, session_id: str, snapshot: dict[str, Any], ttl: int) -> None:
        self.r.set(keys.session_conversation(session_id), json.dumps(snapshot), ex=max(1, ttl))

    def load_conversation(self, session_id: str) -> dict[str, Any] | None:
        raw = self.r.get(keys.session_conversation(session_id))
        return json.loads(raw) if raw else None

    # -- jobs (a prompt each; the wire and the stored JSON call them tasks: ``task_id``) ------
    def enqueue_job(self, session_id: str, job_id: str, prompt: str, limit: int) -> bool:
        """Queue a job behind the session's others; False (nothing queued) when ``limit``
        jobs already wait: prompts are up to 64 KiB each and wait in Redis."""
        body = json.dumps({"task_id": job_id, "prompt": prompt})
        return bool(self._enqueue(keys=[keys.session_jobs(session_id)], args=[body, limit]))

    def next_job(self, session_id: str, token: str) -> dict[str, str] | None:
        """Take the oldest queued job (``{"task_id", "prompt"}``). Safe to repeat with the
        same ``token`` (unique per take) after a lost reply: the same job comes back. Call
        `taken` once it is held."""
        raw = self._pop(
            keys=[keys.session_jobs(session_id), keys.session(session_id)], args=[token]
        )
        return json.loads(raw) if raw else None

    def taken(self, session_id: str) -> None:
        """The job `next_job` gave is held by its runner: its copy on the session goes."""
        self.r.hdel(keys.session(session_id), "pop_task")

    def pending_jobs(self, session_id: str) -> int:
        return int(self.r.llen(keys.session_jobs(session_id)))

    def live_ids(self) -> list[str]:
        """Every session not ended yet (the expiry index: a session is in it from its create
        to its end)."""
        return [text(x) for x in self.r.zrange(keys.session_expiry(), 0, -1)]

    # -- the job running now, and its cancel (hash field ``current_task``, kept for stored data)
    def begin_job(self, session_id: str, job_id: str) -> None:
        self.r.hset(keys.session(session_id), "current_task", job_id)

    def current_job(self, session_id: str) -> str | None:
        current = self.r.hget(keys.session(session_id), "current_task")
        return text(current) if current else None

    def cancel_requested(self, session_id: str, job_id: str) -> bool:
        """Whether a client asked to cancel ``job_id`` (`request_cancel`)."""
        return self.r.get(keys.session_cancel(session_id)) == job_id.encode()

    def end_job(self, session_id: str, job_id: str) -> None:
        """The session runs no job any more; a cancel asked of ``job_id`` is done with."""
        self.r.hdel(keys.session(session_id), "current_task")
        if self.cancel_requested(session_id, job_id):
            self.r.delete(keys.session_cancel(session_id))

    def request_cancel(self, session_id: str) -> str | None:
        """Ask the running job to stop; returns its id, None when no job is running."""
        current = self.current_job(session_id)
        if not current:
            return None
        self.r.set(keys.session_cancel(session_id), current, ex=3600)
        return current

    def take_runner(self, session_id: str, owner: str, ttl: int) -> bool:
        """Take the runner lock; True also when ``owner`` holds it already (a retry whose first
        reply was lost must not find its own lock held by someone else)."""
        key = keys.session_runner(session_id)
        return bool(self.r.set(key, owner, nx=True, ex=ttl)) or self.r.get(key) == owner.encode()

    def renew_runner(self, session_id: str, ttl: int) -> None:
        self.r.expire(keys.session_runner(session_id), ttl)

    def drop_runner(self, session_id: str, owner: str | None = None) -> None:
        """Release the runner lock: ``owner``'s only (a lock that expired and was taken over
        stays with its new holder), or whoever holds it when None (a worker starting)."""
        if owner is None:
            self.r.delete(keys.session_runner(session_id))
        else:
            self._drop(keys=[keys.session_runner(session_id)], args=[owner])

    # -- sockets -----------------------------------------------------------------------------
    def open_socket(self, session_id: str, conn_id: str, limit: int, stale_after: float) -> bool:
        """Register a connection; False when the session already has ``limit`` live ones."""
        key = keys.session_sockets(session_id)
        now = time.time()
        self.r.zremrangebyscore(key, "-inf", now - stale_after)
        if self.r.zcard(key) >= limit:
            return False
        self.r.zadd(key, {conn_id: now})
        self.r.expire(key, int(stale_after) * 2)
        return True

    def beat_socket(self, session_id: str, conn_id: str, stale_after: float) -> None:
        key = keys.session_sockets(session_id)
        self.r.zadd(key, {conn_id: time.time()})
        self.r.expire(key, int(stale_after) * 2)

    def close_socket(self, session_id: str, conn_id: str) -> None:
        self.r.zrem(keys.session_sockets(session_id), conn_id)
