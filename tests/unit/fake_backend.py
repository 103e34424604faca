"""A sandbox backend in memory that implements the SandboxBackend protocol
(workers/backends/base.py): sandboxes are dicts of files, processes emit what the test feeds
them. The host's operations run against it without Docker (test_host_ops.py, and the whole
web -> rpc -> host path in test_core_path.py)."""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterator
from typing import Any

from shared.egress import NetworkPolicy
from shared.errors import PathNotFound, SandboxError, SandboxGone
from workers.backends.base import (
    Machine,
    ProcessHandle,
    SandboxState,
    SpawnOptions,
    TemplateImage,
)


class FakeProcess:
    """A process whose output is what the test feeds it; ``exit`` ends it."""

    def __init__(self, sandbox_id: str, cmd: str) -> None:
        self.sandbox_id = sandbox_id
        self.cmd = cmd
        self.feed: queue.Queue[tuple[str, bytes] | None] = queue.Queue()
        self.stdin = bytearray()
        self.code: int | None = None
        self.killed = False
        self.closed = False
        self._pgid: int | None = 42
        self.history: list[tuple[str, bytes]] = []
        self.followers: list[FakeProcess] = []
        self.options = SpawnOptions()
        self.signals: list[str] = []
        self.sizes: list[tuple[int, int]] = []
        self.stdin_closed = False

    @property
    def pgid(self) -> int | None:
        return self._pgid

    ref = ""  # set when the backend numbers its chunks (FakeBackend(numbered=True))
    seq = 0  # chunks yielded so far (numbered backends count on from where a follower began)

    def say(self, kind: str, data: bytes) -> None:
        """The process prints ``data``: kept (for followers after a restart) and fed."""
        self.history.append((kind, data))
        self.feed.put((kind, data))
        for follower in self.followers:
            follower.feed.put((kind, data))

    def follow(self, after_seq: int) -> FakeProcess:
        """A handle on this process from chunk ``after_seq + 1`` on, as after a restart."""
        follower = FakeProcess(self.sandbox_id, self.cmd)
        follower.ref, follower.seq = self.ref, after_seq
        for item in self.history[after_seq:]:
            follower.feed.put(item)
        self.followers.append(follower)
        if self.code is not None:
            follower.exit(self.code)
        return follower

    def exit(self, code: int) -> None:
        self.code = code
        self.feed.put(None)
        for follower in self.followers:
            follower.exit(code)

    def frames(self, stop: Callable[[], bool]) -> Iterator[tuple[str, bytes]]:
        while True:
            try:
                item = self.feed.get(timeout=0.05)
            except queue.Empty:
                if stop():
                    return
                continue
            if item is None:
                return
            self.seq += 1
            yield item

    def ready(self) -> bool:
        return not self.feed.empty()

    def poll_every(self, seconds: float) -> None:
        pass

    def write_stdin(self, data: bytes) -> None:
        if self.closed:
            raise OSError("closed")
        self.stdin += data

    def exit_code(self) -> int | None:
        return self.code

    def kill(self, timeout: float) -> None:
        self.killed = True
        self.exit(137)

    def close(self) -> None:
        self.closed = True

    def signal(self, name: str) -> None:
        self.signals.append(name)

    def resize(self, cols: int, rows: int) -> None:
        self.sizes.append((cols, rows))

    def close_stdin(self) -> None:
        if self.stdin_closed:
            raise OSError("closed")
        self.stdin_closed = True


class FakeBackend:
    """Sandboxes as dicts of files; processes as FakeProcess. Raises SandboxGone for a sandbox
    it does not have, as a real backend does for a container that is gone."""

    def __init__(self, numbered: bool = False) -> None:
        # numbered: its processes number their chunks and can be followed again (adopt).
        self.numbered = numbered
        self.on_gone: Callable[[str], None] | None = None
        self.sandboxes: dict[str, dict[str, bytes]] = {}
        self.dirs: dict[str, set[str]] = {}
        self.created: list[tuple[str, str, str, NetworkPolicy]] = []
        self.destroyed: list[str] = []
        self.spawned: list[FakeProcess] = []
        # A process that printed this and exited (code) before the worker read any of it.
        self.ran_at_once: tuple[list[tuple[str, bytes]], int] | None = None
        self.ooms = 0

    def _box(self, sandbox_id: str) -> dict[str, bytes]:
        if sandbox_id not in self.sandboxes:
            if self.on_gone is not None:
                self.on_gone(sandbox_id)
            raise SandboxGone("gone")
        return self.sandboxes[sandbox_id]

    # the host
    def ping(self) -> None:
        pass

    def machine(self) -> Machine:
        return Machine(8 << 30, 4)

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
        return [TemplateImage("Bash", "fake/tpl-bash:latest", "h", 1, 0.0)]

    # lifecycle
    def create(self, sandbox_id: str, tenant_id: str, image: str, network: NetworkPolicy) -> None:
        self.created.append((sandbox_id, tenant_id, image, network))
        self.sandboxes[sandbox_id] = {}
        self.dirs[sandbox_id] = {"/"}

    def destroy(self, sandbox_id: str, ref: str | None = None) -> None:
        self.destroyed.append(sandbox_id)
        self.sandboxes.pop(sandbox_id, None)

    def sandbox_states(self) -> dict[str, SandboxState]:
        return {sid: SandboxState(sid, "running", True) for sid in self.sandboxes}

    def storage_ids(self) -> list[str]:
        return sorted(self.sandboxes)

    def release_storage(self, sandbox_id: str) -> None:
        pass

    def prune(self) -> None:
        pass

    # inside a sandbox
    def ports(self, sandbox_id: str) -> list[dict[str, Any]]:
        self._box(sandbox_id)
        return [{"State": "LISTEN", "Ip": "0.0.0.0", "Port": 8080}]

    def list_dir(self, sandbox_id: str, path: str) -> list[tuple[str, bool]]:
        box = self._box(sandbox_id)
        prefix = path.rstrip("/") + "/"
        files = [(p[len(prefix) :], False) for p in box if p.startswith(prefix)]
        dirs = [(d[len(prefix) :], True) for d in self.dirs[sandbox_id] if d.startswith(prefix)]
        return sorted(files + dirs)

    def make_dir(self, sandbox_id: str, path: str) -> None:
        self._box(sandbox_id)
        self.dirs[sandbox_id].add(path)

    def remove(self, sandbox_id: str, path: str) -> None:
        box = self._box(sandbox_id)
        if path not in box and path not in self.dirs[sandbox_id]:
            raise PathNotFound(f"no such file or directory: {path}")
        box.pop(path, None)
        self.dirs[sandbox_id].discard(path)

    def read_file(self, sandbox_id: str, path: str) -> bytes:
        box = self._box(sandbox_id)
        if path not in box:
            raise PathNotFound(f"no such file or directory: {path}")
        return box[path]

    def write_file(self, sandbox_id: str, path: str, data: bytes) -> None:
        self._box(sandbox_id)[path] = data

    def spawn(
        self,
        sandbox_id: str,
        cmd: str,
        env: dict[str, str],
        cwd: str,
        options: SpawnOptions | None = None,
    ) -> ProcessHandle:
        self._box(sandbox_id)
        proc = FakeProcess(sandbox_id, cmd)
        proc.options = options or SpawnOptions()
        if self.ran_at_once is not None:  # all its output and its exit there before any read
            output, code = self.ran_at_once
            for item in output:
                proc.feed.put(item)
            proc.exit(code)
        if self.numbered:
            proc.ref = str(len(self.spawned))
        self.spawned.append(proc)
        return proc

    def adopt(self, sandbox_id: str, ref: str, after_seq: int) -> ProcessHandle:
        if not self.numbered or not ref.isdigit() or int(ref) >= len(self.spawned):
            raise SandboxError("the fake backend does not follow this process again")
        return self.spawned[int(ref)].follow(after_seq)

    def oom_kills(self, sandbox_id: str) -> int | None:
        return self.ooms
