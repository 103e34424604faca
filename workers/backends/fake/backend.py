"""The fake backend: the SandboxBackend protocol in memory, for the scale harness (bench/scale).

No container, no process, no network: a sandbox is a dict of files (files.py) and a process
plays the script its command reads as (script.py), handing its output to the host's real
runner, so everything a host writes to Redis (records, output streams, replies, heartbeats,
reconcile) is what a real host writes. Chosen only with both PADDOCK_SANDBOX_BACKEND=fake and
PADDOCK_ALLOW_FAKE_BACKEND=1 (shared/settings.py refuses the first alone).
"""

from __future__ import annotations

import itertools
import logging
import queue
import shlex
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.egress import NetworkPolicy
from shared.errors import BackendUnsupported, ConfigError, SandboxError, SandboxGone
from shared.settings import Settings
from workers.backends.base import (
    Machine,
    ProcessHandle,
    ResourceUsage,
    SandboxState,
    SpawnOptions,
    TemplateImage,
    WatchHandle,
)
from workers.backends.fake import script
from workers.backends.fake.files import FakeFiles

logger = logging.getLogger(__name__)

# When the templates directory names none (a checkout without templates/).
DEFAULT_TEMPLATES = ("Bash", "Nodejs", "Python3", "standard")
# A fake sandbox's files live in the worker's memory: at most this much each.
MAX_FILES_BYTES = 16 << 20
# What the fake host says it has (capacity follows from it unless PADDOCK_HOST_CAPACITY).
MACHINE = Machine(memory_bytes=64 << 30, cpus=16)
_SIGNALS = {"SIGINT": 2, "SIGKILL": 9, "SIGTERM": 15, "SIGHUP": 1, "SIGQUIT": 3}


class FakeProcess:
    """One process: ``frames`` plays its script in the pump's thread. Thread-safe as the
    protocol asks (one reader; kill, stdin and close from others)."""

    def __init__(self, commands: list[script.Command], pgid: int, options: SpawnOptions) -> None:
        self._commands = commands
        self._pgid = pgid
        self._ended = threading.Event()  # killed, signalled or let go of
        self._stdin: queue.Queue[bytes | None] | None = queue.Queue() if options.stdin else None
        self._stdin_closed = not options.stdin
        self._deadline = time.monotonic() + options.timeout if options.timeout > 0 else None
        self._poll = 30.0
        self._code: int | None = None
        self._forced: int | None = None  # the exit status a kill or signal set

    @property
    def pgid(self) -> int | None:
        return self._pgid

    ref = ""  # not followed again after a worker restart (adopt refuses)
    seq = 0

    def frames(self, stop: Callable[[], bool]) -> Iterator[tuple[str, bytes]]:
        code = 0
        try:
            for i, command in enumerate(self._commands):
                if i and self._commands[i - 1].then == "&&" and code != 0:
                    continue  # `a && b`: b only after a succeeded (the status stays a's)
                for step in command.steps:
                    if self._ended.is_set() or self._timed_out():
                        return
                    if isinstance(step, script.Exit):
                        code = step.code
                        if step.final:
                            return
                    elif isinstance(step, script.Print):
                        for chunk in step.chunks():
                            if self._ended.is_set():
                                return
                            yield step.kind, chunk
                    elif isinstance(step, script.Sleep):
                        if not self._wait(time.monotonic() + step.seconds, stop):
                            return
                    else:
                        yield from self._cat(step.kind, stop)
        finally:
            if self._forced is not None:
                self._code = self._forced
            else:
                self._code = 137 if self._timed_out() else code

    def _timed_out(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline

    def _wait(self, until: float, stop: Callable[[], bool]) -> bool:
        """Sleep until ``until`` (or the timeout, a kill); False when ``stop`` said to end."""
        if self._deadline is not None:
            until = min(until, self._deadline)
        while not self._ended.is_set() and (left := until - time.monotonic()) > 0:
            if not self._ended.wait(min(left, self._poll)) and time.monotonic() < until and stop():
                return False
        return True

    def _cat(self, kind: str, stop: Callable[[], bool]) -> Iterator[tuple[str, bytes]]:
        while self._stdin is not None and not self._ended.is_set() and not self._timed_out():
            try:
                data = self._stdin.get(timeout=self._poll)
            except queue.Empty:
                if stop():
                    return
                continue
            if data is None:
                return
            yield kind, data

    def ready(self) -> bool:
        return False

    def poll_every(self, seconds: float) -> None:
        self._poll = max(0.01, seconds)

    def write_stdin(self, data: bytes) -> None:
        if self._stdin is None or self._stdin_closed or self._ended.is_set():
            raise OSError("stdin is closed")
        self._stdin.put(data)

    def close_stdin(self) -> None:
        if self._stdin is None or self._stdin_closed:
            raise OSError("stdin is closed")
        self._stdin_closed = True
        self._stdin.put(None)

    def exit_code(self) -> int | None:
        return self._code

    def kill(self, timeout: float) -> None:
        self._end(137)

    def signal(self, name: str) -> None:
        if name not in _SIGNALS:
            raise SandboxError(f"unknown signal {name}")
        self._end(128 + _SIGNALS[name])

    def resize(self, cols: int, rows: int) -> None:
        raise BackendUnsupported("the fake backend has no terminals")

    def close(self) -> None:
        self._ended.set()

    def _end(self, code: int) -> None:
        if self._forced is None:
            self._forced = code
        self._ended.set()


@dataclass
class FakeSandbox:
    tenant_id: str
    files: FakeFiles
    warm: bool = False
    paused: bool = False
    created_at: float = field(default_factory=time.time)


class FakeBackend:
    """Sandboxes in memory. Raises SandboxGone for one it does not have (and tells
    ``on_gone``), as a real backend does for a container that is gone."""

    def __init__(self, settings: Settings) -> None:
        """Raises ConfigError unless the settings allow the fake backend explicitly."""
        if settings.sandbox_backend != "fake" or not settings.allow_fake_backend:
            raise ConfigError("the fake backend needs PADDOCK_ALLOW_FAKE_BACKEND=1")
        self.settings = settings
        self.on_gone: Callable[[str], None] | None = None
        self._lock = threading.Lock()
        self._sandboxes: dict[str, FakeSandbox] = {}
        self._pids = itertools.count(1000)
        self._catalog = _catalog(settings.templates_dir)
        logger.warning(
            "host %s: the FAKE sandbox backend: no sandbox runs anything, commands are "
            "simulated (PADDOCK_SANDBOX_BACKEND=fake)",
            settings.host_id,
        )

    def _box(self, sandbox_id: str) -> FakeSandbox:
        with self._lock:
            box = self._sandboxes.get(sandbox_id)
        if box is None:
            if self.on_gone is not None:
                self.on_gone(sandbox_id)
            raise SandboxGone("the sandbox is gone")
        return box

    # -- the host ------------------------------------------------------------------------------
    def ping(self) -> None:
        pass

    def machine(self) -> Machine:
        return MACHINE

    def check_storage(self, sandboxes: int) -> None:
        pass

    def start_network(self) -> None:
        pass

    def stop_network(self) -> None:
        pass

    def network_problem(self) -> str | None:
        return None

    def address(self, sandbox_id: str) -> str | None:
        return None

    def templates(self) -> list[TemplateImage]:
        return list(self._catalog)

    # -- lifecycle ----------------------------------------------------------------------------
    def create(
        self,
        sandbox_id: str,
        tenant_id: str,
        image: str,
        network: NetworkPolicy,
        warm: bool = False,
    ) -> None:
        size = min(self.settings.sandbox_disk or MAX_FILES_BYTES, MAX_FILES_BYTES)
        with self._lock:
            self._sandboxes[sandbox_id] = FakeSandbox(tenant_id, FakeFiles(size), warm=warm)

    def claim(self, sandbox_id: str, tenant_id: str, network: NetworkPolicy) -> None:
        box = self._box(sandbox_id)
        box.tenant_id, box.warm = tenant_id, False

    def destroy(self, sandbox_id: str, ref: str | None = None) -> None:
        with self._lock:
            self._sandboxes.pop(ref or sandbox_id, None)

    def sandbox_states(self) -> dict[str, SandboxState]:
        with self._lock:
            ids = list(self._sandboxes)
        return {sid: SandboxState(sid, "running", True) for sid in ids}

    def storage_ids(self) -> list[str]:
        return []  # storage and sandbox are one dict entry: never a leftover

    def release_storage(self, sandbox_id: str) -> None:
        pass

    def prune(self) -> None:
        pass

    # -- inside a sandbox ---------------------------------------------------------------------
    def ports(self, sandbox_id: str) -> list[dict[str, Any]]:
        self._box(sandbox_id)
        return []

    def list_dir(self, sandbox_id: str, path: str) -> list[tuple[str, bool]]:
        found = self._box(sandbox_id).files.entries(path, 1)
        return sorted((e["name"], e["type"] == "dir") for e in found)

    def make_dir(self, sandbox_id: str, path: str) -> None:
        self._box(sandbox_id).files.mkdir(path)

    def remove(self, sandbox_id: str, path: str) -> None:
        self._box(sandbox_id).files.remove(path)

    def read_file(self, sandbox_id: str, path: str) -> bytes:
        return self._box(sandbox_id).files.read(path, self.settings.max_file_bytes)

    def write_file(self, sandbox_id: str, path: str, data: bytes) -> None:
        self._box(sandbox_id).files.write(path, data)

    def stat(self, sandbox_id: str, path: str) -> dict[str, Any]:
        return self._box(sandbox_id).files.stat(path)

    def move(self, sandbox_id: str, path: str, dst: str) -> None:
        self._box(sandbox_id).files.move(path, dst)

    def entries(self, sandbox_id: str, path: str, depth: int) -> list[dict[str, Any]]:
        return self._box(sandbox_id).files.entries(path, min(max(depth, 1), 64))

    def watch(self, sandbox_id: str, path: str, recursive: bool) -> WatchHandle:
        raise BackendUnsupported("the fake backend does not watch directories")

    def spawn(
        self,
        sandbox_id: str,
        cmd: str,
        env: dict[str, str],
        cwd: str,
        options: SpawnOptions | None = None,
    ) -> ProcessHandle:
        options = options or SpawnOptions()
        box = self._box(sandbox_id)
        if box.paused:
            raise SandboxError("the sandbox is paused")
        if options.pty is not None:
            raise BackendUnsupported("the fake backend has no terminals")
        if options.argv:
            cmd = _shell_of(options.argv)
        return FakeProcess(script.parse(cmd), next(self._pids), options)

    def adopt(self, sandbox_id: str, ref: str, after_seq: int) -> ProcessHandle:
        raise SandboxError("the fake backend does not follow processes across restarts")

    def oom_kills(self, sandbox_id: str) -> int | None:
        return 0

    # -- pause and usage ----------------------------------------------------------------------
    def pause(self, sandbox_id: str) -> bool:
        box = self._box(sandbox_id)
        was, box.paused = box.paused, True
        return not was

    def resume(self, sandbox_id: str) -> bool:
        box = self._box(sandbox_id)
        was, box.paused = box.paused, False
        return was

    def usage(self, sandbox_id: str) -> ResourceUsage | None:
        files = self._box(sandbox_id).files
        memory = self.settings.sandbox_memory
        return ResourceUsage(0.0, 0, memory, 0, files.used, files.capacity)


def _shell_of(argv: tuple[str, ...]) -> str:
    """The command line of ``argv``: a shell's ``-c`` script as it is (``/bin/bash -l -c
    CMD``, as the e2b SDK starts commands), anything else quoted back into one."""
    if Path(argv[0]).name in ("bash", "sh") and "-c" in argv[1:-1]:
        return argv[argv.index("-c") + 1]
    return shlex.join(argv)


def _catalog(templates_dir: str) -> list[TemplateImage]:
    """One fake image per template directory with a Dockerfile (DEFAULT_TEMPLATES if none)."""
    names: set[str] = set()
    for root in filter(None, templates_dir.split(":")):
        base = Path(root)
        if base.is_dir():
            names.update(d.name for d in base.iterdir() if (d / "Dockerfile").is_file())
    return [
        TemplateImage(name, f"fake/tpl-{name.lower()}:latest", "fake", 0, 0.0)
        for name in sorted(names or DEFAULT_TEMPLATES)
    ]
