"""Who is calling. Every request resolves to a tenant id (one user = one tenant), which scopes
every lookup. API keys on sandbox and secret routes; account JWTs on account routes."""

from __future__ import annotations

from flask import request

from shared.accounts import Accounts
from shared.errors import Unauthorized
from shared.settings import Settings
from web import tokens

LOCAL_TENANT = "local"


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
    still refused)."""
    if not settings.auth and not presented_key(body_key):
        return LOCAL_TENANT
    return tenant_for_api_key(accounts, body_key)


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
