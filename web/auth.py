"""Who is calling. Every request resolves to a tenant id (one user = one tenant), which scopes
every lookup.

Routes say which credential they take with a decorator, which hands the view the caller's id
as its first argument (before the URL's values):

- ``@tenant_from_api_key``: v1 sandbox, secret and session routes (an API key, always);
- ``@user_from_account_token``: v1 account routes (an account JWT from verify-otp);
- ``@tenant_from_e2b_key`` / ``@tenant_from_e2b_key_or_body``: the E2B API (an API key, or
  nobody's key with ``PADDOCK_AUTH=off``: the local tenant).
- ``@tenant_from_e2b_sdk_key``: today's E2B control API (the same, but with
  ``PADDOCK_AUTH=off`` a key that is not Paddock's is nobody's: the SDKs always send one).

The session WebSocket takes a session JWT instead (web/ws.py).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Concatenate, ParamSpec, TypeVar

import orjson
from flask import request

from shared.accounts import Accounts
from shared.crypto import API_KEY_PREFIX
from shared.errors import Unauthorized
from shared.settings import Settings
from web import tokens
from web.services import Services, current_services

LOCAL_TENANT = "local"

P = ParamSpec("P")
R = TypeVar("R")


def bearer() -> str | None:
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return None


def presented_key(body_key: str | None = None) -> str | None:
    return bearer() or request.headers.get("X-API-Key") or body_key or None


def tenant_for_api_key(accounts: Accounts, body_key: str | None = None) -> str:
    """The tenant of the request's API key. Raises Unauthorized (missing, unknown, or an
    account JWT where an API key belongs) or ApiKeyRevoked."""
    key = presented_key(body_key)
    if not key:
        raise Unauthorized("An API key is required (Authorization: Bearer or X-API-Key)")
    if tokens.looks_like_jwt(key):
        raise Unauthorized("This route takes an API key, not an account token")
    tenant = accounts.authenticate(key)
    if tenant is None:
        raise Unauthorized("Invalid API key")
    return tenant


def e2b_tenant(settings: Settings, accounts: Accounts, body_key: str | None = None) -> str:
    """E2B routes: the API key's tenant. With ``PADDOCK_AUTH=off`` a request without a key
    acts as the local tenant (a request with a key still is that key's, and a bad key is
    still refused). Raises Unauthorized or ApiKeyRevoked."""
    if not settings.auth and not presented_key(body_key):
        return LOCAL_TENANT
    return tenant_for_api_key(accounts, body_key)


def e2b_sdk_tenant(settings: Settings, accounts: Accounts) -> str:
    """Today's E2B SDKs (the control API): as `e2b_tenant`, except that with
    ``PADDOCK_AUTH=off`` a key that is not a Paddock key counts as none. The SDKs refuse to
    send a request without a key, so ``E2B_API_KEY=anything`` must work where no key is
    needed; a Paddock key is still that key's tenant, and a bad one is still refused. Raises
    Unauthorized or ApiKeyRevoked."""
    key = presented_key()
    if not settings.auth and key and not key.startswith(API_KEY_PREFIX):
        return LOCAL_TENANT
    return e2b_tenant(settings, accounts)


def account_user(settings: Settings, accounts: Accounts) -> str:
    """Account routes: the user id of a valid account JWT. Raises Unauthorized."""
    token = bearer()
    if not token:
        raise Unauthorized("An account token is required (Authorization: Bearer)")
    if not tokens.looks_like_jwt(token):
        raise Unauthorized("This route takes an account token, not an API key")
    claims = tokens.verify(settings.jwt_secret, token, tokens.ACCOUNT_AUDIENCE)
    user_id = str(claims["sub"])
    if not accounts.user_exists(user_id):
        raise Unauthorized("Unknown account")
    return user_id


# -- decorators ---------------------------------------------------------------------------------


def _with_caller(
    view: Callable[Concatenate[str, P], R], caller: Callable[[Services], str]
) -> Callable[P, R]:
    """``view`` called with ``caller(services)`` (the request's id) before its own arguments."""

    @functools.wraps(view)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        return view(caller(current_services()), *args, **kwargs)

    return wrapper


def tenant_from_api_key(view: Callable[Concatenate[str, P], R]) -> Callable[P, R]:
    """The view gets the API key's tenant id. Raises Unauthorized or ApiKeyRevoked."""
    return _with_caller(view, lambda s: tenant_for_api_key(s.accounts))


def user_from_account_token(view: Callable[Concatenate[str, P], R]) -> Callable[P, R]:
    """The view gets the account token's user id. Raises Unauthorized."""
    return _with_caller(view, lambda s: account_user(s.settings, s.accounts))


def tenant_from_e2b_key(view: Callable[Concatenate[str, P], R]) -> Callable[P, R]:
    """The view gets the E2B caller's tenant id (`e2b_tenant`). Raises Unauthorized or
    ApiKeyRevoked."""
    return _with_caller(view, lambda s: e2b_tenant(s.settings, s.accounts))


def tenant_from_e2b_sdk_key(view: Callable[Concatenate[str, P], R]) -> Callable[P, R]:
    """The view gets the E2B SDK caller's tenant id (`e2b_sdk_tenant`). Raises Unauthorized
    or ApiKeyRevoked."""
    return _with_caller(view, lambda s: e2b_sdk_tenant(s.settings, s.accounts))


def tenant_from_e2b_key_or_body(view: Callable[Concatenate[str, P], R]) -> Callable[P, R]:
    """As `tenant_from_e2b_key`, and the key may also come as the body's ``apiKey`` (a later
    E2B client sends it on ``POST /sessions``; headers win). The body itself is validated by
    the view. Raises Unauthorized or ApiKeyRevoked."""
    return _with_caller(view, lambda s: e2b_tenant(s.settings, s.accounts, _body_api_key()))


def _body_api_key() -> str | None:
    """``apiKey`` of a JSON object body, or None (no body, not JSON, not a string)."""
    raw = request.get_data(cache=True)
    if not raw.strip():
        return None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    key = data.get("apiKey") if isinstance(data, dict) else None
    return key if isinstance(key, str) else None
