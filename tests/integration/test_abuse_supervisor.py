"""Abuse of the supervisor backend: a sandbox's own processes attack its supervisor, which runs
as their user. Whatever they do hurts only their sandbox: it is reported failed or lost with
the reason, and every other sandbox on the host keeps working as before.

- They lie on its channel: garbage and an oversized frame written into the supervisor's stdout
  (``/proc/<pid>/fd/1``, theirs to open).
- They kill it.
- They stop it (SIGSTOP): the host continues it when it does not answer.
- They flood their own output through it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from devstack.stack import Stack
from tests.integration.client import Client, wait_until
from tests.integration.session_helpers import new_tenant

PROMPT = 5.0  # another sandbox's echo; well under a second when measured
REQUEST_TIMEOUT = 60

# Prints the supervisor's pid (as the sandbox numbers it): the process whose executable is the
# mounted binary.
FIND = (
    "for p in /proc/[0-9]*; do "
    '[ "$(readlink $p/exe)" = /opt/paddock/paddock-supervisor ] && echo ${p#/proc/}; '
    "done; true"
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"PADDOCK_SANDBOX_BACKEND": "supervisor", "PADDOCK_FS_TIMEOUT": "5"}
    with Stack(tmp_path_factory.mktemp("abuse-supervisor"), env=env) as s:
        yield s


@pytest.fixture(scope="module")
def victim(stack: Stack) -> Client:
    return Client(stack, new_tenant(stack, "victim"))


@pytest.fixture(scope="module")
def victim_sid(victim: Client) -> str:
    return victim.sandbox()


def supervisor_pid(api: Client, sid: str) -> str:
    pids = api.run(sid, FIND)["stdout"]
    assert len(pids) == 1, pids
    return str(pids[0]["line"])


def assert_failed_with(api: Client, sid: str, words: str) -> None:
    """The sandbox is reported lost, with why, on both APIs; its processes say so."""

    def lost() -> bool:
        return api.req("GET", f"/v1/sandboxes/{sid}").json().get("state") == "lost"

    wait_until(lost, "the sandbox reported lost", timeout=30)
    info = api.req("GET", f"/v1/sandboxes/{sid}").json()
    assert words in (info.get("lost_reason") or ""), info
    assert api.req("GET", f"/sessions/{sid}").status_code == 404


def assert_served(victim: Client, victim_sid: str) -> None:
    assert victim.timed_echo(victim_sid) < PROMPT
    assert victim.write(victim_sid, "/home/user/v.txt", "v").status_code == 204
    assert victim.read(victim_sid, "/home/user/v.txt").json() == {"content": "v"}


@pytest.mark.parametrize(
    "lie",
    [
        pytest.param(r"printf '\377\377garbage that is no frame' ", id="garbage"),
        pytest.param(r"printf '\000\377\377\377' ", id="oversized-frame"),
        pytest.param(
            r"printf '\000\000\000\031\000\000\000\025{\"type\":\"zzz\",\"id\":1}' ",
            id="unknown-frame-type",
        ),
    ],
)
def test_a_lie_on_the_channel_fails_only_its_sandbox(
    stack: Stack, victim: Client, victim_sid: str, lie: str
) -> None:
    api = Client(stack, new_tenant(stack, "liar"))
    sid = api.sandbox()
    sleeper = api.start(sid, "sleep 600").json()["processID"]
    pid = supervisor_pid(api, sid)
    api.start(sid, f"{lie} > /proc/{pid}/fd/1")
    assert_failed_with(api, sid, "supervisor")
    out = api.req("GET", f"/sessions/{sid}/processes/{sleeper}")
    assert out.status_code == 404  # gone with its sandbox
    assert_served(victim, victim_sid)


def test_a_killed_supervisor_loses_its_sandbox_only(
    stack: Stack, victim: Client, victim_sid: str
) -> None:
    api = Client(stack, new_tenant(stack, "killer"))
    sid = api.sandbox()
    pid = supervisor_pid(api, sid)
    api.start(sid, f"kill -9 {pid}")
    assert_failed_with(api, sid, "exited")
    assert_served(victim, victim_sid)
    # The tenant's next sandbox works.
    assert api.run(api.sandbox(), "echo again")["stdout"][0]["line"] == "again"


def test_a_stopped_supervisor_is_continued_by_the_host(
    stack: Stack, victim: Client, victim_sid: str
) -> None:
    api = Client(stack, new_tenant(stack, "stopper"))
    sid = api.sandbox()
    pid = supervisor_pid(api, sid)
    api.start(sid, f"kill -STOP {pid}")
    time.sleep(0.5)
    assert_served(victim, victim_sid)
    # The sandbox's next request waits for the supervisor's answer (PADDOCK_FS_TIMEOUT), then
    # the host continues it and the request is served.
    started = time.monotonic()
    assert api.write(sid, "/home/user/after.txt", "after").status_code == 204
    assert time.monotonic() - started < REQUEST_TIMEOUT
    assert api.run(sid, "cat /home/user/after.txt")["stdout"][0]["line"] == "after"


def test_a_sandbox_flooding_its_own_output_slows_no_other(
    stack: Stack, victim: Client, victim_sid: str
) -> None:
    api = Client(stack, new_tenant(stack, "flooder"))
    sid = api.sandbox()
    floods = [api.start(sid, "yes flood-flood-flood").json()["processID"] for _ in range(3)]
    time.sleep(1.0)
    for _ in range(3):
        assert_served(victim, victim_sid)
    # Its own sandbox still answers over the same channel, and its floods stop when killed.
    assert api.timed_echo(sid) < 30
    for process_id in floods:
        assert api.req("DELETE", f"/sessions/{sid}/processes/{process_id}").status_code == 204
    assert api.req("DELETE", f"/sessions/{sid}").status_code == 204
