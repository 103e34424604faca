"""Reading Redis replies as text: the clients return bytes, the state store wants str."""

from __future__ import annotations

from typing import Any

import redis


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_hash(r: redis.Redis, key: str) -> dict[str, str]:
    """HGETALL as str → str (empty when the key is absent)."""
    return {text(k): text(v) for k, v in r.hgetall(key).items()}


def read_set(r: redis.Redis, key: str) -> set[str]:
    return {text(x) for x in r.smembers(key)}
