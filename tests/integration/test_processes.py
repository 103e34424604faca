"""E2B process routes over real HTTP: wait, polling, stdin, stop, env, rootdir, concurrency."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from shared import keys
from tests.integration.client import Client, stderr_lines, stdout_lines


def test_echo_with_wait_matches_the_seed(api: Client) -> None:
    sid = api.sandbox("Nodejs")
    before = time.time_ns()
    r = api.req(
        "POST", f"/sessions/{sid}/processes?wait=true", json={"cmd": "echo 22", "rootdir": "/"}
    )
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"stdout", "stderr", "processID", "finished"}
    assert body["finished"] is True
    assert body["stderr"] == []
    assert re.fullmatch(r"[A-Za-z0-9]{12}", body["processID"])
    [line] = body["stdout"]
    assert set(line) == {"type", "line", "timestamp"}
    assert line["type"] == "Stdout" and line["line"] == "22"
    assert before <= line["timestamp"] <= time.time_ns()  # nanoseconds


def test_stderr_lines_are_typed_stderr(api: Client, sid: str) -> None:
    out = api.run(sid, "echo out; echo err1 >&2; echo err2 >&2; printf 'no-newline'")
    assert stdout_lines(out) == ["out", "no-newline"]
    assert stderr_lines(out) == ["err1", "err2"]
    assert {o["type"] for o in out["stdout"]} == {"Stdout"}
    assert {o["type"] for o in out["stderr"]} == {"Stderr"}


def test_env_vars_and_rootdir_are_honoured(api: Client, sid: str) -> None:
    out = api.run(
        sid,
        'echo "$GREETING $WHO"; pwd; id -un',
        envVars={"GREETING": "hello", "WHO": "wörld"},
        rootdir="/tmp",
    )
    assert stdout_lines(out) == ["hello wörld", "/tmp", "user"]
    assert stdout_lines(api.run(sid, "pwd")) == ["/"]  # default rootdir


def test_missing_rootdir_is_reported(api: Client, sid: str) -> None:
    out = api.run(sid, "echo never", rootdir="/does/not/exist")
    assert stdout_lines(out) == []
    assert stderr_lines(out) == ["rootdir does not exist or is not a directory: /does/not/exist"]


def test_poll_while_running_then_wait(api: Client, sid: str) -> None:
    r = api.req(
        "POST", f"/sessions/{sid}/processes", json={"cmd": "echo first; sleep 1.5; echo second"}
    )
    assert r.status_code == 200
    pid = r.json()["processID"]
    assert r.json()["finished"] is False
    deadline = time.monotonic() + 10
    while True:
        polled = api.req("GET", f"/sessions/{sid}/processes/{pid}").json()
        if stdout_lines(polled) == ["first"] or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert polled["finished"] is False
    assert stdout_lines(polled) == ["first"]
    done = api.req("GET", f"/sessions/{sid}/processes/{pid}?wait=True").json()
    assert done["finished"] is True
    assert stdout_lines(done) == ["first", "second"]  # cumulative
    # Still readable after it exited by itself.
    again = api.req("GET", f"/sessions/{sid}/processes/{pid}").json()
    assert again == done


def test_stdin_reaches_cat_raw(api: Client, sid: str) -> None:
    pid = api.req("POST", f"/sessions/{sid}/processes", json={"cmd": "cat"}).json()["processID"]
    for chunk in ("hello ", "world\n", "no newline added"):
        r = api.req("POST", f"/sessions/{sid}/processes/{pid}/stdin", json={"stdin": chunk})
        assert r.status_code == 204
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        polled = api.req("GET", f"/sessions/{sid}/processes/{pid}").json()
        if stdout_lines(polled) == ["hello world"]:
            break
        time.sleep(0.05)
    assert stdout_lines(polled) == ["hello world"]  # the last chunk has no newline yet
    r = api.req("DELETE", f"/sessions/{sid}/processes/{pid}?results=true")
    assert stdout_lines(r.json()) == ["hello world", "no newline added"]


def test_stdin_reaches_read(api: Client, sid: str) -> None:
    pid = api.req(
        "POST", f"/sessions/{sid}/processes", json={"cmd": 'read -r name; echo "hi $name"'}
    ).json()["processID"]
    api.req("POST", f"/sessions/{sid}/processes/{pid}/stdin", json={"stdin": "paddock\n"})
    out = api.req("GET", f"/sessions/{sid}/processes/{pid}?wait=true").json()
    assert out["finished"] is True
    assert stdout_lines(out) == ["hi paddock"]


def test_stop_with_results_kills_the_group(api: Client, sid: str) -> None:
    pid = api.req(
        "POST",
        f"/sessions/{sid}/processes",
        json={"cmd": "echo started; sleep 600 & sleep 600; echo never"},
    ).json()["processID"]
    _wait_for_line(api, sid, pid, "started")
    r = api.req("DELETE", f"/sessions/{sid}/processes/{pid}?results=True")
    assert r.status_code == 200
    body = r.json()
    assert body["processID"] == pid and body["finished"] is True
    assert stdout_lines(body) == ["started"]
    # The whole process group is gone, including the background sleep.
    assert "sleep 600" not in " ".join(stdout_lines(api.run(sid, "ps -eo args")))
    # Stopped processes are forgotten.
    assert api.req("GET", f"/sessions/{sid}/processes/{pid}").status_code == 204


def test_stop_without_results(api: Client, sid: str) -> None:
    pid = api.req("POST", f"/sessions/{sid}/processes", json={"cmd": "sleep 600"}).json()[
        "processID"
    ]
    for query in ("", "?results=false"):
        r = api.req("DELETE", f"/sessions/{sid}/processes/{pid}{query}")
        assert r.status_code == 204 and r.content == b""
    assert api.req("GET", f"/sessions/{sid}/processes/{pid}").status_code == 204


def test_unknown_process_answers_204(api: Client, sid: str) -> None:
    for method, path, kw in [
        ("GET", "/processes/AAAAAAAAAAAA", {}),
        ("GET", "/processes/AAAAAAAAAAAA?wait=true", {}),
        ("DELETE", "/processes/AAAAAAAAAAAA?results=true", {}),
        ("POST", "/processes/AAAAAAAAAAAA/stdin", {"json": {"stdin": "x"}}),
    ]:
        r = api.req(method, f"/sessions/{sid}{path}", **kw)
        assert r.status_code == 204, (method, path, r.text)
        assert r.content == b""


@pytest.mark.parametrize(
    ("query", "body", "field"),
    [
        ("", b"not json", "requestBody"),
        ("", b"{}", "requestBody.cmd"),
        ("", b'{"cmd": 5}', "requestBody.cmd"),
        ("", b'{"cmd": "true", "envVars": {"A": 1}}', "requestBody.envVars"),
        ("", b'{"cmd": "true", "envVars": ["A"]}', "requestBody.envVars"),
        ("", b'{"cmd": "true", "rootdir": false}', "requestBody.rootdir"),
        ("", b'{"cmd": "true", "timeout": 5}', "requestBody.timeout"),
        ("?wait=maybe", b'{"cmd": "true"}', "wait"),
    ],
)
def test_bad_process_input_is_422_and_starts_nothing(
    api: Client, query: str, body: bytes, field: str
) -> None:
    sid = api.sandbox("Bash")
    r = api.req(
        "POST",
        f"/sessions/{sid}/processes{query}",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 422, r.text
    assert r.json()["message"] == "Validation Failed"
    assert any(k == field or k.startswith(field + ".") for k in r.json()["details"]), r.json()
    assert api.stack.redis.scard(keys.sandbox_processes(sid)) == 0
    api.req("DELETE", f"/sessions/{sid}")


def test_bad_stdin_and_results_params(api: Client, sid: str) -> None:
    pid = api.req("POST", f"/sessions/{sid}/processes", json={"cmd": "cat"}).json()["processID"]
    r = api.req("POST", f"/sessions/{sid}/processes/{pid}/stdin", json={"stdin": 3})
    assert r.status_code == 422 and "requestBody.stdin" in r.json()["details"]
    r = api.req("DELETE", f"/sessions/{sid}/processes/{pid}?results=yes")
    assert r.status_code == 422 and "results" in r.json()["details"]
    # Still running and still ours after the bad requests.
    assert api.req("GET", f"/sessions/{sid}/processes/{pid}").json()["finished"] is False
    api.req("DELETE", f"/sessions/{sid}/processes/{pid}")


def test_fifty_concurrent_processes_across_five_sandboxes(api: Client) -> None:
    sandboxes = [api.sandbox("Bash") for _ in range(5)]
    jobs = [(sandboxes[i % 5], i) for i in range(50)]

    def run(job: tuple[str, int]) -> tuple[int, dict]:
        s, i = job
        cmd = f"for n in $(seq 1 200); do echo job{i}-line$n; done; sleep 2; echo job{i}-done"
        r = api.req("POST", f"/sessions/{s}/processes?wait=true", json={"cmd": cmd})
        assert r.status_code == 200, r.text
        return i, r.json()

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(run, jobs))
    assert len(results) == 50
    for i, out in results:
        assert out["finished"] is True
        assert stdout_lines(out) == [f"job{i}-line{n}" for n in range(1, 201)] + [f"job{i}-done"]
    for s in sandboxes:
        api.req("DELETE", f"/sessions/{s}")


def test_long_running_process_holds_no_worker_slot(api: Client, sid: str) -> None:
    # More sleepers than the worker has threads: the next command still answers at once.
    pids = [
        api.req("POST", f"/sessions/{sid}/processes", json={"cmd": "sleep 600"}).json()["processID"]
        for _ in range(12)
    ]
    assert stdout_lines(api.run(sid, "echo responsive")) == ["responsive"]
    for pid in pids:
        assert api.req("DELETE", f"/sessions/{sid}/processes/{pid}").status_code == 204


def test_output_cap_is_reported_not_silent(tmp_path_factory: pytest.TempPathFactory) -> None:
    from devstack.stack import Stack

    with Stack(tmp_path_factory.mktemp("cap"), env={"PADDOCK_MAX_OUTPUT_BYTES": "4k"}) as st:
        a = Client(st)
        s = a.sandbox("Bash")
        out = a.run(s, "seq 1 5000")
        lines = stdout_lines(out)
        assert 0 < len(lines) < 5000
        assert lines == [str(n) for n in range(1, len(lines) + 1)]
        assert any("output truncated" in x for x in stderr_lines(out))


def _wait_for_line(api: Client, sid: str, pid: str, line: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if line in stdout_lines(api.req("GET", f"/sessions/{sid}/processes/{pid}").json()):
            return
        time.sleep(0.05)
    raise AssertionError(f"{line!r} never appeared")
