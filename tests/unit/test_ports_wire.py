"""Pure logic of the port proxy: the relay's tickets (shared/relay.py), which Host names a
sandbox port (web/ports/access.py) and the heads between client and app (web/ports/wire.py).
The proxy itself is tested end to end in tests/integration/test_ports.py."""

from __future__ import annotations

import base64
import io
import time

import pytest

from shared import relay
from shared.errors import ConfigError
from shared.settings import Settings
from web.ports import access, pages, wire

FERNET = base64.urlsafe_b64encode(b"\x01" * 32).decode()
OLD = base64.urlsafe_b64encode(b"\x02" * 32).decode()


def test_a_ticket_opens_one_sandbox_port_on_one_host_for_a_while() -> None:
    key = relay.relay_keys(FERNET)[0]
    line = relay.sign(key, "host-a", "abc-123", 8000)
    t = relay.verify([key], "host-a", line)
    assert (t.sandbox_id, t.port) == ("abc-123", 8000)
    with pytest.raises(ValueError, match="signature"):
        relay.verify([key], "host-b", line)  # another host
    with pytest.raises(ValueError, match="signature"):
        relay.verify([key], "host-a", line.replace(b" 8000 ", b" 8001 "))
    with pytest.raises(ValueError, match="expired"):
        relay.verify([key], "host-a", line, now=time.time() + relay.TICKET_TTL + 5)
    with pytest.raises(ValueError, match="not a ticket"):
        relay.verify([key], "host-a", b"PDK1 abc 8000\n")
    with pytest.raises(ValueError, match="port"):
        relay.verify([key], "host-a", relay.sign(key, "host-a", "abc", 70000))


def test_relay_keys_follow_the_secret_key_rotation() -> None:
    new, old = relay.relay_keys(f"{FERNET},{OLD}")
    # A host still on the old key list accepts what a web signing with the new first key sends,
    # as long as the new key is among its keys, and the other way round.
    assert relay.verify([new, old], "h", relay.sign(old, "h", "s", 1)).port == 1
    assert new != old and relay.relay_keys(FERNET) == [new]
    with pytest.raises(ConfigError):
        relay.relay_keys("")
    with pytest.raises(ConfigError):
        relay.relay_keys("not-a-key")


def test_which_host_names_a_sandbox_port() -> None:
    suffix = "." + Settings(preview_domain="Preview.Example.").preview_domain
    assert suffix == ".preview.example"
    env = {"HTTP_HOST": "8000-Abc12345-0a1b2c3d.preview.example:3000"}
    host = access.request_host(env, proxy_hops=0)
    assert access.target(host, suffix) == access.Target(8000, "abc12345-0a1b2c3d")
    assert access.target("preview.example", suffix) is None
    assert access.target("www.preview.example", suffix) is None
    assert access.target("8000-abc.other.example", suffix) is None
    with pytest.raises(pages.PortError) as bad:
        access.target("0-abc.preview.example", suffix)
    assert bad.value.status == 400
    # Behind trusted proxies, their X-Forwarded-Host.
    env = {"HTTP_HOST": "internal:80", "HTTP_X_FORWARDED_HOST": "evil, 1-abc.preview.example"}
    assert access.request_host(env, proxy_hops=1) == "1-abc.preview.example"
    assert access.request_host(env, proxy_hops=0) == "internal"
    env = {"wsgi.url_scheme": "http", "HTTP_X_FORWARDED_PROTO": "https"}
    assert access.request_scheme(env, proxy_hops=1) == "https"
    assert access.request_scheme(env, proxy_hops=0) == "http"  # a client's word: not trusted
    assert access.request_scheme(env, proxy_hops=2) == "http"  # fewer hops than trusted
    env["HTTP_X_FORWARDED_PROTO"] = "gopher"
    assert access.request_scheme(env, proxy_hops=1) == "http"
    with pytest.raises(ConfigError):
        Settings(preview_domain="a b")


def _environ(**extra: str) -> dict[str, object]:
    env: dict[str, object] = {
        "REQUEST_METHOD": "POST",
        "RAW_URI": "/p?q=1",
        "REMOTE_ADDR": "10.1.2.3",
        "wsgi.url_scheme": "https",
        "wsgi.input": io.BytesIO(b""),
        "HTTP_HOST": "8000-abc.localhost",
        "HTTP_X_API_KEY": "pdk_live_x",
        "HTTP_X_ACCESS_TOKEN": "envd",
        "HTTP_E2B_TRAFFIC_ACCESS_TOKEN": "traffic",
        "HTTP_AUTHORIZATION": "Bearer app",
        "HTTP_CONNECTION": "keep-alive, X-Hop",
        "HTTP_X_HOP": "gone",
        "HTTP_KEEP_ALIVE": "5",
        "HTTP_X_FORWARDED_FOR": "1.1.1.1",
        "HTTP_X_FORWARDED_PROTO": "http",  # a client's claim
        "CONTENT_TYPE": "text/plain",
        "CONTENT_LENGTH": "3",
    }
    env.update(extra)
    return env


def test_the_request_the_app_gets_carries_nothing_of_paddocks() -> None:
    head, framing = wire.request_head(_environ(), upgrade=False)  # type: ignore[arg-type]
    text = head.decode()
    assert text.startswith("POST /p?q=1 HTTP/1.1\r\n") and text.endswith("\r\n\r\n")
    lines = text.split("\r\n")
    assert "authorization: Bearer app" in lines and "host: 8000-abc.localhost" in lines
    assert "content-length: 3" in lines and framing == "length"
    assert "x-forwarded-for: 1.1.1.1, 10.1.2.3" in lines and "connection: close" in lines
    assert [line for line in lines if line.startswith("x-forwarded-proto")] == [
        "x-forwarded-proto: https"  # ours only
    ]
    for gone in ("x-api-key", "x-access-token", "e2b-traffic-access-token", "x-hop", "keep-alive"):
        assert not any(line.startswith(gone + ":") for line in lines), gone
    head, _ = wire.request_head(
        _environ(HTTP_AUTHORIZATION="Bearer pdk_live_abc"),  # type: ignore[arg-type]
        upgrade=False,
    )
    assert b"authorization" not in head
    head, framing = wire.request_head(
        _environ(
            HTTP_CONNECTION="Upgrade",
            HTTP_UPGRADE="websocket",
            CONTENT_LENGTH="",
            HTTP_TRANSFER_ENCODING="chunked",
        ),  # type: ignore[arg-type]
        upgrade=True,
    )
    assert b"connection: Upgrade\r\n" in head and b"upgrade: websocket\r\n" in head
    assert framing == "chunked" and b"transfer-encoding: chunked\r\n" in head


def test_the_answer_the_client_gets() -> None:
    got = wire.response_headers(
        [
            ("Content-Type", "text/html"),
            ("Connection", "close, X-Private"),
            ("X-Private", "1"),
            ("Transfer-Encoding", "chunked"),
            ("Bad Name", "x"),
            ("X-Ctl", "a\x00b"),
            ("Set-Cookie", "a=1"),
            ("Set-Cookie", "b=2"),
        ],
        chunked=False,
    )
    assert got == [("Content-Type", "text/html"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")]
    with pytest.raises(pages.PortError):
        wire.response_headers([("X-Big", "x" * (wire.MAX_HEAD_BYTES + 1))], chunked=False)
    with pytest.raises(pages.PortError):
        wire.response_headers([(f"X-{i}", "1") for i in range(wire.MAX_HEADERS + 1)], False)


def test_the_answer_is_framed_as_the_proxy_reads_it() -> None:
    """One Content-Length, the one http.client reads by, or none for a chunked answer; values
    that disagree are the app's error (a client would frame the answer otherwise)."""
    twice = [("Content-Length", "5"), ("X-A", "1"), ("content-length", "5")]
    assert wire.response_headers(twice, chunked=False) == [("Content-Length", "5"), ("X-A", "1")]
    both = [("Transfer-Encoding", "chunked"), ("Content-Length", "5"), ("X-A", "1")]
    assert wire.response_headers(both, chunked=True) == [("X-A", "1")]
    for bad in (
        [("Content-Length", "5"), ("Content-Length", "100")],
        [("Content-Length", "5, 5")],
        [("Content-Length", "-1")],
        [("Content-Length", "\u0665")],  # a digit to str.isdigit, not to HTTP
    ):
        with pytest.raises(pages.PortError) as err:
            wire.response_headers(bad, chunked=False)
        assert err.value.status == 502
    assert wire.status_line(200, "") == "200 OK"
    assert wire.status_line(299, "Fine") == "299 Fine"
    with pytest.raises(pages.PortError):
        wire.status_line(600, "x")
