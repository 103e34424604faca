"""Redis across machines: the whole stack on a real redis-server that wants a password (an ACL
user, and ``requirepass`` for ``default``), then on one that speaks only TLS (rediss://, a CA of
the test's own). Every component authenticates, nothing logs the password, and a wrong password
fails with an auth error rather than silently."""

from __future__ import annotations

import datetime
import ipaddress
import json
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from devstack.stack import VENV_BIN, RedisOptions, Stack, free_port
from shared.redisconn import redis_client
from tests.fake_llm import FakeLLM
from tests.integration.client import Client, wait_until
from tests.integration.session_helpers import new_tenant, recv, until, ws_connect

# Characters a URL must percent-encode, so the encoding is exercised end to end.
PASSWORD = "pw@:/" + secrets.token_hex(12)
ADMIN_PASSWORD = "adm" + secrets.token_hex(12)
USER = "paddock"


def _no_log_names(stack: Stack, *secret_values: str) -> None:
    for log in stack.workdir.glob("*.log"):
        text = log.read_text(errors="replace")
        for value in secret_values:
            assert value not in text and quote(value, safe="") not in text, log.name


def _create_and_exec(client: Client, marker: str) -> None:
    r = client.req("POST", "/sessions", json={"envID": "Bash"})
    assert r.status_code == 200, r.text
    sid = r.json()["id"]
    r = client.req("POST", f"/sessions/{sid}/processes?wait=true", json={"cmd": f"echo {marker}"})
    assert r.status_code == 200, r.text
    assert [o["line"] for o in r.json()["stdout"]] == [marker]
    assert client.req("DELETE", f"/sessions/{sid}").status_code == 204


def _flower_sees_the_workers(stack: Stack) -> None:
    """Flower as `make up` starts it (python -m shared.broker flower): its inspector (the
    broker) and its queue view (its own Redis client) both reach this Redis."""
    port, login = free_port(), ("t", secrets.token_hex(8))
    stack._spawn(
        "flower",
        [sys.executable, "-m", "shared.broker", "flower", f"--port={port}", "--address=127.0.0.1"],
        {"FLOWER_BASIC_AUTH": ":".join(login)},
    )
    url = f"http://127.0.0.1:{port}/api"
    try:

        def sees_host() -> bool:
            try:
                r = requests.get(f"{url}/workers?refresh=1", auth=login, timeout=10)
            except requests.RequestException:
                return False
            return r.ok and any(name.startswith("host-host-a@") for name in r.json())

        wait_until(sees_host, "Flower to list the host worker", timeout=90)
        r = requests.get(f"{url}/queues/length", auth=login, timeout=10)
        assert r.status_code == 200, r.text
        assert "host.host-a" in {q["name"] for q in r.json()["active_queues"]}
        # Its banner names the broker with the password masked.
        assert ":**@127.0.0.1" in stack.log("flower")
    finally:
        stack.stop_process("flower")


# -- a password and an ACL user ----------------------------------------------------------------


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeLLM]:
    with FakeLLM() as f:
        yield f


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    options = RedisOptions(
        conf=f"requirepass {ADMIN_PASSWORD}\nuser {USER} on >{PASSWORD} ~* &* +@all\n",
        userinfo=f"{USER}:{quote(PASSWORD, safe='')}",
    )
    env = {
        "PADDOCK_AUTH": "on",
        "PADDOCK_LLM_ALLOWED_HOSTS": "127.0.0.1",
        "PADDOCK_LLM_TIMEOUT": "10",
    }
    with Stack(tmp_path_factory.mktemp("redis-auth"), env=env, redis_options=options) as st:
        yield st


@pytest.fixture(scope="module")
def client(stack: Stack) -> Client:
    return Client(stack, new_tenant(stack, "redis-auth"), bearer=True)


def test_redis_refuses_clients_without_the_password(stack: Stack) -> None:
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=stack.redis_port, socket_timeout=5).ping()
    # Every connection the stack holds is the ACL user's: web, workers, beat, Celery's broker.
    users = {c["user"] for c in stack.redis.client_list()}
    assert users == {USER}, users
    # The hosts heartbeat through it.
    assert stack.alive_hosts() == ["host-a"]


def test_sandbox_create_and_exec_over_an_authenticated_redis(stack: Stack, client: Client) -> None:
    _create_and_exec(client, "over-acl-user")
    _no_log_names(stack, PASSWORD, ADMIN_PASSWORD)


def test_agent_session_over_an_authenticated_redis(
    stack: Stack, client: Client, fake: FakeLLM
) -> None:
    client.bundle("llm", {"LLM_API_KEY": "key-redis-auth"})
    s = client.agent_session(
        agent={"kind": "deictic"},
        template="standard",
        secrets=["llm"],
        llm={"vendor": "anthropic", "model": "m", "base_url": fake.base_url("anthropic")},
    )
    fake.add(
        FakeLLM.tool("run_command", {"command": "echo agent-over-auth"}),
        FakeLLM.text("It printed agent-over-auth."),
    )
    with ws_connect(s["connect_url"], s["jwt"]) as ws:
        assert recv(ws)["type"] == "ready"
        ws.send(json.dumps({"type": "task", "prompt": "echo something"}))
        frames = until(ws, "exit", timeout=120)
    assert [f["type"] for f in frames] == ["task_started", "tool_call", "stdout", "message", "exit"]
    assert frames[2]["data"] == "agent-over-auth\n"
    assert frames[4]["exit_code"] == 0
    assert client.req("DELETE", f"/v1/sessions/{s['chat_session_id']}").status_code == 204
    _no_log_names(stack, PASSWORD, ADMIN_PASSWORD)


def test_flower_reaches_an_authenticated_redis(stack: Stack) -> None:
    _flower_sees_the_workers(stack)
    _no_log_names(stack, PASSWORD, ADMIN_PASSWORD)


def test_a_wrong_password_fails_with_an_auth_error_and_is_not_logged(
    stack: Stack, client: Client
) -> None:
    wrong = "wrong@" + secrets.token_hex(8)
    url = f"redis://{USER}:{quote(wrong, safe='')}@127.0.0.1:{stack.redis_port}/0"
    # A worker (the control one: a host worker would also set up its sandbox network): Celery
    # keeps retrying, with backoff (a Redis restarting with a new password comes back), and
    # says why each time with the password masked.
    stack._spawn(
        "worker-intruder",
        [sys.executable, "-m", "workers", "control"],
        {"PADDOCK_REDIS_URL": url, "PADDOCK_DATA_DIR": str(stack.workdir / "intruder")},
    )
    # A web replica: requests that need Redis fail (500) instead of answering wrongly.
    port = free_port()
    stack._spawn(
        "web-intruder",
        [
            str(VENV_BIN / "gunicorn"),
            "-c",
            "python:web.gunicorn_conf",
            "--bind",
            f"127.0.0.1:{port}",
        ],
        {"PADDOCK_REDIS_URL": url},
    )
    try:
        wait_until(
            lambda: "invalid username-password pair" in stack.log("worker-intruder"),
            "the worker's auth error",
            timeout=60,
        )
        assert f"redis://{USER}:**@127.0.0.1:{stack.redis_port}/0" in stack.log("worker-intruder")

        def health_names_the_auth_error() -> bool:
            try:
                r = requests.get(
                    f"http://127.0.0.1:{port}/health",
                    headers={"Accept": "application/json"},
                    timeout=30,
                )
            except requests.RequestException:
                return False
            return r.json()["status"] == "degraded" and any(
                "unreachable" in p["problem"] and "invalid username-password pair" in p["problem"]
                for p in r.json()["problems"]
            )

        # /health still answers (the process serves) and says why it is degraded.
        wait_until(
            health_names_the_auth_error,
            "/health of the second web to name the auth error",
            timeout=60,
        )
        r = requests.post(
            f"http://127.0.0.1:{port}/sessions",
            json={"envID": "Bash"},
            headers={"X-API-Key": client.key},
            timeout=60,
        )
        # 503 state_unavailable (the state store refuses it), the password in no answer.
        assert r.status_code == 503 and wrong not in r.text
        assert "AuthenticationError" in stack.log("web-intruder")
    finally:
        stack.stop_process("worker-intruder")
        stack.stop_process("web-intruder")
    _no_log_names(stack, wrong, PASSWORD, ADMIN_PASSWORD)
    # The real stack was never disturbed.
    _create_and_exec(client, "still-fine")


# -- TLS (rediss://) ------------------------------------------------------------------------


def _tls_files(directory: Path) -> Path:
    """A CA of the test's own and a server certificate for 127.0.0.1 signed by it."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def cert(
        subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name | None, ca_key: object
    ) -> x509.Certificate:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(issuer or name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )
        if issuer is None:
            builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
        else:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                False,
            )
        return builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = cert("paddock test CA", ca_key, None, ca_key)
    key = ec.generate_private_key(ec.SECP256R1())
    server = cert("127.0.0.1", key, ca.subject, ca_key)
    pem = serialization.Encoding.PEM
    (directory / "ca.pem").write_bytes(ca.public_bytes(pem))
    (directory / "cert.pem").write_bytes(server.public_bytes(pem))
    (directory / "key.pem").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    (directory / "key.pem").chmod(0o600)
    return directory


@pytest.fixture(scope="module")
def tls_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("redis-tls")
    options = RedisOptions(
        conf=f"requirepass {ADMIN_PASSWORD}\n",
        userinfo=f":{ADMIN_PASSWORD}",
        tls_dir=_tls_files(workdir / "tls"),
    )
    st = Stack(workdir, env={"PADDOCK_AUTH": "on"}, redis_options=options)
    try:
        st.start()
    except RuntimeError as exc:
        st.stop()
        if "tls" in str(exc).lower() and "redis exited" in str(exc):
            pytest.skip(f"this redis-server has no TLS built in: {str(exc)[-300:]}")
        raise
    yield st
    st.stop()


def test_whole_stack_over_rediss_with_a_verified_certificate(tls_stack: Stack) -> None:
    assert tls_stack.redis_url.startswith("rediss://:")
    _create_and_exec(Client(tls_stack, new_tenant(tls_stack, "tls"), bearer=True), "over-tls")
    _flower_sees_the_workers(tls_stack)
    _no_log_names(tls_stack, ADMIN_PASSWORD)


def test_rediss_refuses_a_server_the_ca_does_not_vouch_for(tls_stack: Stack) -> None:
    port = tls_stack.redis_port
    # Without the test's CA, the system's CAs do not trust the server: verification is on.
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        redis_client(f"rediss://:{ADMIN_PASSWORD}@127.0.0.1:{port}/0", socket_timeout=5).ping()
    # Only a URL that asks for it goes without verification.
    insecure = f"rediss://:{ADMIN_PASSWORD}@127.0.0.1:{port}/0?ssl_cert_reqs=none"
    assert redis_client(insecure, socket_timeout=5).ping()
    # Plain redis:// to the TLS port gets nowhere.
    with pytest.raises(redis.ConnectionError):
        redis_client(f"redis://:{ADMIN_PASSWORD}@127.0.0.1:{port}/0", socket_timeout=3).ping()
