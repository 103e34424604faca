"""The login mail over TLS, as real relays want it: STARTTLS, TLS from the first byte
(``smtps://``), certificates verified (a private CA can be trusted with PADDOCK_SMTP_CA_FILE),
and a relay that says "try again later" gets the mail on a retry."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from devstack.stack import Stack, free_port
from tests.integration.accounts_helpers import Inbox
from tests.integration.client import Client


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1: (cert, key) PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "paddock test relay")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    d = tmp_path_factory.mktemp("tls")
    (d / "cert.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (d / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return d / "cert.pem", d / "key.pem"


def _server_ctx(cert: tuple[Path, Path]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    return ctx


class FlakyInbox(Inbox):
    """Answers "try again later" to the first ``failures`` messages."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.failures > 0:
            self.failures -= 1
            return "451 4.3.0 Try again later"
        return await super().handle_DATA(server, session, envelope)


@pytest.fixture
def relay(request: pytest.FixtureRequest, cert: tuple[Path, Path]) -> Iterator[tuple[str, Inbox]]:
    mode, failures = request.param
    inbox = FlakyInbox(failures)
    port = free_port()
    if mode == "starttls":
        controller = Controller(
            inbox,
            hostname="127.0.0.1",
            port=port,
            tls_context=_server_ctx(cert),
            require_starttls=True,
        )
        url = f"smtp://127.0.0.1:{port}"
    else:
        controller = Controller(
            inbox, hostname="127.0.0.1", port=port, ssl_context=_server_ctx(cert)
        )
        url = f"smtps://127.0.0.1:{port}"
    controller.start()
    yield url, inbox
    controller.stop()


@pytest.mark.parametrize(
    "relay",
    [("starttls", 0), ("smtps", 0), ("starttls", 1)],
    indirect=True,
    ids=["starttls", "smtps", "starttls-retry"],
)
def test_login_code_over_tls(
    tmp_path: Path, relay: tuple[str, Inbox], cert: tuple[Path, Path]
) -> None:
    url, inbox = relay
    env = {"PADDOCK_AUTH": "on", "PADDOCK_SMTP_URL": url, "PADDOCK_SMTP_CA_FILE": str(cert[0])}
    with Stack(tmp_path, env=env) as st:
        v1 = Client(st, inbox=inbox)
        result = v1.login("tls@example.com")
        assert result["email"] == "tls@example.com"
        assert len(inbox.to("tls@example.com")) == 1


@pytest.mark.parametrize("relay", [("starttls", 0)], indirect=True)
def test_an_untrusted_certificate_gets_no_mail(tmp_path: Path, relay: tuple[str, Inbox]) -> None:
    url, inbox = relay
    with Stack(tmp_path, env={"PADDOCK_AUTH": "on", "PADDOCK_SMTP_URL": url}) as st:
        v1 = Client(st, inbox=inbox)
        assert (
            v1.req("POST", "/v1/auth/login", json={"email": "mitm@example.com"}).status_code == 200
        )
        deadline = time.monotonic() + 20
        while "CERTIFICATE_VERIFY_FAILED" not in st.log("control") and (
            time.monotonic() < deadline
        ):
            time.sleep(0.2)
        assert "CERTIFICATE_VERIFY_FAILED" in st.log("control")
        assert inbox.to("mitm@example.com") == []
