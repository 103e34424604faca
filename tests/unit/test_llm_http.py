"""The LLM client's network rules (workers/agent/http.py, shared/netpolicy.py): no redirects,
connections only to addresses that pass the policy, pinned to the address that was checked,
TLS verified by name; through the real SDKs against tests/fake_llm.py on loopback."""

from __future__ import annotations

import datetime
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpcore2
import httpx2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shared.netpolicy import address_allowed, check_base_url, resolve
from tests.fake_llm import FakeLLM
from workers.agent.http import (
    MAX_REPLY_BYTES,
    AddressRefused,
    PinnedBackend,
    PinnedTransport,
    llm_http_client,
)
from workers.agent.llm import LlmError, new_conversation

VENDORS = ["anthropic", "openai"]
KEY = "sk-test-0123456789abcdef"
SECRET = "INTERNAL-SECRET-7f3a"
MESSAGES_BODY = {"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def fake() -> Iterator[FakeLLM]:
    with FakeLLM() as server:
        yield server


@pytest.fixture
def internal() -> Iterator[FakeLLM]:
    """A service on 127.0.0.2 that a tenant would like to read: every answer holds SECRET."""
    with FakeLLM([FakeLLM.error(400, SECRET)] * 5, host="127.0.0.2") as server:
        yield server


class Resolver:
    """Answers each lookup with the next of ``answers`` (the last one again when they run out)."""

    def __init__(self, *answers: list[str]) -> None:
        self.answers = list(answers)
        self.calls: list[str] = []

    def __call__(self, host: str, port: int, timeout: float) -> list[str]:
        self.calls.append(host)
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


class SpyBackend(httpcore2.SyncBackend):
    """Records what it is asked to connect to; with ``instead``, connects there."""

    def __init__(self, instead: str | None = None) -> None:
        self.instead = instead
        self.hosts: list[str] = []

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore2.SOCKET_OPTION] | None = None,
    ) -> httpcore2.NetworkStream:
        self.hosts.append(host)
        target = self.instead or host
        return super().connect_tcp(target, port, timeout, local_address, socket_options)


def port_of(server: FakeLLM) -> int:
    port = urlsplit(server.url).port
    assert port is not None
    return port


def conversation(vendor: str) -> Any:
    return new_conversation(
        vendor=vendor,
        model="test-model",
        system="You are a test agent.",
        tools=[],
        prompt="hello",
        timeout=5.0,
        max_retries=0,
    )


# -- the policy ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("addresses", "allowed", "ok"),
    [
        (["93.184.216.34"], "", True),
        (["2606:2800:220:1:248:1893:25c8:1946"], "", True),
        (["127.0.0.2"], "", False),
        (["93.184.216.34", "10.0.0.1"], "", False),  # one internal address refuses them all
        (["169.254.169.254"], "", False),
        (["100.100.100.100"], "", False),  # shared space: carrier NAT, Tailscale
        (["fd00::1"], "", False),
        (["::ffff:127.0.0.1"], "", False),  # IPv4-mapped loopback
        (["::ffff:127.0.0.1"], "127.0.0.1", True),
        (["127.0.0.2"], "127.0.0.1", False),
        (["127.0.0.2"], "API.example", True),  # allowed by name
        (["10.1.2.3", "10.9.9.9"], "10.0.0.0/8", True),
        (["10.1.2.3", "192.168.1.1"], "10.0.0.0/8", False),
    ],
)
def test_address_policy(addresses: list[str], allowed: str, ok: bool) -> None:
    assert address_allowed("api.example", addresses, allowed) is ok


def test_resolving_has_a_time_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    def hang(*args: Any, **kwargs: Any) -> Any:
        time.sleep(2)
        raise OSError("too late")

    monkeypatch.setattr(socket, "getaddrinfo", hang)
    started = time.monotonic()
    with pytest.raises(OSError, match="took longer"):
        resolve("slow.test", 443, timeout=0.2)
    assert time.monotonic() - started < 1.5


# -- the pinned backend ----------------------------------------------------------------------
def test_the_transport_connects_through_the_pinned_backend(fake: FakeLLM) -> None:
    # PinnedTransport replaces httpx2's private `_pool`: if an upgrade stops using it, requests
    # would resolve "llm.test" themselves (and fail differently) without asking our resolver.
    url = f"http://llm.test:{port_of(fake)}/v1/messages"
    resolver = Resolver(["127.0.0.1"])
    with llm_http_client(5.0, "127.0.0.1", resolver=resolver) as client:
        assert client.post(url, json=MESSAGES_BODY).status_code == 200
    assert resolver.calls == ["llm.test"]
    assert fake.requests[0].headers["host"] == f"llm.test:{port_of(fake)}"

    with (
        llm_http_client(5.0, "", resolver=resolver) as client,
        pytest.raises(httpx2.ConnectError) as caught,
    ):
        client.post(url, json=MESSAGES_BODY)
    assert isinstance(caught.value.__cause__, AddressRefused)
    assert "127.0.0.1" not in str(caught.value)
    assert fake.connections == 1


def test_the_connection_goes_to_the_checked_address(fake: FakeLLM) -> None:
    # The resolver would answer 127.0.0.2 next time: only the first, checked, answer is used,
    # and the socket is opened to that literal address (no lookup of the name behind it).
    spy = SpyBackend()
    resolver = Resolver(["127.0.0.1"], ["127.0.0.2"])
    transport = PinnedTransport(PinnedBackend("127.0.0.1", resolver, inner=spy))
    with httpx2.Client(transport=transport, trust_env=False) as client:
        url = f"http://llm.test:{port_of(fake)}/v1/messages"
        assert client.post(url, json=MESSAGES_BODY).status_code == 200
        assert client.post(url, json=MESSAGES_BODY).status_code == 200  # same connection
    assert resolver.calls == ["llm.test"]
    assert spy.hosts == ["127.0.0.1"]


@pytest.mark.parametrize("allowed", ["127.0.0.1", "127.0.0.0/8"])
def test_a_peer_that_is_not_the_checked_address_is_refused(allowed: str, internal: FakeLLM) -> None:
    # Refused even where the policy would allow the peer: it is not the address checked.
    spy = SpyBackend(instead="127.0.0.2")  # as if something between us moved the connection
    transport = PinnedTransport(PinnedBackend(allowed, Resolver(["127.0.0.1"]), inner=spy))
    with (
        httpx2.Client(transport=transport, trust_env=False) as client,
        pytest.raises(httpx2.ConnectError) as caught,
    ):
        client.post(f"http://llm.test:{port_of(internal)}/v1/messages", json=MESSAGES_BODY)
    assert isinstance(caught.value.__cause__, AddressRefused)
    assert spy.hosts == ["127.0.0.1"]
    assert internal.requests == []


@pytest.mark.parametrize("vendor", VENDORS)
def test_a_name_that_rebinds_cannot_reach_the_second_address(
    vendor: str, internal: FakeLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The attack: the name answers a harmless address to check_base_url and an internal one to
    # the client's lookup a moment later.
    real = socket.getaddrinfo
    answers = iter(["127.0.0.1"])

    def rebinding(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "rebind.test":
            host = next(answers, "127.0.0.2")
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    base_url = f"http://rebind.test:{port_of(internal)}" + ("/v1" if vendor == "openai" else "")
    check_base_url(base_url, "127.0.0.1")  # passes: 127.0.0.1 is allowed
    conv = conversation(vendor)
    with pytest.raises(LlmError) as caught:
        conv.step(api_key=KEY, base_url=base_url, allowed_hosts="127.0.0.1")
    assert caught.value.code == "llm_base_url_not_allowed"
    assert "rebind.test" in caught.value.message
    assert "127.0.0.2" not in caught.value.message
    assert internal.connections == 0


def test_tls_is_verified_against_the_host_name(tmp_path: Path) -> None:
    # The socket goes to 127.0.0.1, but the certificate must be valid for the URL's name.
    cert, key = _certificate(tmp_path, "llm.test")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    names: list[str | None] = []
    server_ctx.sni_callback = lambda sock, name, ctx: names.append(name)
    trust = ssl.create_default_context(cafile=str(cert))
    with _tls_server(server_ctx) as port:
        resolver = Resolver(["127.0.0.1"])
        with llm_http_client(5.0, "127.0.0.1", verify=trust, resolver=resolver) as client:
            assert client.get(f"https://llm.test:{port}/").text == "ok"
            with pytest.raises(httpx2.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                client.get(f"https://other.test:{port}/")
    assert names[0] == "llm.test"


# -- through the SDKs ------------------------------------------------------------------------
@pytest.mark.parametrize("allowed", ["127.0.0.1", None])
@pytest.mark.parametrize("status", [307, 302])
@pytest.mark.parametrize("vendor", VENDORS)
def test_a_redirect_is_refused_and_its_target_gets_nothing(
    vendor: str, status: int, allowed: str | None, fake: FakeLLM, internal: FakeLLM
) -> None:
    path = "/v1/messages" if vendor == "anthropic" else "/v1/chat/completions"
    fake.add(FakeLLM.redirect(internal.url + path, status))
    conv = conversation(vendor)
    with pytest.raises(LlmError) as caught:
        conv.step(api_key=KEY, base_url=fake.base_url(vendor), allowed_hosts=allowed)
    error = caught.value
    assert (error.code, error.status) == ("llm_redirect_refused", status)
    for leak in ("127.0.0.2", SECRET, "Moved", KEY):
        assert leak not in error.message
    assert internal.connections == 0
    assert len(fake.requests) == 1
    # The conversation is unchanged and goes on once the endpoint answers.
    fake.add(FakeLLM.text("hello back"))
    assert conv.step(api_key=KEY, base_url=fake.base_url(vendor)).texts == ["hello back"]


def test_the_worker_environment_is_ignored(fake: FakeLLM, monkeypatch: pytest.MonkeyPatch) -> None:
    # A proxy or CA bundle set for the worker must not carry tenants' conversations.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.2:9")
    monkeypatch.setenv("SSL_CERT_FILE", "/nonexistent/ca.pem")
    conv = conversation("anthropic")
    fake.add(FakeLLM.text("direct"))
    turn = conv.step(api_key=KEY, base_url=fake.anthropic_base_url, allowed_hosts="127.0.0.1")
    assert turn.texts == ["direct"]


@pytest.mark.parametrize("vendor", VENDORS)
def test_each_step_closes_its_connections(vendor: str, fake: FakeLLM) -> None:
    before = _sockets()
    conv = conversation(vendor)
    for i in range(3):
        fake.add(FakeLLM.text(f"reply {i}"))
        conv.step(api_key=KEY, base_url=fake.base_url(vendor), allowed_hosts="127.0.0.1")
        conv.add_prompt("again")
    assert fake.connections == 3
    # The server's side of each connection closes when it sees ours close.
    deadline = time.monotonic() + 10
    while _sockets() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _sockets() <= before


def _sockets() -> int:
    fds = Path("/proc/self/fd")
    count = 0
    for fd in os.listdir(fds):
        try:
            count += os.readlink(fds / fd).startswith("socket:")
        except OSError:
            continue  # closed meanwhile
    return count


def _certificate(directory: Path, name: str) -> tuple[str, str]:
    """A self-signed certificate for DNS name ``name``: (cert, key) PEM paths."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (directory / "cert.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(directory / "cert.pem"), str(directory / "key.pem")


class _Ok(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _tls_server:
    """An HTTPS server on 127.0.0.1 (its port, as a context manager)."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
        self.server.daemon_threads = True
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)

    def __enter__(self) -> int:
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        ).start()
        return int(self.server.server_address[1])

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- what a hostile endpoint can cost the worker ------------------------------------------------
class _Hostile(BaseHTTPRequestHandler):
    """Answers every POST 200 with a body that is too big, or one that drips."""

    mode = "big"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(MAX_REPLY_BYTES * 4))
        self.end_headers()
        try:
            if self.mode == "big":
                chunk = b" " * (1 << 20)
                for _ in range(MAX_REPLY_BYTES * 4 >> 20):
                    self.wfile.write(chunk)
            else:
                for _ in range(100):
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    time.sleep(0.3)
        except OSError:
            pass  # the client gave up: what the test wants

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.mark.parametrize("mode", ["big", "drip"])
@pytest.mark.parametrize("vendor", VENDORS)
def test_a_reply_is_capped_in_size_and_time(vendor: str, mode: str) -> None:
    handler = type("H", (_Hostile,), {"mode": mode})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
    ).start()
    base = f"http://127.0.0.1:{server.server_address[1]}" + ("/v1" if vendor == "openai" else "")
    conv = new_conversation(
        vendor=vendor, model="m", system="s", tools=[], prompt="p", timeout=1.0, max_retries=0
    )
    started = time.monotonic()
    try:
        with pytest.raises(LlmError) as caught:
            conv.step(api_key=KEY, base_url=base, allowed_hosts="127.0.0.1")
    finally:
        server.shutdown()
        server.server_close()
    assert caught.value.code in ("llm_unavailable", "llm_timeout")
    # The drip would take 30 s; the reply has twice the timeout in all (+ one read).
    assert time.monotonic() - started < 20
