"""Identifier generation: unguessable, URL-safe."""

from __future__ import annotations

import secrets
import string

_ALNUM = string.ascii_letters + string.digits
_LOWER = string.ascii_lowercase + string.digits


def process_id() -> str:
    """12 characters of [A-Za-z0-9], as the E2B wire format requires."""
    return "".join(secrets.choice(_ALNUM) for _ in range(12))


def sandbox_id() -> str:
    """Like ``sojem4y9-fce131d5``: 8 base36 characters, a dash, 8 hex digits (~73 bits)."""
    return "".join(secrets.choice(_LOWER) for _ in range(8)) + "-" + secrets.token_hex(4)
