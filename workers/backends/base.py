"""The sandbox backend: everything a host does to its sandboxes, behind one protocol.

The host's code (workers/host/: ops, runner, reconcile, heartbeat) talks only to a
``SandboxBackend`` and the ``ProcessHandle`` its ``spawn`` returns; it never sees how sandboxes
are made. ``workers/backends/docker/`` makes them Docker containers; a second backend implements
the same protocol in a package of its own and is chosen with ``PADDOCK_SANDBOX_BACKEND``
(workers/backends/__init__.py make_backend).

Errors are Paddock's (shared/errors.py), never a backend library's: SandboxGone for a sandbox
whose container or VM is gone, SandboxTimeout, SandboxPaused, EngineUnavailable for an engine
that does not answer, the path errors (PathNotFound, ...) for file operations, SandboxError for
anything else the backend refuses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from shared.egress import NetworkPolicy
from shared.errors import SandboxError

# The account every sandbox runs as, whatever its image or backend (templates/base/configure.sh
# creates it; the image builder checks each template runs as it).
SANDBOX_USER = "user"
SANDBOX_UID = 1000
SANDBOX_HOME = "/home/user"


@dataclass(frozen=True)
class Machine:
    """What the backend's machine has, for the host's capacity (workers/host/capacity.py)."""

    memory_bytes: int
    cpus: int


@dataclass(frozen=True)
class SandboxState:
    """One sandbox as the backend lists it: the backend's own reference to it (a container
    id), its state in the backend's words (for logs: ``exited``, ``paused``...) and whether it
    is alive (running, or frozen but able to run on)."""

    ref: str
    state: str
    alive: bool
    reason: str | None = None  # why it is not alive, when the backend knows better than state


@dataclass(frozen=True)
class TemplateImage:
    """One template as a host has it: what the heartbeat publishes and /v1/templates serves."""

    name: str
    image: str
    hash: str
    size_bytes: int
    built_at: float
    versions: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ResourceUsage:
    """What a sandbox uses now (``SandboxBackend.usage``): CPU in percent of its CPUs over a
    short sample, memory and disk in bytes."""

    cpu_used_pct: float
    mem_used: int
    mem_total: int
    mem_cache: int
    disk_used: int
    disk_total: int


@dataclass(frozen=True)
class SpawnOptions:
    """How ``SandboxBackend.spawn`` starts a process besides its command (the envd protocol's
    needs; the defaults are how every other process starts):

    - ``argv``: run this program with these arguments (still in ``cwd``, as the sandbox user,
      leading its own group) instead of ``bash -c cmd`` (``cmd`` then only describes it);
    - ``pty``: (cols, rows): on a new pseudo-terminal of that size, its output on kind PTY of
      shared.output and its stdin the terminal (a backend that cannot: BackendUnsupported);
    - ``stdin``: an open stdin (else /dev/null);
    - ``timeout``: seconds after which the process group is SIGKILLed (0: never)."""

    argv: tuple[str, ...] = ()
    pty: tuple[int, int] | None = None
    stdin: bool = True
    timeout: float = 0.0


class ProcessHandle(Protocol):
    """A process started by ``SandboxBackend.spawn``: its output, stdin, exit status and kill.

    One thread reads ``frames``; others may write stdin, kill or close meanwhile."""

    @property
    def pgid(self) -> int | None:
        """The process group inside the sandbox (the process is its leader), once known."""
        ...

    @property
    def ref(self) -> str:
        """What ``SandboxBackend.adopt`` needs to follow the process again after the worker
        restarted ("" when the backend cannot)."""
        ...

    @property
    def seq(self) -> int:
        """The number of the last chunk ``frames`` yielded (1, 2, ...; 0 when the backend
        does not number them): ``adopt`` follows on after such a number."""
        ...

    def frames(self, stop: Callable[[], bool]) -> Iterator[tuple[str, bytes]]:
        """``(kind, bytes)`` chunks of the process's output until it ends (kind: STDOUT or
        STDERR of shared.output). While the process is quiet, ``stop()`` is called every
        ``poll_every`` seconds; True ends the iteration early."""
        ...

    def ready(self) -> bool:
        """Whether ``frames`` has its next chunk or its end already, so that the reader may
        store what it holds with what comes next (one round trip) rather than now. False
        when the backend cannot tell."""
        ...

    def poll_every(self, seconds: float) -> None:
        """How often ``frames`` calls its ``stop`` while the process prints nothing."""
        ...

    def write_stdin(self, data: bytes) -> None:
        """Raises OSError when the process's stdin is closed."""
        ...

    def exit_code(self) -> int | None:
        """The exit code once the output has ended (None when the backend does not know it,
        e.g. the engine does not answer in time)."""
        ...

    def kill(self, timeout: float) -> None:
        """SIGKILL the process group, waiting up to ``timeout`` seconds for its pgid to be
        known (nothing is killed if it never is). A sandbox gone, or the engine refusing, is
        logged, not raised (the process is gone with it). Raises SandboxTimeout,
        SandboxPaused, EngineUnavailable."""
        ...

    def close(self) -> None:
        """Let go of the process's channel (idempotent; the process is not killed)."""
        ...

    # The envd protocol's (web/api/envd/process.py); a backend without them raises
    # BackendUnsupported.
    def signal(self, name: str) -> None:
        """Send signal ``name`` ("SIGTERM") to the process group. Raises SandboxError (the
        process is gone), BackendUnsupported."""
        ...

    def resize(self, cols: int, rows: int) -> None:
        """Set the size of the process's terminal. Raises SandboxError, BackendUnsupported."""
        ...

    def close_stdin(self) -> None:
        """End the process's input (EOF; on a terminal: ^D). Raises OSError when stdin is
        closed already or was never open."""
        ...


@dataclass(frozen=True)
class FsEvent:
    """A change under a watched directory: ``kind`` create, write, remove, rename (the old
    name of a move; the new one comes as create), chmod, or overflow (the sandbox's kernel
    dropped events; ``path`` empty). ``path`` is the full path as the sandbox says it:
    untrusted."""

    kind: str
    path: str
    is_dir: bool


class WatchBroken(SandboxError):
    """The way to a watch broke, not the watch itself (the channel to the sandbox dropped, or
    its events were not read in time): watching again may work; events between are lost."""


class WatchHandle(Protocol):
    """A directory followed by ``SandboxBackend.watch``. One thread reads ``events``; ``close``
    may come from another."""

    @property
    def ended(self) -> bool:
        """The watch is over: closed, or the directory went away (removed or moved)."""
        ...

    def events(self, timeout: float) -> Iterator[FsEvent]:
        """The events as they come; returns when none came for ``timeout`` seconds, or when
        the watch ends (then ``ended``). Raises WatchBroken, SandboxError (the watch failed,
        e.g. a new subdirectory past the limit)."""
        ...

    def close(self) -> None:
        """Stop watching (idempotent)."""
        ...


class SandboxBackend(Protocol):
    """Everything a host does to its sandboxes. See the module docstring for the errors."""

    # Called with the sandbox id when the backend finds a sandbox gone during an operation
    # (the host's reconcile wakes up: workers/host/reconcile.py start_reconcile).
    on_gone: Callable[[str], None] | None

    # -- the host --------------------------------------------------------------------------
    def ping(self) -> None:
        """Raises when the backend's engine does not answer (the worker must not start)."""
        ...

    def machine(self) -> Machine: ...

    def check_storage(self, sandboxes: int) -> None:
        """At start: the host can hold ``sandboxes`` sandboxes' storage. Raises ConfigError,
        SandboxError."""
        ...

    def start_network(self) -> None:
        """At start: the host's egress rules (never raises: a failure refuses internet
        sandboxes and ``network_problem`` says why)."""
        ...

    def stop_network(self) -> None:
        """At shutdown: remove the host's egress rules and network."""
        ...

    def network_problem(self) -> str | None:
        """Why sandboxes get no internet on this host, or None when they can."""
        ...

    def address(self, sandbox_id: str) -> str | None:
        """The sandbox's own address on this host's sandbox network (where the port relay,
        workers/host/relay.py, connects), or None: not here, or no network (mode none)."""
        ...

    def templates(self) -> list[TemplateImage]:
        """The templates this host can start, sorted by name. Raises EngineUnavailable or the
        engine's error when it cannot be read."""
        ...

    # -- lifecycle -------------------------------------------------------------------------
    def create(
        self,
        sandbox_id: str,
        tenant_id: str,
        image: str,
        network: NetworkPolicy,
        warm: bool = False,
    ) -> None:
        """Make and start the sandbox from ``image`` (a ``TemplateImage.image``). ``warm``: a
        warm pool's sandbox (workers/host/pool.py; ``tenant_id`` empty), made exactly like
        any other in ``network``'s mode, but reaching nothing until ``claim``. Raises
        SandboxError (StorageError included), NoCapacity, EgressUnavailable; on failure
        nothing of it is left."""
        ...

    def claim(self, sandbox_id: str, tenant_id: str, network: NetworkPolicy) -> None:
        """Hand a warm sandbox to ``tenant_id`` with ``network`` (its mode is the one the
        sandbox was made in), kept across a worker restart. Raises SandboxError when the
        sandbox cannot be handed over as it is (the caller removes it), EgressUnavailable."""
        ...

    def destroy(self, sandbox_id: str, ref: str | None = None) -> None:
        """Remove the sandbox (by id, or by the backend's ``ref``) and its storage, if they
        exist, in bounded time. Raises SandboxError when it could not (retried later)."""
        ...

    def sandbox_states(self) -> dict[str, SandboxState]:
        """Every sandbox of this host and instance, from one listing. Raises
        EngineUnavailable when the engine does not answer."""
        ...

    def storage_ids(self) -> list[str]:
        """The sandboxes that have storage on this host (a leftover has no sandbox)."""
        ...

    def release_storage(self, sandbox_id: str) -> None:
        """Free a leftover's storage. Raises SandboxError (StorageError)."""
        ...

    def prune(self) -> None:
        """At start: drop caches nobody uses any more (e.g. unpacked image seeds)."""
        ...

    # -- inside a sandbox ------------------------------------------------------------------
    def ports(self, sandbox_id: str) -> list[dict[str, Any]]:
        """The sandbox's listening TCP sockets as E2B port records."""
        ...

    def list_dir(self, sandbox_id: str, path: str) -> list[tuple[str, bool]]:
        """``(name, is_dir)`` of each entry, sorted."""
        ...

    def make_dir(self, sandbox_id: str, path: str) -> None: ...

    def remove(self, sandbox_id: str, path: str) -> None: ...

    def read_file(self, sandbox_id: str, path: str) -> bytes: ...

    def write_file(self, sandbox_id: str, path: str, data: bytes) -> None: ...

    # The envd protocol's (web/api/envd); a backend without them raises BackendUnsupported.
    def stat(self, sandbox_id: str, path: str) -> dict[str, Any]:
        """The entry at ``path`` (symlinks not followed) as shared.commands.FsEntry's JSON.
        Raises PathNotFound, PermissionDenied, BackendUnsupported."""
        ...

    def move(self, sandbox_id: str, path: str, dst: str) -> None:
        """Rename ``path`` to ``dst``. Raises PathNotFound, PermissionDenied,
        BackendUnsupported."""
        ...

    def entries(self, sandbox_id: str, path: str, depth: int) -> list[dict[str, Any]]:
        """The entries under directory ``path`` down to ``depth`` levels (symlinks not
        followed), as FsEntry JSON. Raises PathNotFound, NotADirectory, FileTooLarge,
        BackendUnsupported."""
        ...

    def watch(self, sandbox_id: str, path: str, recursive: bool) -> WatchHandle:
        """Follow changes under directory ``path`` (with ``recursive``, its subdirectories too,
        also those made later), reported from the moment this returns. Raises PathNotFound,
        NotADirectory (a file, or a symlink: not followed), QuotaExceeded (the sandbox
        watches too much already), BackendUnsupported."""
        ...

    def spawn(
        self,
        sandbox_id: str,
        cmd: str,
        env: dict[str, str],
        cwd: str,
        options: SpawnOptions | None = None,
    ) -> ProcessHandle:
        """Start ``cmd`` (bash) in ``cwd`` as the sandbox user, in its own process group, as
        ``options`` say (None: the defaults). Raises BackendUnsupported for an option the
        backend cannot honour."""
        ...

    def adopt(self, sandbox_id: str, ref: str, after_seq: int) -> ProcessHandle:
        """The handle of a process a previous worker started (``ref`` from its handle), its
        output from the chunk after ``after_seq`` on. Raises SandboxError when the backend
        cannot (the process's output is then closed with a line saying it was lost)."""
        ...

    def oom_kills(self, sandbox_id: str) -> int | None:
        """How many processes the kernel's OOM killer ended in the sandbox so far, read where
        the tenant cannot fake it; None when it cannot be read."""
        ...

    # -- pause and usage (the E2B control API) ---------------------------------------------
    def pause(self, sandbox_id: str) -> bool:
        """Freeze every process of the sandbox where it stands (memory kept, nothing written
        to disk). False when it was paused already. Raises SandboxGone, EngineUnavailable."""
        ...

    def resume(self, sandbox_id: str) -> bool:
        """Let a paused sandbox run on. False when it was not paused. Raises SandboxGone,
        EngineUnavailable."""
        ...

    def usage(self, sandbox_id: str) -> ResourceUsage | None:
        """CPU, memory and disk the sandbox uses now, read where the tenant cannot fake it;
        None when it cannot be read (e.g. the worker runs in a container)."""
        ...
