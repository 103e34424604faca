"""The supervisor backend: Docker containers whose command is Paddock's resident supervisor,
driven over one multiplexed channel per sandbox instead of a ``docker exec`` per operation.

Containers, storage and egress are the Docker backend's (this class extends it); what
differs is inside the sandbox:

- The container runs ``paddock-supervisor`` (supervisor/, a static binary mounted read-only
  from the host, so it works in every template) under the engine's tini, as the sandbox user
  with every capability dropped: it can do nothing the sandbox could not do itself.
- The worker talks to it over the container's attached stdio (stdio.py): nothing on the host
  (no socket, path or port) is given to the sandbox. stdin stays open between attaches
  (``stdin_once=False``) and the engine keeps no log of the channel (log driver ``none``).
- Everything the supervisor says is untrusted: the channel validates every frame, and one
  invalid frame, a supervisor that dies or one that stops reading marks the sandbox
  **failed** (its processes end with a line saying so, the host's reconcile reports it lost
  with the reason and removes it). A channel that merely dropped (the engine's connection)
  is attached again and running processes are followed on from their last seq.
"""

from __future__ import annotations

import logging
import posixpath
import threading
from pathlib import Path
from typing import IO, Any, cast

import docker
import docker.errors
import docker.types
import requests

from shared.egress import NetworkPolicy
from shared.errors import (
    EgressUnavailable,
    FileTooLarge,
    IsADirectory,
    NotADirectory,
    NotARegularFile,
    PathExists,
    PathNotFound,
    PermissionDenied,
    QuotaExceeded,
    SandboxError,
    SandboxGone,
    SandboxPaused,
    SandboxTimeout,
)
from shared.settings import Settings
from workers.backends.base import SANDBOX_HOME, SANDBOX_USER, SandboxState, SpawnOptions
from workers.backends.docker.backend import DockerBackend
from workers.backends.docker.driver import (
    MESSAGE_ERRORS,
    continue_stopped,
    kill_group_from_host,
    parse_listening,
)
from workers.backends.supervisor.channel import Channel, ChannelClosed, Process, SupervisorError
from workers.backends.supervisor.process import NotStarted, SupervisorProcess
from workers.backends.supervisor.stdio import AttachedStdio
from workers.backends.supervisor.watch import SupervisorWatch

logger = logging.getLogger(__name__)

# Where the binary is mounted in every sandbox (read-only; the image's own files are untouched).
SUPERVISOR_PATH = "/opt/paddock/paddock-supervisor"

# The supervisor's refusal codes as Paddock's errors, with the words the Docker backend uses
# (so both backends answer the same): "<what>: <path>". The rest: SandboxError.
_ERRORS: dict[str, tuple[type[SandboxError], str]] = {
    "not_found": (PathNotFound, "no such file or directory"),
    "not_dir": (NotADirectory, "not a directory"),
    "is_dir": (IsADirectory, "is a directory"),
    "exists": (PathExists, "a file exists at this path"),
    "permission": (PermissionDenied, "permission denied"),
    "not_empty": (PermissionDenied, "directory not empty"),
}

# Moves to the working directory, then becomes the user's command under bash (as the Docker
# backend does, so both say the same about a bad directory; `--`: a command starting with `-`
# is a command, not an option).
_SPAWN = r"""case $1 in /*) d=$1 ;; *) d=./$1 ;; esac
cd -- "$d" 2>/dev/null || { echo "rootdir does not exist or is not a directory: $1" >&2; exit 1; }
exec /bin/bash -c -- "$2"
"""
# The same for a program and its arguments (SpawnOptions.argv): "$2"... is the argv.
_SPAWN_ARGV = r"""case $1 in /*) d=$1 ;; *) d=./$1 ;; esac
cd -- "$d" 2>/dev/null || { echo "rootdir does not exist or is not a directory: $1" >&2; exit 1; }
shift
exec "$@"
"""


class _Link:
    """One sandbox's channel and the attach connection under it."""

    def __init__(self, channel: Channel, stdio: AttachedStdio) -> None:
        self.channel = channel
        self.stdio = stdio


class SupervisorBackend(DockerBackend):
    """See the module docstring. ``binary``: the supervisor to mount (default: built from
    supervisor/ by workers/backends/supervisor/build.py, cached by its source's hash)."""

    def __init__(
        self,
        settings: Settings,
        client: docker.DockerClient | None = None,
        binary: Path | None = None,
    ) -> None:
        super().__init__(settings, client)
        if binary is None:
            from workers.backends.supervisor.build import build

            binary = Path(settings.supervisor_binary) if settings.supervisor_binary else build()
        if not binary.is_file():
            raise SandboxError(f"the supervisor binary is missing: {binary}")
        self.binary = binary
        self.driver.command = [SUPERVISOR_PATH]
        self.driver.extra_mounts = [
            docker.types.Mount(SUPERVISOR_PATH, str(binary), type="bind", read_only=True)
        ]
        self.driver.extra_options = {
            # (StdinOnce stays false, the engine's default: stdin outlives an attach.)
            "stdin_open": True,
            "tty": False,
            # The channel's bytes never go to disk (nor fill it: a tenant can make its
            # supervisor talk a lot).
            "log_config": docker.types.LogConfig(type="none"),
        }
        self._links: dict[str, _Link] = {}
        self._failed: dict[str, str] = {}
        self._lock = threading.Lock()
        self._attaching: dict[str, threading.Lock] = {}

    # -- lifecycle -----------------------------------------------------------------------------
    def create(
        self,
        sandbox_id: str,
        tenant_id: str,
        image: str,
        network: NetworkPolicy,
        warm: bool = False,
    ) -> None:
        self._failed.pop(sandbox_id, None)
        super().create(sandbox_id, tenant_id, image, network, warm=warm)
        try:
            self._link(sandbox_id, fresh=True)
        except SandboxError:
            super().destroy(sandbox_id)
            raise

    def claim(self, sandbox_id: str, tenant_id: str, network: NetworkPolicy) -> None:
        """A warm sandbox runs nothing but its supervisor, which answers: checked before it
        is handed over (SandboxError otherwise, and it is not claimed). Its policy is then
        installed in the background, the claim answering meanwhile: until it is in place the
        sandbox reaches nothing, and ``_call`` asks nothing of it (``_settled``)."""
        running = self._call(sandbox_id, lambda ch: ch.processes())
        if running:
            raise SandboxError(f"the warm sandbox runs {len(running)} process(es); not claimed")
        self.driver.claim(sandbox_id, network, wait=False)

    def _settled(self, sandbox_id: str) -> None:
        """Wait until a just-claimed sandbox's network policy is installed (claim), so that
        nothing of its tenant runs before. Rules that could not be installed leave it closed,
        and failed (SandboxGone); rules still not in place after PADDOCK_FS_TIMEOUT:
        SandboxTimeout."""
        try:
            if self.egress.settled(sandbox_id, self.settings.fs_timeout):
                return
        except EgressUnavailable as exc:
            self._fail(sandbox_id, str(exc))
        raise SandboxTimeout("the sandbox's network rules are not in place yet; try again")

    def destroy(self, sandbox_id: str, ref: str | None = None) -> None:
        self._drop(sandbox_id, "the sandbox is being removed")
        super().destroy(sandbox_id, ref)
        with self._lock:
            self._failed.pop(sandbox_id, None)
            self._attaching.pop(sandbox_id, None)

    def sandbox_states(self) -> dict[str, SandboxState]:
        states = super().sandbox_states()
        with self._lock:
            failed = dict(self._failed)
        for sandbox_id, reason in failed.items():
            seen = states.get(sandbox_id)
            if seen is not None:
                states[sandbox_id] = SandboxState(seen.ref, seen.state, False, reason)
        return states

    # -- the channel -----------------------------------------------------------------------------
    def _channel(self, sandbox_id: str) -> Channel:
        """The sandbox's open channel, attaching when there is none. Raises SandboxGone,
        SandboxPaused, SandboxError (the sandbox failed)."""
        link = self._links.get(sandbox_id)
        if link is not None and link.channel.closed is None:
            return link.channel
        return self._link(sandbox_id).channel

    def _link(self, sandbox_id: str, fresh: bool = False) -> _Link:
        """Attach to the sandbox's supervisor (``fresh``: just started, nobody talked to it
        before; otherwise the channel is resynchronised first: a previous attach may have
        ended in the middle of a frame either way). Raises SandboxGone, SandboxPaused,
        SandboxError (the sandbox failed)."""
        with self._lock:
            if sandbox_id in self._failed:
                raise SandboxGone(f"the sandbox failed: {self._failed[sandbox_id]}")
            guard = self._attaching.setdefault(sandbox_id, threading.Lock())
        with guard:
            link = self._links.get(sandbox_id)
            if link is not None and link.channel.closed is None:
                return link
            if link is not None:
                self._check_closed(sandbox_id, link)
            elif not fresh and self._container_state(sandbox_id) == "paused":
                raise SandboxPaused()
            try:
                stdio = AttachedStdio.attach(
                    self.driver.control_client,
                    self.driver.container_name(sandbox_id),
                    sandbox_id,
                    write_timeout=self.settings.fs_timeout,
                )
            except docker.errors.NotFound as exc:
                raise self.driver._gone(sandbox_id, exc) from exc
            except (docker.errors.APIError, requests.exceptions.RequestException) as exc:
                raise SandboxError(f"could not reach the sandbox's supervisor: {exc}") from exc
            # (AttachedStdio has the few methods of a binary file the channel uses)
            pipe = cast(IO[bytes], stdio)
            try:
                channel = Channel(pipe, pipe, timeout=self.settings.fs_timeout, resync=not fresh)
            except ChannelClosed as exc:
                stdio.close()
                if self._container_state(sandbox_id) == "paused":
                    raise SandboxPaused() from None
                self._fail(sandbox_id, f"its supervisor does not answer ({exc.message})")
            link = _Link(channel, stdio)
            with self._lock:
                self._links[sandbox_id] = link
            threading.Thread(
                target=self._watch, args=(sandbox_id, link), name=f"watch-{sandbox_id}", daemon=True
            ).start()
            return link

    def _watch(self, sandbox_id: str, link: _Link) -> None:
        """When the channel ends while it is the sandbox's, judge at once (not at the next
        operation): a broken protocol or an exited supervisor fails the sandbox, and the
        host's reconcile reports it lost with the reason."""
        link.channel.wait_closed()
        if self._links.get(sandbox_id) is not link:
            return
        try:
            self._check_closed(sandbox_id, link)
        except SandboxError:
            pass  # failed (or gone, paused): _check_closed said so where it matters
        except Exception:
            logger.exception("sandbox %s: judging its ended channel failed", sandbox_id)

    def _check_closed(self, sandbox_id: str, link: _Link) -> None:
        """A channel ended: an invalid frame fails the sandbox; so does a supervisor gone from
        a container that still runs (the tenant killed it) or a stopped one. A paused sandbox
        raises SandboxPaused; a gone one SandboxGone. Otherwise the caller attaches again."""
        reason = link.channel.closed or ""
        link.stdio.close()
        if link.channel.violated:
            self._fail(sandbox_id, f"its supervisor broke the protocol ({reason})")
        state = self._container_state(sandbox_id)
        if state == "paused":
            raise SandboxPaused()
        if state != "running":  # the container ended (its supervisor with it): reconcile says
            raise self.driver._gone(sandbox_id, RuntimeError(f"container {state}"))

    def _thaw(self, sandbox_id: str) -> bool:
        """A supervisor that does not answer may have been stopped by the sandbox's own
        processes (they run as its user): the host makes it go on, so the sandbox answers
        again once whatever held it is over."""
        cid = self.driver._container_id(sandbox_id)
        if not (cid and continue_stopped(cid, SUPERVISOR_PATH)):
            return False
        logger.warning(
            "sandbox %s: its supervisor had been stopped from inside; continued it", sandbox_id
        )
        return True

    def _container_state(self, sandbox_id: str) -> str:
        try:
            info = self.driver.control_client.api.inspect_container(
                self.driver.container_name(sandbox_id)
            )
        except docker.errors.NotFound as exc:
            raise self.driver._gone(sandbox_id, exc) from exc
        except (docker.errors.APIError, requests.exceptions.RequestException) as exc:
            raise SandboxError(f"could not inspect the sandbox: {exc}") from exc
        state = info.get("State") or {}
        if state.get("Paused"):
            return "paused"
        return str(state.get("Status") or "unknown")

    def _fail(self, sandbox_id: str, reason: str) -> None:
        """Mark the sandbox failed (reported lost by the next reconcile, which removes it)
        and raise SandboxGone."""
        logger.error("sandbox %s: failed: %s", sandbox_id, reason)
        with self._lock:
            self._failed.setdefault(sandbox_id, reason)
        self._drop(sandbox_id, reason)
        if self.on_gone is not None:
            self.on_gone(sandbox_id)
        raise SandboxGone(f"the sandbox failed: {reason}")

    def _drop(self, sandbox_id: str, reason: str) -> None:
        with self._lock:
            link = self._links.pop(sandbox_id, None)
        if link is not None:
            link.channel.close(reason)
            link.stdio.close()

    def _call(self, sandbox_id: str, fn: Any, path: str | None = None) -> Any:
        """Run one channel operation (on ``path``, for the errors' words); the supervisor's
        refusals become Paddock's errors.
        A channel that ends meanwhile is judged (_check_closed) and the operation tried once
        more on a new one."""
        self._settled(sandbox_id)  # (a just-claimed sandbox: its network policy first)
        for attempt in (1, 2):
            channel = self._channel(sandbox_id)
            try:
                return fn(channel)
            except ChannelClosed:
                if attempt == 2:
                    raise SandboxError("the sandbox's supervisor does not answer") from None
                continue
            except TimeoutError:
                if self._container_state(sandbox_id) == "paused":
                    raise SandboxPaused() from None
                if self._thaw(sandbox_id) and attempt == 1:
                    continue  # it was stopped: it can answer now
                raise SandboxTimeout(
                    f"the sandbox did not answer within {self.settings.fs_timeout:g}s "
                    "(PADDOCK_FS_TIMEOUT)"
                ) from None
            except SupervisorError as exc:
                raise _refusal(exc, path) from None
        raise AssertionError("unreachable")

    # -- processes -------------------------------------------------------------------------------
    def spawn(
        self,
        sandbox_id: str,
        cmd: str,
        env: dict[str, str],
        cwd: str,
        options: SpawnOptions | None = None,
    ) -> SupervisorProcess | NotStarted:
        """A command the system refuses to run (e.g. longer than an argument may be) starts
        as a process that says why and exits with 126, as a shell's would. ``options``: all
        of SpawnOptions (the supervisor's own pty and timeout)."""
        o = options or SpawnOptions()
        full_env = {"HOME": SANDBOX_HOME, "USER": SANDBOX_USER, "LANG": "C.UTF-8", **env}
        program = list(o.argv) or ["/bin/bash", "-c", "--", cmd]
        try:
            # The fast way: the supervisor moves to the directory and runs the program itself.
            return self._spawn(sandbox_id, program, cwd, full_env, o)
        except SandboxError as exc:
            if "exec" not in str(exc):
                raise
        # The directory or the program is not there (or not usable): through the shell
        # wrapper, which says so as a shell would (the same words as the Docker backend).
        if o.argv:
            wrapped = ["/bin/sh", "-c", _SPAWN_ARGV, "paddock", cwd, *o.argv]
        else:
            wrapped = ["/bin/sh", "-c", _SPAWN, "paddock", cwd, cmd]
        try:
            return self._spawn(sandbox_id, wrapped, "", full_env, o)
        except SandboxError as exc:
            if "fork/exec" not in str(exc):
                raise
            return NotStarted(f"paddock: cannot run the command: {exc}")

    def _spawn(
        self, sandbox_id: str, argv: list[str], cwd: str, env: dict[str, str], o: SpawnOptions
    ) -> SupervisorProcess:
        """Raises SandboxError (the supervisor's refusal), SandboxGone."""
        proc: Process = self._call(
            sandbox_id,
            lambda ch: ch.spawn(
                argv=argv,
                env=env,
                cwd=cwd or None,
                stdin=o.stdin,
                timeout=o.timeout or None,
                pty=o.pty,
            ),
        )
        return SupervisorProcess(self, sandbox_id, proc)

    def attach(self, sandbox_id: str, pid: int, after_seq: int) -> Process:
        """Follow process ``pid`` again from ``after_seq``. Raises SandboxError (the sandbox
        failed or the supervisor does not know the process), SandboxGone."""
        return self._call(sandbox_id, lambda ch: ch.attach(pid, after_seq))

    def adopt(self, sandbox_id: str, ref: str, after_seq: int) -> SupervisorProcess:
        """The handle of a process a previous worker started (``ref`` from its handle),
        following its output after ``after_seq``. Raises SandboxError when it cannot."""
        if not ref.isdigit():
            raise SandboxError(f"not a process of this backend: {ref!r}")
        return SupervisorProcess(self, sandbox_id, self.attach(sandbox_id, int(ref), after_seq))

    def signal(self, sandbox_id: str, pid: int, name: str) -> None:
        self._call(sandbox_id, lambda ch: ch.call("proc.signal", pid=pid, signal=name))

    def kill_group_from_host(self, sandbox_id: str, pgid: int) -> bool:
        """SIGKILL a process group from the host (driver.kill_group_from_host); False when
        nothing was signalled (the group is gone, or the cgroup is not visible here)."""
        cid = self.driver._container_id(sandbox_id)
        return bool(cid and kill_group_from_host(cid, pgid))

    # -- files -----------------------------------------------------------------------------------
    def list_dir(self, sandbox_id: str, path: str) -> list[tuple[str, bool]]:
        entries = self._call(sandbox_id, lambda ch: ch.list_dir(path, 1), path)
        limit = self.settings.max_file_bytes
        if sum(len(e["name"]) + 1 for e in entries) > limit:
            raise FileTooLarge(f"the directory listing is larger than {limit} bytes: {path}")
        return sorted((e["name"], e["type"] == "dir") for e in entries)

    def read_file(self, sandbox_id: str, path: str) -> bytes:
        return self._read(sandbox_id, path, self.settings.max_file_bytes, strict=True)

    def _read(self, sandbox_id: str, path: str, limit: int, strict: bool) -> bytes:
        """The file's bytes; past ``limit``: FileTooLarge when ``strict``, else the first
        ``limit`` bytes."""

        def read(ch: Channel) -> bytes:
            data = bytearray()
            chunks = ch.read_file(path)
            try:
                for chunk in chunks:
                    data += chunk
                    if len(data) > limit and strict:
                        raise FileTooLarge(f"file is larger than {limit} bytes: {path}")
                    if len(data) >= limit:
                        break
            except SupervisorError as exc:
                if exc.code != "invalid":  # fs.read's word for anything but a regular file
                    raise
                raise NotARegularFile(
                    f"not a regular file (a FIFO, socket or device): {path}"
                ) from None
            finally:
                chunks.close()  # type: ignore[attr-defined]
            return bytes(data[:limit])

        return self._call(sandbox_id, read, path)

    def write_file(self, sandbox_id: str, path: str, data: bytes) -> None:
        """Like the Docker backend: through a symlink to its file, never onto a directory,
        FIFO, socket or device (NotARegularFile, IsADirectory), parents created."""
        target, entry = self._resolve(sandbox_id, path)
        if entry is not None and entry["type"] == "dir":
            raise IsADirectory(f"is a directory: {path}")
        if entry is not None and entry["type"] != "file":
            raise NotARegularFile(f"not a regular file (a FIFO, socket or device): {path}")
        parent = posixpath.dirname(target)
        if entry is None and parent not in ("", "/"):
            self._call(sandbox_id, lambda ch: ch.mkdir(parent, parents=True), parent)
        self._call(sandbox_id, lambda ch: ch.write_file(target, data), path)

    def _resolve(self, sandbox_id: str, path: str) -> tuple[str, dict[str, Any] | None]:
        """``path`` with its symlinks followed (at most 8, inside the sandbox: the supervisor
        sees only the sandbox), and its entry; None when nothing is there (a dangling link
        gives its target's path)."""
        for _ in range(8):
            try:
                entry: dict[str, Any] = self._call(sandbox_id, lambda ch, p=path: ch.stat(p), path)
            except PathNotFound:
                return path, None
            if entry["type"] != "symlink":
                return path, entry
            target = str(entry.get("target") or "")
            path = posixpath.join(posixpath.dirname(path), target)
        raise SandboxError(f"too many levels of symbolic links: {path}")

    def make_dir(self, sandbox_id: str, path: str) -> None:
        try:
            self._call(sandbox_id, lambda ch: ch.mkdir(path, parents=True), path)
        except NotADirectory:
            raise PathExists(f"a file exists at this path: {path}") from None

    def remove(self, sandbox_id: str, path: str) -> None:
        # What `rm -rf` refuses (the Docker backend's answer): the root, `.` and `..`.
        full = posixpath.normpath(posixpath.join(SANDBOX_HOME, path))
        if full == "/" or posixpath.basename(path.rstrip("/")) in (".", ".."):
            raise PermissionDenied(f"refusing to remove this directory: {path}")
        self._call(sandbox_id, lambda ch: ch.remove(path, recursive=True), path)

    def ports(self, sandbox_id: str) -> list[dict[str, Any]]:
        limit = self.settings.max_file_bytes
        tables = []
        for name in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                tables.append(self._read(sandbox_id, name, limit, strict=False))
            except PathNotFound:
                continue
        return parse_listening(b"".join(tables)[:limit].decode("ascii", "replace"))

    # -- the envd protocol's entries and moves (web/api/envd) ------------------------------------
    def stat(self, sandbox_id: str, path: str) -> dict[str, Any]:
        """The entry at ``path``, symlinks not followed (FsEntry JSON)."""
        entry: dict[str, Any] = self._call(sandbox_id, lambda ch: ch.stat(path), path)
        return _entry(entry)

    def move(self, sandbox_id: str, path: str, dst: str) -> None:
        self._call(sandbox_id, lambda ch: ch.move(path, dst), path)

    def entries(self, sandbox_id: str, path: str, depth: int) -> list[dict[str, Any]]:
        """At most PADDOCK_MAX_FILE_BYTES of names and paths (FileTooLarge past it: the
        listing travels back whole through Redis); depth 1-64 (the supervisor's bound)."""
        depth = min(max(depth, 1), 64)
        found = self._call(sandbox_id, lambda ch: ch.list_dir(path, depth), path)
        limit = self.settings.max_file_bytes
        if sum(len(e["name"]) + len(e["path"]) + 64 for e in found) > limit:
            raise FileTooLarge(f"the directory listing is larger than {limit} bytes: {path}")
        return [_entry(e) for e in found]

    def watch(self, sandbox_id: str, path: str, recursive: bool) -> SupervisorWatch:
        """The supervisor's ``fs.watch`` (inotify; at most 64 per sandbox and 4096 directories
        each: QuotaExceeded past either)."""

        def watch(ch: Channel) -> SupervisorWatch:
            try:
                return SupervisorWatch(ch.watch(path, recursive))
            except SupervisorError as exc:
                if exc.code != "busy":
                    raise
                raise QuotaExceeded(
                    "the sandbox watches too much already (at most 64 watches, 4096 "
                    f"directories each): {path}"
                ) from None

        handle: SupervisorWatch = self._call(sandbox_id, watch, path)
        return handle


def _refusal(exc: SupervisorError, path: str | None) -> SandboxError:
    """The Paddock error for a supervisor's refusal."""
    cls, words = _ERRORS.get(exc.code, (SandboxError, ""))
    if cls is SandboxError and path is not None:  # e.g. `io`: the system's words say which
        text = exc.message.lower()
        for needle, found in MESSAGE_ERRORS:
            if needle.lower() in text:
                cls, words = found, needle
                break
    if cls is NotARegularFile:
        words = "not a regular file (a FIFO, socket or device)"
    return cls(f"{words}: {path}" if words and path is not None else exc.message)


def _entry(raw: dict[str, Any]) -> dict[str, Any]:
    """A supervisor's entry (channel-validated) as shared.commands.FsEntry's JSON."""
    return {
        "name": str(raw["name"]),
        "path": str(raw["path"]),
        "type": str(raw["type"]),
        "size": int(raw.get("size") or 0),
        "mode": int(raw.get("mode") or 0),
        "mtime": float(raw.get("mtime") or 0),
        "target": str(raw.get("target") or ""),
    }
