"""The console's and the docs' files as the server hands them out: only the files meant to be
served, each with the headers that keep a page showing tenant text safe (a strict CSP, no
framing), no inline script anywhere, and the browser guards still in force on the API."""

from __future__ import annotations

import re

import fakeredis
import pytest
from flask import Flask

from shared.crypto import new_fernet_key
from shared.settings import Settings
from web.app import create_app


@pytest.fixture(scope="module")
def app() -> Flask:
    settings = Settings(jwt_secret="s" * 40, secret_key=new_fernet_key(), auth=True)
    return create_app(settings, redis_client=fakeredis.FakeRedis())


@pytest.mark.parametrize(
    "path",
    [
        "/console/",
        "/console/assets/console.js",
        "/console/assets/console.css",
        "/docs",
        "/docs/assets/docs.js",
        "/docs/assets/swagger-ui-bundle.js",
        "/docs/assets/swagger-ui.css",
    ],
)
def test_pages_and_assets_carry_a_strict_policy(app: Flask, path: str) -> None:
    r = app.test_client().get(path)
    assert r.status_code == 200, path
    csp = r.headers["Content-Security-Policy"]
    assert "script-src 'self';" in csp and "unsafe" not in csp
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["X-Frame-Options"] == "DENY"


@pytest.mark.parametrize("path", ["/console/", "/docs"])
def test_no_inline_script_and_only_local_assets(app: Flask, path: str) -> None:
    page = app.test_client().get(path).get_data(as_text=True)
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", page, re.S)
    assert scripts and all('src="/' in attrs and not body.strip() for attrs, body in scripts)
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    # No inline event handler either (the CSP would refuse it; the page must not need one).
    assert not re.search(r"<[^>]*\son[a-z]+\s*=", page)


@pytest.mark.parametrize(
    "path",
    [
        "/console/assets/index.html",
        "/console/assets/../__init__.py",
        "/console/assets/headers.py",
        "/docs/assets/swagger-ui-bundle.js.map",
        "/docs/assets/index.html",
        "/docs/assets/..%2f..%2fdocs.py",
    ],
)
def test_nothing_else_is_served(app: Flask, path: str) -> None:
    assert app.test_client().get(path).status_code == 404


def test_the_page_is_not_cached_and_console_redirects(app: Flask) -> None:
    client = app.test_client()
    assert client.get("/console/").headers["Cache-Control"] == "no-store"
    r = client.get("/console")
    assert r.status_code == 308 and r.headers["Location"].endswith("/console/")


def test_the_api_guards_stay_for_the_console(app: Flask) -> None:
    # The console's calls are same-origin JSON with a bearer header; another site's page
    # still gets 403, and a form post still gets 415.
    client = app.test_client()
    foreign = client.post(
        "/v1/auth/login", json={"email": "a@example.com"}, headers={"Origin": "https://evil.test"}
    )
    assert foreign.status_code == 403
    form = client.post("/v1/auth/login", data={"email": "a@example.com"})
    assert form.status_code == 415
