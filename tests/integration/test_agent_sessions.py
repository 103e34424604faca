"""Agent sessions with the ``shell`` agent over a real WebSocket: the protocol, auth and close
codes, limits, cancel, resume without loss, secrets kept out of the sandbox, expiry."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import time
from collections.abc import Iterator

import pytest

from devstack.stack import Stack
from shared import keys
from tests.integration.client import Client
from tests.integration.session_helpers import close_code, new_tenant, recv, until, ws_connect

LLM_KEY = "sk-test-NEVER-IN-SANDBOX-" + "7" * 16


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"PADDOCK_AUTH": "on", "PADDOCK_WS_MESSAGES_PER_10S": "40"}
    with Stack(tmp_path_factory.mktemp("ws"), env=env) as st:
        yield st


@pytest.fixture(scope="module")
def client(stack: Stack) -> Client:
    c = Client(stack, new_tenant(stack, "wsuser"), bearer=True)
    c.bundle("llm", {"LLM_API_KEY": LLM_KEY})
    c.bundle("tools", {"GREETING": "hello-from-bundle"})
    return c


@pytest.fixture
def session(client: Client) -> Iterator[dict]:
    s = client.agent_session(secrets=["llm", "tools"], user_id="usr_abc")
    yield s
    client.req("DELETE", f"/v1/sessions/{s['chat_session_id']}")


def test_create_answers_the_seed_shape(client: Client, stack: Stack) -> None:
    s = client.agent_session(secrets=["llm"], user_id="usr_abc")
    assert set(s) == {"chat_session_id", "jwt", "connect_url", "expires_at"}
    sid = s["chat_session_id"]
    assert sid.startswith("ses_")
    assert s["connect_url"] == f"ws://127.0.0.1:{stack.port}/v1/sessions/{sid}/ws"
    got = client.req("GET", f"/v1/sessions/{sid}").json()
    assert got["state"] == "running" and got["user_id"] == "usr_abc"
    assert got["template"] == "standard" and got["agent"] == {"kind": "shell"}
    assert LLM_KEY not in json.dumps(got)
    sandboxes = client.req("GET", "/v1/sandboxes").json()["sandboxes"]
    assert got["sandbox_id"] in [x["sandbox_id"] for x in sandboxes]
    assert client.req("DELETE", f"/v1/sessions/{sid}").status_code == 204


@pytest.mark.parametrize("query_token", [False, True])
def test_task_over_websocket(session: dict, query_token: bool) -> None:
    with ws_connect(session["connect_url"], session["jwt"], query_token=query_token) as ws:
        ready = recv(ws)
        assert ready == {"type": "ready", "session_id": session["chat_session_id"], "last_seq": 0}
        ws.send(
            json.dumps({"type": "task", "prompt": "touch a.txt b.txt && ls /workspace", "id": "t1"})
        )
        frames = until(ws, "exit")
    kinds = [f["type"] for f in frames]
    assert kinds[0] == "task_started" and kinds[-1] == "exit"
    assert {f["task_id"] for f in frames} == {"t1"}
    assert "".join(f["data"] for f in frames if f["type"] == "stdout") == "a.txt\nb.txt\n"
    assert frames[-1]["exit_code"] == 0 and frames[-1]["stop_reason"] == "end_turn"
    seqs = [f["seq"] for f in frames]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


def test_tasks_queue_in_order_and_failures_have_exit_codes(session: dict) -> None:
    with ws_connect(session["connect_url"], session["jwt"]) as ws:
        recv(ws)
        for i, cmd in enumerate(["sleep 1; echo one", "echo two >&2; exit 3", "echo three"]):
            ws.send(json.dumps({"type": "task", "prompt": cmd, "id": f"q{i}"}))
        exits, outputs = [], []
        while len(exits) < 3:
            f = recv(ws)
            if f["type"] == "exit":
                exits.append((f["task_id"], f["exit_code"]))
            elif f["type"] in ("stdout", "stderr"):
                outputs.append((f["task_id"], f["type"], f["data"]))
    assert exits == [("q0", 0), ("q1", 3), ("q2", 0)]
    assert outputs == [
        ("q0", "stdout", "one\n"),
        ("q1", "stderr", "two\n"),
        ("q2", "stdout", "three\n"),
    ]


def test_bad_frames_get_error_frames_and_the_socket_stays_open(session: dict) -> None:
    with ws_connect(session["connect_url"], session["jwt"]) as ws:
        recv(ws)
        ws.send("not json")
        assert recv(ws)["code"] == "invalid_frame"
        ws.send(json.dumps({"type": "dance"}))
        err = recv(ws)
        assert err["type"] == "error" and err["code"] == "unknown_type"
        ws.send(json.dumps({"type": "task", "prompt": "x" * (64 * 1024 + 1)}))
        assert recv(ws)["code"] == "prompt_too_large"
        ws.send(json.dumps({"type": "task", "prompt": 5}))
        assert recv(ws)["code"] == "invalid_task"
        ws.send(json.dumps({"type": "ping"}))
        assert recv(ws) == {"type": "pong"}
        ws.send(json.dumps({"type": "task", "prompt": "echo fine"}))
        assert until(ws, "exit")[-1]["exit_code"] == 0


def test_close_codes(client: Client, session: dict) -> None:
    other = client.agent_session(secrets=["llm"])
    ws = ws_connect(session["connect_url"], "not-a-token")
    assert close_code(ws) == 4401
    ws = ws_connect(session["connect_url"], other["jwt"])  # token of another session
    assert close_code(ws) == 4403
    ws = ws_connect(session["connect_url"])  # no token at all
    assert close_code(ws) == 4401
    # Ended: open sockets are closed with 4404, new ones refused with 4404.
    live = ws_connect(other["connect_url"], other["jwt"])
    recv(live)
    assert client.req("DELETE", f"/v1/sessions/{other['chat_session_id']}").status_code == 204
    assert close_code(live) == 4404
    assert close_code(ws_connect(other["connect_url"], other["jwt"])) == 4404


def test_too_many_messages_is_4429(session: dict) -> None:
    with ws_connect(session["connect_url"], session["jwt"]) as ws:
        recv(ws)
        for _ in range(45):
            ws.send(json.dumps({"type": "ping"}))
        assert close_code(ws) == 4429


def test_too_many_connections_is_4429(session: dict) -> None:
    conns = [ws_connect(session["connect_url"], session["jwt"]) for _ in range(5)]
    for c in conns:
        assert recv(c)["type"] == "ready"
    assert close_code(ws_connect(session["connect_url"], session["jwt"])) == 4429
    for c in conns:
        c.close()


def test_cancel_ends_the_task_and_kills_its_processes(session: dict) -> None:
    with ws_connect(session["connect_url"], session["jwt"]) as ws:
        recv(ws)
        ws.send(
            json.dumps({"type": "task", "prompt": "echo go; sleep 600 & sleep 600", "id": "long"})
        )
        until(ws, "stdout")
        ws.send(json.dumps({"type": "cancel"}))
        end = until(ws, "exit")[-1]
        assert end["task_id"] == "long" and end["stop_reason"] == "cancelled"
        ws.send(
            json.dumps(
                {"type": "task", "prompt": "ps -eo args | grep -c '^sleep 600'", "id": "check"}
            )
        )
        frames = until(ws, "exit")
        assert "".join(f["data"] for f in frames if f["type"] == "stdout") == "0\n"


def test_reconnect_with_last_seq_loses_and_repeats_nothing(session: dict) -> None:
    script = "for i in $(seq 1 60); do echo line$i; sleep 0.05; done"
    seen: list[dict] = []
    ws = ws_connect(session["connect_url"], session["jwt"])
    recv(ws)
    ws.send(json.dumps({"type": "task", "prompt": script, "id": "resume"}))
    while len([f for f in seen if f["type"] == "stdout"]) < 5:
        seen.append(recv(ws))
    ws.close()  # in the middle of the task
    time.sleep(0.5)
    ws = ws_connect(session["connect_url"], session["jwt"], last_seq=seen[-1]["seq"])
    assert recv(ws)["type"] == "ready"
    seen += until(ws, "exit")
    ws.close()
    seqs = [f["seq"] for f in seen]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # no gap, no repeat
    data = "".join(f["data"] for f in seen if f["type"] == "stdout")
    assert data == "".join(f"line{i}\n" for i in range(1, 61))


def test_events_history_pages(client: Client, session: dict) -> None:
    with ws_connect(session["connect_url"], session["jwt"]) as ws:
        recv(ws)
        ws.send(json.dumps({"type": "task", "prompt": "seq 1 3"}))
        live = until(ws, "exit")
    sid = session["chat_session_id"]
    page = client.req("GET", f"/v1/sessions/{sid}/events?after=0").json()
    assert page["events"] == live and page["has_more"] is False
    assert page["next_after"] == live[-1]["seq"]
    later = client.req("GET", f"/v1/sessions/{sid}/events?after={live[1]['seq']}").json()
    assert later["events"] == live[2:]
    assert client.req("GET", f"/v1/sessions/{sid}/events?after=-1").status_code == 400


def test_llm_key_never_reaches_the_sandbox(session: dict) -> None:
    probe = (
        f"env; echo ---; cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n'; echo ---; "
        f"grep -rIl -- '{LLM_KEY[:20]}' / 2>/dev/null | head -5; echo done"
    )
    # Build the needle in the shell so the command line itself doesn't carry the key.
    with ws_connect(session["connect_url"], session["jwt"]) as ws:
        recv(ws)
        ws.send(
            json.dumps(
                {"type": "task", "prompt": probe.replace(LLM_KEY[:20], "sk-test-NEVER-IN-SAN")}
            )
        )
        frames = until(ws, "exit", timeout=120)
    out = "".join(f.get("data", "") for f in frames if f["type"] in ("stdout", "stderr"))
    assert "GREETING=hello-from-bundle" in out
    assert LLM_KEY not in out and "NEVER-IN-SANDBOX" not in out
    assert "LLM_API_KEY" not in out
    assert out.rstrip().endswith("done")


def test_rotation_is_announced_without_values(client: Client) -> None:
    client.bundle("rotating", {"TOKEN": "v1-secret-value"})
    s = client.agent_session(secrets=["rotating"])
    with ws_connect(s["connect_url"], s["jwt"]) as ws:
        recv(ws)
        r = client.req(
            "PUT", "/v1/tenants/me/secrets/rotating", json={"values": {"TOKEN": "v2-secret-value"}}
        )
        assert r.status_code == 200
        frame = recv(ws)
        assert frame["type"] == "secrets_updated"
        assert frame["name"] == "rotating" and frame["version"] == 2
        assert "secret-value" not in json.dumps(frame)
        ws.send(json.dumps({"type": "task", "prompt": "echo $TOKEN"}))
        frames = until(ws, "exit")
        assert "".join(f["data"] for f in frames if f["type"] == "stdout") == "v2-secret-value\n"
    r = client.req("DELETE", "/v1/tenants/me/secrets/rotating")
    assert r.status_code == 409  # in use by a running session
    client.req("DELETE", f"/v1/sessions/{s['chat_session_id']}")
    assert client.req("DELETE", "/v1/tenants/me/secrets/rotating").status_code == 204


def test_expiry_ends_everything(client: Client, stack: Stack) -> None:
    s = client.agent_session(secrets=["llm"], ttl_seconds=60)
    sid = s["chat_session_id"]
    sandbox = client.req("GET", f"/v1/sessions/{sid}").json()["sandbox_id"]
    with ws_connect(s["connect_url"], s["jwt"]) as ws:
        recv(ws)
        ws.send(json.dumps({"type": "task", "prompt": "sleep 600", "id": "doomed"}))
        until(ws, "task_started")
        # Bring the end forward instead of waiting a minute.
        now = time.time()
        stack.redis.hset(keys.session(sid), "expires_at", now)
        stack.redis.zadd(keys.session_expiry(), {sid: now})
        stack.redis.zadd(keys.expiry_index(), {sandbox: now})
        assert close_code(ws, timeout=30) == 4404
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(
        c.labels["paddock.sandbox"] == sandbox for c in stack.containers()
    ):
        time.sleep(0.2)
    assert not any(c.labels["paddock.sandbox"] == sandbox for c in stack.containers())
    assert client.req("GET", f"/v1/sessions/{sid}").json()["state"] == "ended"
    assert client.req("GET", f"/sessions/{sandbox}").status_code == 404


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"agent": {"kind": "wizard"}}, 400, "invalid_request"),
        ({"agent": {"kind": "shell"}, "template": "Cobol"}, 400, "invalid_request"),
        ({"agent": {"kind": "deictic"}, "secrets": ["llm"]}, 400, "invalid_request"),
        (
            {
                "agent": {"kind": "deictic"},
                "llm": {"vendor": "acme", "model": "x"},
                "secrets": ["llm"],
            },
            400,
            "invalid_request",
        ),
        (
            {
                "agent": {"kind": "deictic"},
                "llm": {"vendor": "openai", "model": "bad model!"},
                "secrets": ["llm"],
            },
            400,
            "invalid_request",
        ),
        (
            {
                "agent": {"kind": "deictic"},
                "llm": {"vendor": "openai", "model": "gpt-4o"},
                "secrets": ["tools"],
            },
            400,
            "invalid_request",
        ),
        ({"agent": {"kind": "shell"}, "secrets": ["nope"]}, 404, "secret_not_found"),
        ({"agent": {"kind": "shell"}, "secrets": ["llm", "llm-dup"]}, 400, "bad_request"),
        (
            {"agent": {"kind": "shell"}, "secrets": [f"b{i}" for i in range(11)]},
            400,
            "invalid_request",
        ),
        ({"agent": {"kind": "shell"}, "ttl_seconds": 7201}, 400, "invalid_request"),
        (
            {
                "agent": {"kind": "deictic"},
                "secrets": ["llm"],
                "llm": {"vendor": "openai", "model": "gpt-4o", "base_url": "http://127.0.0.1:9/v1"},
            },
            400,
            "base_url_not_allowed",
        ),
        (
            {
                "agent": {"kind": "deictic"},
                "secrets": ["llm"],
                "llm": {"vendor": "openai", "model": "gpt-4o", "base_url": "http://10.1.2.3/v1"},
            },
            400,
            "base_url_not_allowed",
        ),
    ],
)
def test_bad_session_requests_create_nothing(
    client: Client, stack: Stack, body: dict, status: int, code: str
) -> None:
    if not client.req("GET", "/v1/tenants/me/secrets/llm-dup").ok:
        client.bundle("llm-dup", {"LLM_API_KEY": "other"})
    before = {c.id for c in stack.containers()}
    r = client.req("POST", "/v1/sessions", json=body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    # No container was made (one an earlier test deletes may go meanwhile).
    assert {c.id for c in stack.containers()} <= before


def test_agent_commands_time_out(tmp_path_factory: pytest.TempPathFactory) -> None:
    env = {"PADDOCK_AUTH": "on", "PADDOCK_AGENT_COMMAND_TIMEOUT": "2"}
    with Stack(tmp_path_factory.mktemp("cmd-timeout"), env=env) as st:
        c = Client(st, new_tenant(st, "timeout"), bearer=True)
        s = c.agent_session()
        with ws_connect(s["connect_url"], s["jwt"]) as ws:
            recv(ws)
            ws.send(json.dumps({"type": "task", "prompt": "echo before; sleep 60 & sleep 60"}))
            frames = until(ws, "exit", timeout=30)
            assert frames[-1]["exit_code"] == 124
            assert "timed out after 2s" in "".join(
                f["data"] for f in frames if f["type"] == "stderr"
            )
            ws.send(json.dumps({"type": "task", "prompt": "ps -eo args | grep -c '^sleep 60'"}))
            frames = until(ws, "exit")
            assert "".join(f["data"] for f in frames if f["type"] == "stdout") == "0\n"


def test_deleting_the_sandbox_ends_its_session(client: Client) -> None:
    s = client.agent_session()
    sid = s["chat_session_id"]
    sandbox = client.req("GET", f"/v1/sessions/{sid}").json()["sandbox_id"]
    with ws_connect(s["connect_url"], s["jwt"]) as ws:
        recv(ws)
        assert client.req("DELETE", f"/v1/sandboxes/{sandbox}").status_code == 204
        assert close_code(ws) == 4404
    assert client.req("GET", f"/v1/sessions/{sid}").json()["state"] == "ended"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_worker_restart_closes_the_running_task_and_resumes_the_queue(
    tmp_path_factory: pytest.TempPathFactory, sig: int
) -> None:
    with Stack(
        tmp_path_factory.mktemp("restart"), hosts=("solo",), env={"PADDOCK_AUTH": "on"}
    ) as st:
        c = Client(st, new_tenant(st, "restart"), bearer=True)
        s = c.agent_session()
        with ws_connect(s["connect_url"], s["jwt"]) as ws:
            recv(ws)
            ws.send(json.dumps({"type": "task", "prompt": "echo go; sleep 600", "id": "lost"}))
            until(ws, "stdout")
            ws.send(json.dumps({"type": "task", "prompt": "echo after", "id": "next"}))
            st.stop_process("worker-solo", sig)
            st.start_host("solo")
            frames = until(ws, "exit", timeout=60)
            assert [(f["type"], f.get("code")) for f in frames[-2:]] == [
                ("error", "worker_restarted"),
                ("exit", None),
            ]
            assert frames[-1]["task_id"] == "lost" and frames[-1]["stop_reason"] == "error"
            frames = until(ws, "exit", timeout=60)
            assert frames[-1]["task_id"] == "next" and frames[-1]["exit_code"] == 0
            assert "".join(f["data"] for f in frames if f["type"] == "stdout") == "after\n"


def test_server_pings_and_drops_a_silent_client(tmp_path_factory: pytest.TempPathFactory) -> None:
    env = {"PADDOCK_AUTH": "on", "PADDOCK_WS_PING_INTERVAL": "1"}
    with Stack(tmp_path_factory.mktemp("heartbeat"), env=env) as st:
        c = Client(st, new_tenant(st, "heartbeat"), bearer=True)
        s = c.agent_session()
        # A bare client that completes the handshake and then never answers anything.
        path = s["connect_url"].split(str(st.port), 1)[1] + "?token=" + s["jwt"]
        sock = socket.create_connection(("127.0.0.1", st.port), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{st.port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        data = b""
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        head = data.split(b"\r\n\r\n", 1)[0]
        assert head.startswith(b"HTTP/1.1 101")
        frames = _frames(data.split(b"\r\n\r\n", 1)[1])
        opcodes = [op for op, _ in frames]
        assert 0x9 in opcodes  # the server pinged
        assert opcodes[-1] == 0x8  # ... and, unanswered, closed the connection
        sock.close()


def _frames(buf: bytes) -> list[tuple[int, bytes]]:
    """Unmasked server frames: (opcode, payload)."""
    out = []
    while len(buf) >= 2:
        op, n = buf[0] & 0x0F, buf[1] & 0x7F
        pos = 2
        if n == 126:
            n, pos = int.from_bytes(buf[2:4], "big"), 4
        elif n == 127:
            n, pos = int.from_bytes(buf[2:10], "big"), 10
        out.append((op, buf[pos : pos + n]))
        buf = buf[pos + n :]
    return out
