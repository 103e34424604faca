"""Secret bundles: named sets of KEY=value, encrypted at rest, versioned, never returned.

Values are sealed with the SecretBox before they touch Redis; the hash keeps the key names,
version and dates in clear so listing never needs to decrypt.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import redis

from shared import keys
from shared.crypto import SecretBox
from shared.errors import BundleExists, BundleInUse, BundleNotFound, LimitExceeded, VersionMismatch
from shared.redisio import read_set, text

MAX_BUNDLES = 50
MAX_KEYS = 50
MAX_VALUE_BYTES = 64 * 1024


@dataclass(frozen=True)
class Bundle:
    name: str
    keys: list[str]
    version: int
    created_at: float
    updated_at: float


# Create only if absent, and only while the tenant has room: one atomic step.
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
if redis.call('SCARD', KEYS[2]) >= tonumber(ARGV[1]) then return -2 end
redis.call('HSET', KEYS[1], 'keys', ARGV[2], 'version', 1, 'created_at', ARGV[3],
           'updated_at', ARGV[3], 'blob', ARGV[4])
redis.call('SADD', KEYS[2], ARGV[5])
return 1
"""
# Replace values if the bundle exists and (when given) its version matches.
_REPLACE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local v = tonumber(redis.call('HGET', KEYS[1], 'version'))
if ARGV[1] ~= '' and tonumber(ARGV[1]) ~= v then return -2 end
redis.call('HSET', KEYS[1], 'keys', ARGV[2], 'version', v + 1, 'updated_at', ARGV[3],
           'blob', ARGV[4])
return v + 1
"""


class SecretBundles:
    def __init__(self, r: redis.Redis, box: SecretBox) -> None:
        self.r = r
        self.box = box
        self._create = r.register_script(_CREATE)
        self._replace = r.register_script(_REPLACE)

    def create(self, tenant_id: str, name: str, values: dict[str, str]) -> Bundle:
        """Raises BundleExists, LimitExceeded (too many bundles)."""
        now = time.time()
        res = self._create(
            keys=[keys.secret_bundle(tenant_id, name), keys.tenant_secrets(tenant_id)],
            args=[MAX_BUNDLES, json.dumps(sorted(values)), now, self.box.seal(values), name],
        )
        if res == -1:
            raise BundleExists()
        if res == -2:
            raise LimitExceeded(f"at most {MAX_BUNDLES} secret bundles per tenant")
        return self.get(tenant_id, name)

    def replace(
        self, tenant_id: str, name: str, values: dict[str, str], if_match: int | None = None
    ) -> Bundle:
        """Full replace, version + 1. Raises BundleNotFound, VersionMismatch."""
        res = self._replace(
            keys=[keys.secret_bundle(tenant_id, name)],
            args=[
                "" if if_match is None else if_match,
                json.dumps(sorted(values)),
                time.time(),
                self.box.seal(values),
            ],
        )
        if res == -1:
            raise BundleNotFound()
        if res == -2:
            raise VersionMismatch()
        return self.get(tenant_id, name)

    def get(self, tenant_id: str, name: str) -> Bundle:
        rec = self.r.hgetall(keys.secret_bundle(tenant_id, name))
        if not rec:
            raise BundleNotFound()
        d = {text(k): v for k, v in rec.items()}
        return Bundle(
            name=name,
            keys=json.loads(d["keys"]),
            version=int(d["version"]),
            created_at=float(d["created_at"]),
            updated_at=float(d["updated_at"]),
        )

    def values(self, tenant_id: str, name: str) -> dict[str, str]:
        """Decrypted values, for the agent loop only. Raises BundleNotFound."""
        blob = self.r.hget(keys.secret_bundle(tenant_id, name), "blob")
        if blob is None:
            raise BundleNotFound()
        return self.box.open(blob if isinstance(blob, bytes) else blob.encode())

    def list(self, tenant_id: str) -> list[Bundle]:
        names = sorted(read_set(self.r, keys.tenant_secrets(tenant_id)))
        out = []
        for name in names:
            try:
                out.append(self.get(tenant_id, name))
            except BundleNotFound:
                continue
        return out

    def rotate_all(self) -> int:
        """Re-encrypt every bundle with the first configured key (after a new master key was
        put first in PADDOCK_SECRET_KEY); the old keys can then be dropped. Returns the count."""
        count = 0
        for key in self.r.scan_iter(match=keys.secret_bundle("*", "*"), count=500):
            if key.decode().endswith(":sessions"):
                continue
            blob = self.r.hget(key, "blob")
            if blob is None:
                continue
            rotated = self.box.rotate(blob)
            # Only if unchanged meanwhile: a concurrent PUT already wrote with the new key.
            with self.r.pipeline() as pipe:
                try:
                    pipe.watch(key)
                    if pipe.hget(key, "blob") != blob:
                        continue
                    pipe.multi()
                    pipe.hset(key, "blob", rotated)
                    pipe.execute()
                    count += 1
                except redis.WatchError:
                    continue
        return count

    def delete(self, tenant_id: str, name: str, force: bool = False) -> None:
        """Raises BundleNotFound, BundleInUse (unless ``force``)."""
        if not self.r.exists(keys.secret_bundle(tenant_id, name)):
            raise BundleNotFound()
        if not force and self.r.scard(keys.secret_users(tenant_id, name)):
            raise BundleInUse()
        pipe = self.r.pipeline()
        pipe.delete(keys.secret_bundle(tenant_id, name), keys.secret_users(tenant_id, name))
        pipe.srem(keys.tenant_secrets(tenant_id), name)
        pipe.execute()
