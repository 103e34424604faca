"""Accounts by email OTP, API keys and rate limits, in Redis.

OTP codes are stored only as HMACs, API keys only as SHA-256 digests; both compared in
constant time. Rate limits live in Redis so they hold across web replicas.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis

from shared import crypto, keys
from shared.errors import ApiKeyExpired, ApiKeyRevoked, LimitExceeded, OtpInvalid, RateLimited
from shared.redisio import read_hash, text

OTP_TTL = 600
OTP_MAX_TRIES = 5
OTP_RESEND_AFTER = 60
OTP_PER_HOUR = 5
LAST_USED_RESOLUTION = 60  # seconds: last_used_at is kept without a write per request
# A key made with an expiry is listed as expired this long after it, then Redis drops it (and
# the listing drops its id): short-lived keys, one per console tab, do not pile up.
EXPIRED_KEPT = 7 * 86400


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    tenant_id: str
    prefix: str
    name: str
    revoked: bool
    created_at: float
    last_used_at: float | None
    expires_at: float | None = None  # None: until revoked

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at


class Accounts:
    def __init__(self, r: redis.Redis, otp_secret: str) -> None:
        self.r = r
        self.otp_secret = otp_secret

    # -- rate limits -------------------------------------------------------------------------
    def hit(self, bucket: str, subject: str, limit: int, window: int) -> None:
        """Count one request in a fixed window. Raises RateLimited past ``limit``."""
        now = int(time.time())
        slot = now // window
        key = keys.rate(bucket, subject, slot)
        pipe = self.r.pipeline()
        pipe.incr(key)
        pipe.expire(key, window + 1)
        count = int(pipe.execute()[0])
        if count > limit:
            raise RateLimited((slot + 1) * window - now)

    # -- OTP ---------------------------------------------------------------------------------
    def issue_otp(self, email: str) -> str | None:
        """A new code for ``email``, or None when one was sent in the last minute (the caller
        answers the same either way). Raises RateLimited past 5 codes an hour."""
        if not self.r.set(keys.rate("otp-resend", email, 0), "1", nx=True, ex=OTP_RESEND_AFTER):
            return None
        self.hit("otp-hour", email, OTP_PER_HOUR, 3600)
        code = crypto.otp_code()
        pipe = self.r.pipeline()
        pipe.delete(keys.otp(email))
        pipe.hset(
            keys.otp(email),
            mapping={"digest": crypto.otp_digest(self.otp_secret, email, code), "tries": 0},
        )
        pipe.expire(keys.otp(email), OTP_TTL)
        pipe.execute()
        return code

    def check_otp(self, email: str, code: str) -> None:
        """Consume the code. Raises OtpInvalid for wrong, expired, used or absent codes; the
        fifth wrong try burns the code."""
        key = keys.otp(email)
        tries = self.r.hincrby(key, "tries", 1)
        digest = self.r.hget(key, "digest")
        if digest is None:
            self.r.delete(key)  # HINCRBY created it
            raise OtpInvalid()
        if tries > OTP_MAX_TRIES:
            raise OtpInvalid()
        if not crypto.same(text(digest), crypto.otp_digest(self.otp_secret, email, code)):
            raise OtpInvalid()
        # Single use: only the request that deletes it may log in.
        if not self.r.delete(key):
            raise OtpInvalid()

    # -- users -------------------------------------------------------------------------------
    def user_for_email(self, email: str) -> str:
        """The account of ``email``, created on first use."""
        existing = self.r.get(keys.user_by_email(email))
        if existing:
            return text(existing)
        user_id = crypto.random_id("usr_", 10)
        if self.r.set(keys.user_by_email(email), user_id, nx=True):
            self.r.hset(keys.user(user_id), mapping={"email": email, "created_at": time.time()})
            return user_id
        return text(self.r.get(keys.user_by_email(email)))

    def user_exists(self, user_id: str) -> bool:
        return bool(self.r.exists(keys.user(user_id)))

    # -- API keys ----------------------------------------------------------------------------
    def create_api_key(
        self, tenant_id: str, name: str, max_keys: int, expires_in: int | None = None
    ) -> tuple[ApiKey, str]:
        """A new key and its one-time plain text; with ``expires_in`` (seconds) it is refused
        from then on (ApiKeyExpired) and no longer counts against ``max_keys``. Raises
        LimitExceeded past ``max_keys`` active (neither revoked nor expired) keys."""
        now = time.time()
        active = [k for k in self.list_api_keys(tenant_id) if not k.revoked and not k.expired(now)]
        if len(active) >= max_keys:
            raise LimitExceeded(f"at most {max_keys} active API keys per account")
        plain = crypto.new_api_key()
        digest = crypto.api_key_digest(plain)
        key_id = crypto.random_id("key_", 10)
        expires_at = None if expires_in is None else now + expires_in
        pipe = self.r.pipeline()
        pipe.hset(
            keys.api_key(digest),
            mapping={
                "key_id": key_id,
                "tenant": tenant_id,
                "prefix": plain[:12],
                "name": name,
                "revoked": "0",
                "created_at": now,
            },
        )
        pipe.set(keys.api_key_id(key_id), digest)
        pipe.sadd(keys.tenant_api_keys(tenant_id), key_id)
        if expires_at is not None:
            pipe.hset(keys.api_key(digest), "expires_at", expires_at)
            gone = int(expires_at + EXPIRED_KEPT)
            pipe.expireat(keys.api_key(digest), gone)
            pipe.expireat(keys.api_key_id(key_id), gone)
        pipe.execute()
        key = ApiKey(key_id, tenant_id, plain[:12], name, False, now, None, expires_at)
        return key, plain

    def list_api_keys(self, tenant_id: str) -> list[ApiKey]:
        out = []
        for key_id in sorted(text(x) for x in self.r.smembers(keys.tenant_api_keys(tenant_id))):
            k = self._by_id(key_id)
            if k is not None:
                out.append(k)
            else:  # an expired key Redis has dropped (EXPIRED_KEPT after its end)
                self.r.srem(keys.tenant_api_keys(tenant_id), key_id)
        return sorted(out, key=lambda k: k.created_at)

    def revoke_api_key(self, tenant_id: str, key_id: str) -> bool:
        """False when the key does not exist or is another tenant's."""
        digest = self.r.get(keys.api_key_id(key_id))
        if digest is None:
            return False
        rec = self.r.hgetall(keys.api_key(text(digest)))
        if not rec or text(rec.get(b"tenant", b"")) != tenant_id:
            return False
        self.r.hset(keys.api_key(text(digest)), "revoked", "1")
        return True

    def authenticate(self, plain: str) -> str | None:
        """The tenant of a valid key, None if unknown. Raises ApiKeyRevoked, ApiKeyExpired."""
        digest = crypto.api_key_digest(plain)
        rec = read_hash(self.r, keys.api_key(digest))
        if not rec:
            return None
        if rec.get("revoked") == "1":
            raise ApiKeyRevoked()
        now = time.time()
        if rec.get("expires_at") and now >= float(rec["expires_at"]):
            raise ApiKeyExpired()
        last = float(rec.get("last_used_at") or 0)
        if now - last > LAST_USED_RESOLUTION:
            self.r.hset(keys.api_key(digest), "last_used_at", now)
        return rec["tenant"]

    def _by_id(self, key_id: str) -> ApiKey | None:
        digest = self.r.get(keys.api_key_id(key_id))
        if digest is None:
            return None
        rec = read_hash(self.r, keys.api_key(text(digest)))
        if not rec:
            return None
        return ApiKey(
            key_id=key_id,
            tenant_id=rec["tenant"],
            prefix=rec["prefix"],
            name=rec["name"],
            revoked=rec["revoked"] == "1",
            created_at=float(rec["created_at"]),
            last_used_at=float(rec["last_used_at"]) if rec.get("last_used_at") else None,
            expires_at=float(rec["expires_at"]) if rec.get("expires_at") else None,
        )
