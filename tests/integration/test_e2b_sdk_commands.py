"""The official E2B SDK's ``sandbox.commands`` and ``sandbox.pty``, unchanged, against Paddock's
envd process service (web/api/envd/process.py): only E2B_API_URL, E2B_API_KEY and
E2B_SANDBOX_URL, all loopback. One sandbox for the module; no assertion on how fast anything
is: where a test needs "while it runs", the command waits for a file the test writes.

Runs on the supervisor backend (the docker backend has no terminals)."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Iterator

import pytest
from e2b import (
    AsyncSandbox,
    AuthenticationException,
    CommandExitException,
    NotFoundException,
    PtySize,
    Sandbox,
    SandboxException,
    TimeoutException,
)

from devstack.stack import Stack
from shared import keys
from shared.slots import STREAMS
from tests.integration.client import wait_until
from tests.integration.e2b_helpers import sdk_env, with_wrong_token
from tests.integration.session_helpers import new_tenant

pytestmark = pytest.mark.skipif(
    os.environ.get("PADDOCK_TEST_BACKEND", "supervisor") != "supervisor",
    reason="the envd process calls are tested on the supervisor backend",
)

TENANT = "e2bcmds"
MAX_STREAMS = 4  # the tenant's (no test here holds more than two at once but the one on it)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"PADDOCK_AUTH": "on", "PADDOCK_TENANT_MAX_STREAMS": str(MAX_STREAMS)}
    with Stack(tmp_path_factory.mktemp("e2bcmds"), env=env) as st:
        yield st


@pytest.fixture(scope="module")
def sbx(stack: Stack) -> Iterator[Sandbox]:
    """A sandbox of a fresh tenant (with an env var of its own), the stack set as E2B_API_URL
    and E2B_SANDBOX_URL."""
    with sdk_env(stack, new_tenant(stack, TENANT)):
        sandbox = Sandbox.create(envs={"FROM_CREATE": "created"})
        yield sandbox
        sandbox.kill()


def _running(sbx: Sandbox) -> dict[int, list[str]]:
    return {p.pid: [p.cmd, *p.args] for p in sbx.commands.list()}


def test_run_output_exit_code_envs_and_cwd(sbx: Sandbox) -> None:
    result = sbx.commands.run("echo out; echo err >&2")
    assert (result.stdout, result.stderr, result.exit_code) == ("out\n", "err\n", 0)

    with pytest.raises(CommandExitException) as failed:
        sbx.commands.run("echo partial; echo bad >&2; exit 3")
    assert failed.value.exit_code == 3
    assert (failed.value.stdout, failed.value.stderr) == ("partial\n", "bad\n")

    sbx.files.make_dir("work/dir")
    result = sbx.commands.run(
        'echo "$FOO|$FROM_CREATE"; pwd', envs={"FOO": "bar baz"}, cwd="/home/user/work/dir"
    )
    assert result.stdout == "bar baz|created\n/home/user/work/dir\n"
    assert sbx.commands.run("pwd").stdout == "/home/user\n"  # the user's home by default
    # root runs as the sandbox user (web/api/envd/access.py).
    assert sbx.commands.run("id -un", user="root").stdout == "user\n"
    # Bytes that are not UTF-8 come as they are (the SDK decodes with replacement).
    assert sbx.commands.run(r"printf 'a\377b'").stdout == "a\ufffdb"


def test_on_stdout_streams_while_the_command_runs(sbx: Sandbox) -> None:
    # The command ends only once the test saw its first line and wrote the file it waits for:
    # output that came only at the end would leave it waiting until its timeout.
    seen: list[str] = []

    def on_stdout(text: str) -> None:
        seen.append(text)
        if "first" in text and not sbx.files.exists("streamed.go"):
            sbx.files.write("streamed.go", "")

    cmd = "echo first; while [ ! -e ~/streamed.go ]; do sleep 0.05; done; echo last"
    result = sbx.commands.run(cmd, on_stdout=on_stdout, timeout=120)
    assert result.stdout == "first\nlast\n"
    assert "".join(seen) == "first\nlast\n"


def test_timeout_kills_the_command(sbx: Sandbox) -> None:
    with pytest.raises(TimeoutException):
        sbx.commands.run("echo started > ~/timeout.mark; sleep 600", timeout=2)
    assert sbx.files.exists("timeout.mark")
    # Its group was killed when the call's deadline passed, as envd does.
    wait_until(
        lambda: not any("sleep 600" in " ".join(c) for c in _running(sbx).values()),
        "the timed-out command to be killed",
    )
    everything = sbx.commands.run(r"cat /proc/[0-9]*/cmdline | tr '\0' ' '").stdout
    assert "sleep 600" not in everything


def test_background_stdin_wait_kill_and_list(sbx: Sandbox) -> None:
    cat = sbx.commands.run("cat", background=True, stdin=True)
    assert _running(sbx)[cat.pid] == ["/bin/bash", "-l", "-c", "cat"]
    sbx.commands.send_stdin(cat.pid, "hello\n")
    sbx.commands.stream_input(cat.pid, ["stream ", b"in", "put\n"])  # one client stream
    cat.send_stdin(b"\xffbytes\n")  # not UTF-8: goes as it is
    cat.close_stdin()
    assert cat.wait().stdout == "hello\nstream input\n\ufffdbytes\n"
    assert cat.pid not in _running(sbx)

    sleeper = sbx.commands.run("sleep 600", background=True)
    assert sleeper.pid in _running(sbx)
    assert sbx.commands.kill(sleeper.pid) is True
    with pytest.raises(CommandExitException) as killed:
        sleeper.wait()
    assert killed.value.exit_code == 137  # 128 + SIGKILL
    assert sleeper.pid not in _running(sbx)
    assert sbx.commands.kill(sleeper.pid) is False  # not running any more

    # Without stdin=True there is no input to write to.
    quiet = sbx.commands.run("sleep 600", background=True)
    with pytest.raises(SandboxException):
        sbx.commands.send_stdin(quiet.pid, "x")
    assert quiet.kill() is True
    with pytest.raises(CommandExitException):
        quiet.wait()


def test_connect_to_a_running_command_after_disconnect(stack: Stack, sbx: Sandbox) -> None:
    cmd = "echo one; while [ ! -e ~/connect.go ]; do sleep 0.05; done; echo two"
    handle = sbx.commands.run(cmd, background=True, timeout=120)
    for stdout, _, _ in handle:
        if stdout and "one" in stdout:
            break
    handle.disconnect()
    # The client went away: its stream slot is given back, the command runs on.
    slots = keys.slots(STREAMS, f"usr_{TENANT}")
    wait_until(lambda: stack.redis.zcard(slots) == 0, "the stream slot to be released")
    assert handle.pid in _running(sbx)

    again = sbx.commands.connect(handle.pid, timeout=120)
    assert again.pid == handle.pid
    sbx.files.write("connect.go", "")
    # The whole output: nothing of it is lost to the client that reconnected.
    assert again.wait().stdout == "one\ntwo\n"

    with pytest.raises(NotFoundException):
        sbx.commands.connect(999_999)


def test_streams_are_bounded_per_tenant(stack: Stack, sbx: Sandbox) -> None:
    # Each Start stream holds one of the tenant's stream slots (a web worker's connection and
    # a Redis reader) for as long as the client keeps it open: past PADDOCK_TENANT_MAX_STREAMS
    # a Start is refused before anything starts, and so is a StreamInput.
    slots = keys.slots(STREAMS, f"usr_{TENANT}")
    held = [sbx.commands.run("sleep 600", background=True) for _ in range(MAX_STREAMS)]
    try:
        assert stack.redis.zcard(slots) == MAX_STREAMS
        before = _running(sbx)
        with pytest.raises(SandboxException, match="PADDOCK_TENANT_MAX_STREAMS"):
            sbx.commands.run("echo never > ~/streams.never", background=True)
        with pytest.raises(SandboxException, match="PADDOCK_TENANT_MAX_STREAMS"):
            sbx.commands.stream_input(held[0].pid, ["x"])
        assert _running(sbx) == before
        assert not sbx.files.exists("streams.never")
        held[0].disconnect()
        wait_until(lambda: stack.redis.zcard(slots) < MAX_STREAMS, "a stream slot to free")
        assert sbx.commands.run("echo again").stdout == "again\n"
    finally:
        for handle in held:
            handle.kill()
            handle.disconnect()
    wait_until(lambda: stack.redis.zcard(slots) == 0, "the stream slots to be released")


def test_config_is_paid_for_and_the_pid_table_goes_with_its_sandbox(stack: Stack) -> None:
    # The config a process was started with (kept sealed in its record, for List) counts
    # against the output budgets like the rest of the record: env vars of 200 KB each cannot
    # pile up in Redis unpaid. The sandbox's pid table goes when the sandbox does.
    other = Sandbox.create()
    try:
        big = "v" * 200_000
        handle = other.commands.run("sleep 600", background=True, envs={"BIG": big})
        table = keys.envd_processes(other.sandbox_id)
        entry = stack.redis.hget(table, f"p:{handle.pid}")
        assert entry is not None
        record = keys.process(other.sandbox_id, json.loads(entry)["id"])
        kept = stack.redis.hget(record, "envd")
        assert kept is not None and len(kept) > len(big)
        assert int(stack.redis.hget(record, "bytes") or 0) >= len(kept)
        handle.kill()
        handle.disconnect()
    finally:
        other.kill()
    wait_until(lambda: not stack.redis.exists(table), "the pid table to go with its sandbox")


def test_pty_size_input_output_and_resize(sbx: Sandbox) -> None:
    term = sbx.pty.create(PtySize(rows=24, cols=80))
    out = bytearray()
    ended = threading.Event()

    def read() -> None:
        try:
            for _, _, pty in term:
                if pty:
                    out.extend(pty)
        finally:
            ended.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    sbx.pty.send_stdin(term.pid, b"stty size; echo size-$((6*7))\n")
    wait_until(lambda: b"size-42" in out, "the terminal to answer")
    assert b"24 80" in out
    assert "/bin/bash" in _running(sbx)[term.pid][0]

    sbx.pty.resize(term.pid, PtySize(rows=30, cols=100))
    sbx.pty.send_stdin(term.pid, b"stty size; echo resized-$((6*7))\n")
    wait_until(lambda: b"resized-42" in out, "the terminal to answer after the resize")
    assert b"30 100" in out  # (only the second stty can say it)

    sbx.pty.send_stdin(term.pid, b"exit\n")
    assert ended.wait(60), "the terminal's stream did not end"
    reader.join(5)
    assert term.pid not in _running(sbx)


def test_wrong_token_and_other_tenant(stack: Stack, sbx: Sandbox) -> None:
    bad = with_wrong_token(sbx)
    with pytest.raises(AuthenticationException):
        bad.commands.run("echo no")
    with pytest.raises(AuthenticationException):
        bad.commands.list()
    other = new_tenant(stack, f"{TENANT}-other")
    with pytest.raises(NotFoundException):
        Sandbox.connect(sbx.sandbox_id, api_key=other)


def test_async_sdk(sbx: Sandbox) -> None:
    async def run() -> None:
        asbx = await AsyncSandbox.connect(sbx.sandbox_id)
        result = await asbx.commands.run("echo async; echo e >&2")
        assert (result.stdout, result.stderr) == ("async\n", "e\n")
        with pytest.raises(CommandExitException) as failed:
            await asbx.commands.run("exit 5")
        assert failed.value.exit_code == 5
        handle = await asbx.commands.run("cat", background=True, stdin=True)
        await asbx.commands.send_stdin(handle.pid, "from async\n")
        await asbx.commands.close_stdin(handle.pid)
        assert (await handle.wait()).stdout == "from async\n"

    asyncio.run(run())
