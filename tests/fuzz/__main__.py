"""``python -m tests.fuzz [--examples N] [--seed S] [--workers W]``: start a private stack
(auth on, small quotas), make two tenants and a few real objects, fuzz both OpenAPI documents,
print the counts per document and every distinct failure; exit 1 on any failure or 5xx, or
when fewer than ``--min-requests`` were sent."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import requests
from schemathesis import GenerationMode

from devstack.stack import Stack
from tests.fuzz import runner
from tests.integration.accounts_helpers import smtp_server
from tests.integration.client import Client

# Small quotas so generated creates reach 429 (documented) instead of filling the machine;
# short waits so a generated command that never ends (`cat` on wait=true) answers in seconds.
STACK_ENV = {
    "PADDOCK_AUTH": "on",
    "PADDOCK_TENANT_MAX_SANDBOXES": "4",
    "PADDOCK_TENANT_MAX_SESSIONS": "2",
    "PADDOCK_SANDBOX_NETWORK": "none",
    "PADDOCK_SANDBOX_DISK": "0",
    "PADDOCK_WAIT_TIMEOUT": "5",
    "PADDOCK_TASK_TIMEOUT": "30",
}
DOCUMENTS = (("e2b", "/openapi.json"), ("v1", "/v1/openapi.json"))


def _fixtures(
    stack: Stack, v1: Client
) -> tuple[runner.Credentials, dict[str, list[str]], list[str]]:
    """Two tenants (A fuzzes, B's key must see none of A's objects) and A's real objects."""
    jwt_a, key_a = v1.tenant("fuzz-a@example.com")
    _jwt_b, key_b = v1.tenant("fuzz-b@example.com")
    spare = v1.req("POST", "/v1/api-keys", token=jwt_a, json={"name": "spare"}).json()
    a = Client(stack, key_a, bearer=True, timeout=180)

    def ok(r: requests.Response, status: int = 200) -> dict:
        assert r.status_code == status, f"{r.request.method} {r.url}: {r.status_code} {r.text}"
        return dict(r.json())

    sandbox = a.sandbox("Bash")
    processes = [ok(a.start(sandbox, cmd))["processID"] for cmd in ("sleep 3600", "echo fuzz")]
    # Hypothesis' simplest path is "0": a file there (relative to the sandbox's working
    # directory) makes some generated reads and removes find something.
    r = a.write(sandbox, "0", "fuzz")
    assert r.status_code == 204, r.text
    for name in ("fuzz-bundle", "fuzz-spare-1", "fuzz-spare-2"):
        a.bundle(name, {"FUZZ": "1"})
    session = a.agent_session()["chat_session_id"]
    fixed = {
        # B's sandbox is there so that A's key meets an id that exists but is not A's.
        "sandbox": [sandbox, sandbox, sandbox, Client(stack, key_b).sandbox("Bash")],
        "process": processes,
        "session": [session],
        "key": [spare["key_id"]],
        "bundle": ["fuzz-bundle"],
    }
    # Spare bundles are "created" ones: the only ones a generated delete may take.
    return runner.Credentials(key_a, jwt_a, key_b), fixed, ["fuzz-spare-1", "fuzz-spare-2"]


def _report(name: str, tally: runner.Tally) -> None:
    statuses = ", ".join(f"{s}: {n}" for s, n in sorted(tally.by_status.items()))
    print(f"\n== {name}: {tally.sent} requests, {len(tally.by_operation)} operations")
    print(f"   by class:  {tally.classes()}")
    print(f"   by status: {statuses}")
    for label, n in sorted(tally.by_operation.items(), key=lambda kv: kv[0].split(" ")[::-1]):
        classes = " ".join(
            f"{c}={tally.by_operation_class[(label, c)]}"
            for c in ("2xx", "4xx", "5xx", "0xx")
            if tally.by_operation_class[(label, c)]
        )
        print(f"     {n:5d}  {label:58s} {classes}")
    print(f"   failures:  {sum(tally.failures.values())}")
    for key, n in sorted(tally.failures.items()):
        print(f"   - {n} x {key}\n       {tally.examples[key][:900]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__)
    parser.add_argument("--examples", type=int, default=150, help="cases per operation and mode")
    parser.add_argument("--seed", type=int, default=20240610)
    parser.add_argument("--workers", type=int, default=4, help="threads sending requests")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    parser.add_argument("--min-requests", type=int, default=5000)
    args = parser.parse_args(argv)

    started = time.monotonic()
    controller, _inbox = smtp_server()
    env = {**STACK_ENV, "PADDOCK_SMTP_URL": f"smtp://127.0.0.1:{controller.port}"}
    tallies: dict[str, runner.Tally] = {}
    # The stack's logs (web.log, worker-*.log) are kept when the run fails, to see why.
    workdir = Path(tempfile.mkdtemp(prefix="paddock-fuzz-"))
    try:
        v1 = Client(Stack(workdir, env=env), inbox=_inbox)
        with v1.stack as stack:
            creds, fixed, spare_bundles = _fixtures(stack, v1)
            foreign = frozenset(fixed["sandbox"][-1:])  # B's sandbox
            pools = runner.Pools(fixed, foreign)
            for name in spare_bundles:
                pools.add("bundle", name)
            print(f"fuzz: stack up and fixtures made in {runner.elapsed(started)}", flush=True)
            items: list[runner.Planned] = []
            for name, path in DOCUMENTS:
                schema = runner.load(stack.url + path)
                items += runner.plan(
                    name,
                    schema,
                    args.examples,
                    args.seed,
                    (GenerationMode.POSITIVE, GenerationMode.NEGATIVE),
                )
            print(
                f"fuzz: {len(items)} cases generated (seed {args.seed}) in "
                f"{runner.elapsed(started)}",
                flush=True,
            )

            def progress(n: int) -> None:
                if n % 500 == 0:
                    print(f"fuzz: {n}/{len(items)} sent, {runner.elapsed(started)}", flush=True)

            tallies = runner.execute(
                runner.shuffled(items, args.seed),
                stack.url,
                creds,
                pools,
                args.workers,
                args.timeout,
                progress,
                private=(fixed["sandbox"][0], *fixed["session"], *fixed["process"]),
            )
    finally:
        controller.stop()

    for name, _path in DOCUMENTS:
        _report(name, tallies.get(name, runner.Tally()))
    total = sum(t.sent for t in tallies.values())
    failures = sum(sum(t.failures.values()) for t in tallies.values())
    errors = sum(n for t in tallies.values() for s, n in t.by_status.items() if s >= 500)
    print(
        f"\nfuzz: {total} requests, {errors} 5xx, {failures} failures, "
        f"{runner.elapsed(started)} in all"
    )
    if failures or errors or total < args.min_requests:
        print(f"fuzz: the stack's logs are in {workdir}", file=sys.stderr)
        if total < args.min_requests:
            print(f"fuzz: fewer than {args.min_requests} requests sent", file=sys.stderr)
        return 1
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
