"""A host worker killed with SIGKILL while a sandbox prints: the restarted worker attaches to
the sandbox's supervisor again and follows the process from where the stored output ends
(the supervisor kept what was printed meanwhile in its replay ring), so the output has every
line exactly once, on both streams, and its exit code."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from devstack.stack import Stack
from shared.output import ProcessLog
from tests.integration.client import Client, wait_until

HOST = "solo"
# 300 lines on stdout and 300 on stderr over a few seconds; half of each line is printed
# before a pause, so the worker dies between the halves of some line.
PRINTER = (
    'for i in $(seq 1 300); do printf \'%s\' "$i"; sleep 0.005; echo; echo "e$i" >&2; done; exit 7'
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"PADDOCK_SANDBOX_BACKEND": "supervisor"}
    with Stack(tmp_path_factory.mktemp("supervisor-restart"), hosts=(HOST,), env=env) as s:
        yield s


def test_a_worker_killed_mid_output_is_followed_again_with_every_line_once(stack: Stack) -> None:
    api = Client(stack)
    sid = api.sandbox()
    pid = api.start(sid, PRINTER).json()["processID"]

    def printed() -> int:
        return len(api.req("GET", f"/sessions/{sid}/processes/{pid}").json()["stdout"])

    wait_until(lambda: printed() >= 20, "the first lines")
    stack.stop_process(f"worker-{HOST}", signal.SIGKILL)
    stack.start_host(HOST)

    def finished() -> dict[str, object] | None:
        out = api.req("GET", f"/sessions/{sid}/processes/{pid}").json()
        return out if out["finished"] else None

    out = wait_until(finished, "the process's end", timeout=90)
    stdout = [line["line"] for line in out["stdout"]]
    stderr = [line["line"] for line in out["stderr"]]
    assert stdout == [str(i) for i in range(1, 301)]
    assert stderr == [f"e{i}" for i in range(1, 301)]
    assert ProcessLog(stack.redis).info(sid, pid)["exit_code"] == "7"  # (the E2B answer has none)
    # The sandbox goes on as before, on the new worker.
    assert api.run(sid, "echo after")["stdout"][0]["line"] == "after"
