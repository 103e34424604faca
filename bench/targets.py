"""The two things measured: Paddock over its E2B HTTP API, and the Docker SDK used directly.

Both offer the same four operations (create a sandbox, run a command and wait, stream a large
output, delete), and each checks its answer, so a fast wrong answer fails the bench instead of
winning it.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import docker.types
import requests

from devstack.stack import Stack
from shared.settings import Settings
from workers.backends.base import SANDBOX_USER
from workers.backends.docker.driver import hardening
from workers.backends.supervisor.backend import SUPERVISOR_PATH


class BenchError(Exception):
    """A measured operation failed or answered something other than expected."""


# What a bench run may fail with, reported as a failed run rather than a traceback.
RUN_ERRORS = (BenchError, RuntimeError, docker.errors.DockerException, requests.RequestException)


def template_image(client: docker.DockerClient, env: str) -> str:
    """The image of template ``env``. Raises BenchError when it is not built."""
    image = f"paddock/tpl-{env.lower()}:latest"
    try:
        client.images.get(image)
    except docker.errors.ImageNotFound as exc:
        raise BenchError(f"image {image} is missing; build it with `make images`") from exc
    return image


@contextlib.contextmanager
def logs_on_failure(
    stack: Stack, names: tuple[str, ...], log: Callable[[str], None], chars: int = 2000
) -> Iterator[None]:
    """On any exception in the block, log the end of each of the stack's ``names`` logs."""
    try:
        yield
    except Exception:
        for name in names:
            log(f"last lines of {name}.log:\n{stack.log(name)[-chars:]}")
        raise


def bearer_session(key: str) -> requests.Session:
    """HTTP requests as the tenant of API key ``key``."""
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {key}"
    return http


def create_sandbox(url: str, http: requests.Session, env_id: str, timeout: float = 180) -> str:
    """``POST /sessions``: the new sandbox's id. Raises BenchError on any other answer."""
    r = http.post(f"{url}/sessions", json={"envID": env_id}, timeout=timeout)
    if r.status_code != 200:
        raise BenchError(f"POST /sessions answered {r.status_code}: {r.text[:500]}")
    return str(r.json()["id"])


@dataclass(frozen=True)
class Flood:
    """A command that writes ``size`` bytes of ``a`` to stdout in lines of ``width`` chars."""

    size: int
    width: int = 999

    @property
    def cmd(self) -> str:
        return f"head -c {self.size} /dev/zero | tr '\\0' 'a' | fold -w {self.width}"

    @property
    def lines(self) -> int:
        return math.ceil(self.size / self.width)

    @property
    def stdout_bytes(self) -> int:
        # fold puts a newline between chunks, none after the last one (the input has none).
        return self.size + self.lines - 1


@dataclass(frozen=True)
class Lines:
    """A command that prints the numbers 1..``count``, one a line (issue 12's "200,000 output
    lines": many short lines, where the per-line cost shows, unlike the flood's long ones)."""

    count: int = 200_000

    @property
    def cmd(self) -> str:
        return f"seq 1 {self.count}"

    @property
    def stdout(self) -> bytes:
        return "".join(f"{i}\n" for i in range(1, self.count + 1)).encode()


class PaddockTarget:
    """Paddock's E2B API at ``url``."""

    def __init__(self, url: str, http: requests.Session, env_id: str) -> None:
        self.url = url
        self.http = http
        self.env_id = env_id

    def create(self) -> str:
        return create_sandbox(self.url, self.http, self.env_id)

    def delete(self, sid: str) -> None:
        r = self.http.delete(f"{self.url}/sessions/{sid}", timeout=120)
        if r.status_code != 204:
            raise BenchError(f"DELETE /sessions/{sid} answered {r.status_code}: {r.text[:500]}")

    def run(self, sid: str, cmd: str) -> dict[str, Any]:
        """Run ``cmd`` with ``wait=true``; the finished Process."""
        r = self.http.post(
            f"{self.url}/sessions/{sid}/processes?wait=true", json={"cmd": cmd}, timeout=600
        )
        return _finished(r, cmd)

    def true(self, sid: str) -> None:
        out = self.run(sid, "true")
        if out["stdout"] or out["stderr"]:
            raise BenchError(f"`true` wrote output: {out}")

    def echo(self, sid: str) -> None:
        out = self.run(sid, "echo 22")
        lines = [o["line"] for o in out["stdout"]]
        if lines != ["22"] or out["stderr"]:
            raise BenchError(
                f"`echo 22` through Paddock gave stdout {lines}, stderr {out['stderr'][:5]}"
            )

    def fetch_flood(self, sid: str, flood: Flood) -> bytes:
        """Start the flood and read the whole JSON answer; the body, unparsed (timed part)."""
        r = self.http.post(
            f"{self.url}/sessions/{sid}/processes?wait=true", json={"cmd": flood.cmd}, timeout=900
        )
        if r.status_code != 200:
            raise BenchError(f"flood answered {r.status_code}: {r.text[:500]}")
        return r.content

    @staticmethod
    def check_flood(body: bytes, flood: Flood) -> int:
        """Verify the answer holds exactly the flood's output; its stdout byte count."""
        out = json.loads(body)
        if out.get("finished") is not True:
            raise BenchError("flood: process not finished in a wait=true answer")
        if out["stderr"]:
            raise BenchError(f"flood wrote to stderr: {[o['line'] for o in out['stderr'][:5]]}")
        lines = [o["line"] for o in out["stdout"]]
        if len(lines) != flood.lines:
            raise BenchError(f"flood: {len(lines)} lines through Paddock, expected {flood.lines}")
        text = sum(len(line) for line in lines)
        if text != flood.size or any(line.strip("a") for line in lines):
            raise BenchError(f"flood: {text} characters through Paddock, expected {flood.size}")
        return text + len(lines) - 1

    def fetch_lines(self, sid: str, lines: Lines) -> bytes:
        """Run ``lines``'s command with ``wait=true``; the whole JSON answer, unparsed."""
        r = self.http.post(
            f"{self.url}/sessions/{sid}/processes?wait=true", json={"cmd": lines.cmd}, timeout=600
        )
        if r.status_code != 200:
            raise BenchError(f"{lines.cmd} answered {r.status_code}: {r.text[:500]}")
        return r.content

    @staticmethod
    def check_lines(body: bytes, lines: Lines) -> None:
        """Verify the answer holds exactly 1..count, in order, on stdout."""
        out = json.loads(body)
        if out.get("finished") is not True or out["stderr"]:
            raise BenchError(f"{lines.cmd}: not finished, or stderr {out['stderr'][:5]}")
        got = [o["line"] for o in out["stdout"]]
        if got != [str(i) for i in range(1, lines.count + 1)]:
            raise BenchError(f"{lines.cmd}: {len(got)} lines through Paddock, not 1..{lines.count}")


def _finished(r: requests.Response, cmd: str) -> dict[str, Any]:
    if r.status_code != 200:
        raise BenchError(f"process {cmd!r} answered {r.status_code}: {r.text[:500]}")
    out: dict[str, Any] = r.json()
    if out.get("finished") is not True:
        raise BenchError(f"process {cmd!r} not finished in a wait=true answer: {out}")
    return out


class RawDocker:
    """The same operations with the Docker SDK, on containers started with the same hardening
    and limits as Paddock's sandboxes, so that the ratio is Paddock's own overhead. That
    includes the sandboxes' capped storage (workers/backends/docker/storage.py, some 15 ms to
    make and 10 ms to release): raw containers get the read-only root but no writable paths,
    which the measured operations do not need."""

    def __init__(self, client: docker.DockerClient, image: str, label: str) -> None:
        self.client = client
        self.image = image
        self.label = label
        self.settings = Settings(host_id="bench")  # the defaults the stack's sandboxes get
        self._count = 0

    def create(self) -> Any:
        s = self.settings
        self._count += 1
        return self.client.containers.run(
            self.image,
            ["sleep", "infinity"],
            name=f"paddock-bench-{self.label}-{self._count}",
            detach=True,
            init=True,
            user=SANDBOX_USER,
            working_dir="/home/user",
            labels={"paddock.bench": self.label},
            **hardening(s),
        )

    def delete(self, container: Any) -> None:
        container.remove(force=True)

    def true(self, container: Any) -> None:
        code, output = container.exec_run(["true"], user=SANDBOX_USER)
        if code != 0 or output:
            raise BenchError(f"raw `true` exited {code} with {output[:200]!r}")

    def echo(self, container: Any) -> None:
        code, output = container.exec_run(["/bin/bash", "-c", "echo 22"], user=SANDBOX_USER)
        if code != 0 or output != b"22\n":
            raise BenchError(f"raw `echo 22` exited {code} with {output[:200]!r}")

    def stream_flood(self, container: Any, flood: Flood) -> int:
        """Run the flood over an exec stream, counting bytes; the stdout byte count."""
        api = self.client.api
        exec_id = api.exec_create(
            container.id,
            ["/bin/bash", "-c", flood.cmd],
            stdout=True,
            stderr=True,
            user=SANDBOX_USER,
        )["Id"]
        total = 0
        for chunk in api.exec_start(exec_id, stream=True):
            total += len(chunk)
        code = api.exec_inspect(exec_id).get("ExitCode")
        if code != 0:
            raise BenchError(f"raw flood exited {code}")
        return total

    def lines(self, container: Any, lines: Lines) -> None:
        """Run ``lines``'s command and read its whole output, checked."""
        code, output = container.exec_run(["/bin/bash", "-c", lines.cmd], user=SANDBOX_USER)
        if code != 0 or output != lines.stdout:
            raise BenchError(f"raw {lines.cmd} exited {code} with {len(output)} bytes")

    def create_supervised(self, binary: Path) -> Any:
        """A container made as the supervisor backend makes a sandbox's (its command the
        supervisor binary mounted read-only, stdin open, no TTY, no log of the channel), for
        timing the supervisor alone over its attached stdio: never a sandbox of the stack,
        whose channel belongs to its worker."""
        self._count += 1
        return self.client.containers.run(
            self.image,
            [SUPERVISOR_PATH],
            name=f"paddock-bench-{self.label}-sup-{self._count}",
            detach=True,
            init=True,
            user=SANDBOX_USER,
            working_dir="/home/user",
            labels={"paddock.bench": self.label},
            mounts=[docker.types.Mount(SUPERVISOR_PATH, str(binary), type="bind", read_only=True)],
            stdin_open=True,
            tty=False,
            log_config=docker.types.LogConfig(type="none"),
            **hardening(self.settings),
        )

    def remove_all(self) -> None:
        for c in self.client.containers.list(
            all=True, filters={"label": f"paddock.bench={self.label}"}
        ):
            c.remove(force=True)
