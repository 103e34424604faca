"""JWTs (PyJWT, HS256): account tokens from verify-otp. Audience says what a token is for, so
a token of one kind is never accepted where another is expected."""

from __future__ import annotations

import time
from typing import Any

import jwt

from shared.errors import Unauthorized

ACCOUNT_AUDIENCE = "account"
ACCOUNT_TTL = 3600
ISSUER = "paddock"


def issue(secret: str, subject: str, audience: str, ttl: int, **claims: Any) -> str:
    now = int(time.time())
    payload = {
        "iss": ISSUER,
        "sub": subject,
        "aud": audience,
        "iat": now,
        "exp": now + ttl,
        **claims,
    }
    return jwt.encode(payload, secret, algorithm="HS256")


def verify(secret: str, token: str, audience: str) -> dict[str, Any]:
    """The claims of a valid, unexpired token for ``audience``. Raises Unauthorized."""
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            secret,
            algorithms=["HS256"],
            audience=audience,
            issuer=ISSUER,
            options={"require": ["exp", "iat", "sub", "aud", "iss"]},
        )
    except jwt.ExpiredSignatureError:
        raise Unauthorized("The token has expired") from None
    except jwt.PyJWTError:
        raise Unauthorized("Invalid token") from None
    return claims


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2 and token.startswith("eyJ")
