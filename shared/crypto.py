"""Secrets at rest and digests: Fernet for secret values, HMAC for OTP codes, SHA-256 for API
keys. Keys come from settings; nothing here reads the environment."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import string

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from shared.errors import ConfigError, PaddockError

_BASE62 = string.digits + string.ascii_letters
API_KEY_PREFIX = "pdk_live_"


class SecretBox:
    """Encrypts with the first key, decrypts with any (so the master key can be rotated:
    put the new key first, keep the old ones until ``rotate`` has re-encrypted everything)."""

    def __init__(self, keys: str) -> None:
        parts = [k.strip() for k in keys.split(",") if k.strip()]
        if not parts:
            raise ConfigError(
                "PADDOCK_SECRET_KEY is not set (one or more Fernet keys, comma "
                "separated; generate one with `python -m shared.crypto`)"
            )
        try:
            self._fernet = MultiFernet([Fernet(k.encode()) for k in parts])
        except ValueError as exc:
            raise ConfigError("PADDOCK_SECRET_KEY: not a valid Fernet key") from exc

    def seal(self, values: dict[str, str]) -> bytes:
        return self._fernet.encrypt(json.dumps(values).encode())

    def open(self, token: bytes) -> dict[str, str]:
        """Raises PaddockError if no configured key can decrypt ``token``."""
        try:
            data: dict[str, str] = json.loads(self._fernet.decrypt(token))
        except InvalidToken as exc:
            raise PaddockError(
                "a stored secret cannot be decrypted with the configured keys"
            ) from exc
        return data

    def seal_text(self, text: str) -> str:
        return self._fernet.encrypt(text.encode()).decode()

    def open_text(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken as exc:
            raise PaddockError("a sealed value cannot be decrypted") from exc

    def rotate(self, token: bytes) -> bytes:
        return self._fernet.rotate(token)


def new_fernet_key() -> str:
    return Fernet.generate_key().decode()


def otp_code() -> str:
    """Six digits from a CSPRNG."""
    return f"{secrets.randbelow(1_000_000):06d}"


def otp_digest(secret: str, email: str, code: str) -> str:
    return hmac.new(secret.encode(), f"otp:{email}:{code}".encode(), hashlib.sha256).hexdigest()


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def new_api_key() -> str:
    """``pdk_live_`` + 32 random bytes in base62."""
    n = int.from_bytes(secrets.token_bytes(32), "big")
    chars = []
    while n:
        n, r = divmod(n, 62)
        chars.append(_BASE62[r])
    return API_KEY_PREFIX + "".join(reversed(chars)).rjust(43, "0")


def api_key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def random_id(prefix: str, nbytes: int = 12) -> str:
    return prefix + base64.b32encode(secrets.token_bytes(nbytes)).decode().rstrip("=").lower()


if __name__ == "__main__":
    print(new_fernet_key())
