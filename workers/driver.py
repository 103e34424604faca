"""The sandbox driver: every operation on a sandbox, over the Docker API.

Takes the Docker client and settings as parameters and imports nothing from Celery. Filesystem
operations run inside the sandbox as its non-root user, so the API can do exactly what the
sandbox's own processes can do and no more.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import time
from functools import cached_property
from typing import Any

import docker
import docker.errors
import requests

from shared.errors import (
    FileTooLarge,
    IsADirectory,
    NotADirectory,
    NotARegularFile,
    PathExists,
    PathNotFound,
    PermissionDenied,
    SandboxError,
    SandboxGone,
    SandboxTimeout,
)
from shared.settings import Settings
from workers import docker_exec
from workers.storage import ImageSeeds, SandboxStorage

logger = logging.getLogger(__name__)

SANDBOX_USER = "user"
SANDBOX_HOME = "/home/user"
LABEL_SANDBOX = "paddock.sandbox"
LABEL_TENANT = "paddock.tenant"
LABEL_HOST = "paddock.host"
LABEL_INSTANCE = "paddock.instance"

# Exit codes our small scripts use to say what went wrong (out of the range the shell and
# coreutils use themselves); stderr carries the message.
_EXIT_ERRORS: dict[int, type[SandboxError]] = {
    82: PathNotFound,
    83: NotADirectory,
    84: IsADirectory,
    85: NotARegularFile,
    87: PathExists,
}
_STDERR_ERRORS: list[tuple[str, type[SandboxError]]] = [
    ("No such file or directory", PathNotFound),
    ("Not a directory", NotADirectory),
    ("Is a directory", IsADirectory),
    ("Permission denied", PermissionDenied),
    ("Read-only file system", PermissionDenied),
    ("File exists", PathExists),
    # A FIFO/socket swapped in after the check, opened without blocking (ENXIO, EAGAIN).
    ("No such device or address", NotARegularFile),
    ("Resource temporarily unavailable", NotARegularFile),
]
# What `timeout -s KILL` (and a SIGKILL) leave as the exit code.
_KILLED = (124, 137)
# Seconds the host waits past settings.fs_timeout before it gives up on the command itself.
_HOST_GRACE = 2.0

# Every script gets its path as $1 (never parsed as an option: `sh -c SCRIPT NAME ARGS...`) and
# hands it to each tool after `--`. `find` and `dd` have no `--`, and `find` takes an operand
# starting with `-`, `(` or `!` for an expression (`-delete`!): so a relative path becomes
# `./path` first, which names the same file and starts with neither. Messages show $1.
_PATH = """case $1 in /*) p=$1 ;; *) p=./$1 ;; esac
"""
_LIST = (
    _PATH
    + r"""[ -e "$p" ] || { echo "no such file or directory: $1" >&2; exit 82; }
[ -d "$p" ] || { echo "not a directory: $1" >&2; exit 83; }
exec find "$p" -mindepth 1 -maxdepth 1 -printf '%Y\t%f\0'
"""
)
# Only regular files (or links to one) are read: a FIFO would block the reader, a device
# could be endless. The file is opened non-blocking, so one swapped for a FIFO after the
# check fails at once instead of waiting for a writer.
_READ = (
    _PATH
    + r"""[ -e "$p" ] || { echo "no such file or directory: $1" >&2; exit 82; }
[ -d "$p" ] && { echo "is a directory: $1" >&2; exit 84; }
[ -f "$p" ] || { echo "not a regular file (a FIFO, socket or device): $1" >&2; exit 85; }
exec dd if="$p" iflag=nonblock,count_bytes bs=1M count="$2" status=none
"""
)
# The same for writes: never onto an existing FIFO, socket or device; a new path is created.
_WRITE = (
    _PATH
    + r"""[ -d "$p" ] && { echo "is a directory: $1" >&2; exit 84; }
if [ -e "$p" ] && [ ! -f "$p" ]; then
  echo "not a regular file (a FIFO, socket or device): $1" >&2; exit 85
fi
mkdir -p -- "$(dirname -- "$p")" && exec dd of="$p" oflag=nonblock bs=1M status=none
"""
)
_MKDIR = (
    _PATH
    + r"""[ -e "$p" ] && [ ! -d "$p" ] && { echo "a file exists at this path: $1" >&2; exit 87; }
exec mkdir -p -- "$p"
"""
)
_REMOVE = (
    _PATH
    + r"""[ -e "$p" ] || [ -L "$p" ] || { echo "no such file or directory: $1" >&2; exit 82; }
exec rm -rf -- "$p"
"""
)
# Starts a process: report our pid (docker exec makes it a process group leader, so the pid is
# also the group to kill), move to the working directory, become the user's command (after
# `--`: a command starting with `-` is a command, not a bash option).
_SPAWN = r"""echo "$$" >&2
case $1 in /*) d=$1 ;; *) d=./$1 ;; esac
cd -- "$d" 2>/dev/null || { echo "rootdir does not exist or is not a directory: $1" >&2; exit 1; }
exec /bin/bash -c -- "$2"
"""


def hardening(s: Settings) -> dict[str, Any]:
    """The container options that confine a sandbox (``containers.run`` keyword arguments)."""
    options: dict[str, Any] = {
        "privileged": False,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "pids_limit": s.sandbox_pids,
        "mem_limit": s.sandbox_memory,
        "memswap_limit": s.sandbox_memory,  # = memory: no swap on top
        "nano_cpus": int(s.sandbox_cpus * 1e9),
        "network_mode": "bridge" if s.sandbox_network == "internet" else "none",
        # Nothing of the image is writable: a sandbox writes only to its own capped storage
        # (workers/storage.py), which DockerDriver.create mounts on the writable paths.
        "read_only": True,
        "ipc_mode": "private",
    }
    return options


class DockerDriver:
    """Create, inspect and destroy sandboxes and act inside them."""

    def __init__(
        self,
        client: docker.DockerClient,
        settings: Settings,
        storage: SandboxStorage | None = None,
    ) -> None:
        self.client = client
        self.settings = settings
        self.storage = storage or SandboxStorage(settings)
        self.seeds = ImageSeeds(client, self.storage.seed_dir)
        self._container_ids: dict[str, str] = {}

    def container_name(self, sandbox_id: str) -> str:
        return f"paddock-{self.settings.instance}-{sandbox_id}"

    @cached_property
    def exec_client(self) -> docker.DockerClient:
        """The client of every exec (file operations, process starts, kills): its API calls
        give up after settings.fs_timeout (+ grace) instead of the engine client's minute. A
        tenant can wedge its own container's execs (SIGSTOP the `runc init` of one), after
        which the engine blocks every exec call on that container; a host thread must not wait
        a minute for each. Built like the engine client (WorkerContext.docker): from the env.
        """
        timeout = self.settings.fs_timeout + _HOST_GRACE
        return docker.DockerClient.from_env(timeout=timeout, max_pool_size=256)

    # -- lifecycle ---------------------------------------------------------------------------
    def create(self, sandbox_id: str, tenant_id: str, image: str) -> None:
        """Make the sandbox's capped storage, seeded with the image's home and /workspace, and
        start its container, hardened, with that storage on its writable paths.

        Raises docker.errors.APIError, StorageError, NoCapacity (the host's disk is promised
        to other sandboxes); on failure neither container nor storage is left.
        """
        s = self.settings
        seeds = self.seeds.for_image(self.client.api.inspect_image(image)["Id"])
        binds = self.storage.create(sandbox_id, seeds)
        try:
            self.client.containers.run(
                image,
                command=["sleep", "infinity"],
                name=self.container_name(sandbox_id),
                hostname="sandbox",
                detach=True,
                init=True,
                user=SANDBOX_USER,
                working_dir=SANDBOX_HOME,
                labels={
                    LABEL_SANDBOX: sandbox_id,
                    LABEL_TENANT: tenant_id,
                    LABEL_HOST: s.host_id,
                    LABEL_INSTANCE: s.instance,
                },
                # Mounts, not binds: a missing source is an error rather than a new empty
                # directory, so a sandbox never silently writes outside its storage.
                mounts=[
                    docker.types.Mount(target, source, type="bind")
                    for target, source in binds.items()
                ],
                **hardening(s),
            )
        except BaseException:
            logger.warning("sandbox %s: start failed, removing container and storage", sandbox_id)
            try:
                self.destroy(sandbox_id)
            except Exception:  # the start's error is the one to report
                logger.exception("sandbox %s: cleanup after a failed start failed", sandbox_id)
            raise
        logger.info("sandbox %s: container started from %s", sandbox_id, image)

    def destroy(self, sandbox_id: str, container: str | None = None) -> None:
        """Remove the sandbox's container (by name, or the given id) and then its storage, if
        they exist. Raises StorageError when the storage cannot be freed (retry later)."""
        try:
            self.client.api.remove_container(
                container or self.container_name(sandbox_id), force=True
            )
            logger.info("sandbox %s: container removed", sandbox_id)
        except docker.errors.NotFound:
            logger.info("sandbox %s: container already gone", sandbox_id)
        self.storage.release(sandbox_id)

    def list_sandboxes(self) -> dict[str, str]:
        """Sandbox id → container id of every container of this host and instance."""
        found = self.client.api.containers(
            all=True,
            filters={
                "label": [
                    f"{LABEL_INSTANCE}={self.settings.instance}",
                    f"{LABEL_HOST}={self.settings.host_id}",
                ]
            },
        )
        return {c["Labels"][LABEL_SANDBOX]: c["Id"] for c in found if LABEL_SANDBOX in c["Labels"]}

    # -- filesystem --------------------------------------------------------------------------
    # Each operation runs under settings.fs_timeout, inside the sandbox (`timeout -s KILL`, so
    # nothing is left running there) and on the host (the exec's deadline, which holds even
    # when the tenant stops our process): a worker thread is never held for longer.
    def list_dir(self, sandbox_id: str, path: str) -> list[tuple[str, bool]]:
        """Raises PathNotFound, NotADirectory, FileTooLarge (a listing over max_file_bytes),
        SandboxTimeout, SandboxGone."""
        limit = self.settings.max_file_bytes
        out = self._script(sandbox_id, _LIST, path, max_stdout=limit)
        if len(out) > limit:
            raise FileTooLarge(f"the directory listing is larger than {limit} bytes: {path}")
        entries = []
        for item in out.split(b"\0"):
            if not item:
                continue
            kind, _, name = item.decode("utf-8", "replace").partition("\t")
            entries.append((name, kind == "d"))
        return sorted(entries)

    def read_file(self, sandbox_id: str, path: str) -> bytes:
        """A regular file's bytes. Raises PathNotFound, IsADirectory, NotARegularFile (a FIFO,
        socket or device), FileTooLarge, SandboxTimeout, SandboxGone."""
        limit = self.settings.max_file_bytes
        data = self._script(sandbox_id, _READ, path, str(limit + 1), max_stdout=limit + 1)
        if len(data) > limit:
            raise FileTooLarge(f"file is larger than {limit} bytes: {path}")
        return data

    def write_file(self, sandbox_id: str, path: str, data: bytes) -> None:
        """Create or replace a regular file (parents created). Raises IsADirectory,
        NotARegularFile, PermissionDenied, SandboxTimeout, SandboxGone."""
        self._script(sandbox_id, _WRITE, path, stdin=data)

    def make_dir(self, sandbox_id: str, path: str) -> None:
        self._script(sandbox_id, _MKDIR, path)

    def remove(self, sandbox_id: str, path: str) -> None:
        self._script(sandbox_id, _REMOVE, path)

    def ports(self, sandbox_id: str) -> list[dict[str, Any]]:
        """The sandbox's listening TCP sockets, from its own /proc/net/tcp{,6}."""
        _code, out, _ = self._run(sandbox_id, ["cat", "/proc/net/tcp", "/proc/net/tcp6"])
        return parse_listening(out.decode("ascii", "replace"))

    # -- processes ---------------------------------------------------------------------------
    def spawn(
        self, sandbox_id: str, cmd: str, env: dict[str, str], cwd: str
    ) -> docker_exec.Attached:
        full_env = {"HOME": SANDBOX_HOME, "USER": SANDBOX_USER, "LANG": "C.UTF-8", **env}
        try:
            return docker_exec.start(
                self.exec_client,
                self.container_name(sandbox_id),
                ["/bin/sh", "-c", _SPAWN, "paddock", cwd, cmd],
                user=SANDBOX_USER,
                env=full_env,
            )
        except docker.errors.NotFound as exc:
            raise SandboxGone() from exc
        except requests.exceptions.Timeout:
            limit = self.settings.fs_timeout + _HOST_GRACE
            message = f"the sandbox did not start the process within {limit:g}s"
            raise SandboxTimeout(message) from None

    def oom_kills(self, sandbox_id: str) -> int | None:
        """How many processes the kernel's OOM killer has ended in the sandbox so far, read
        from its memory cgroup on the host (cgroup v1 or v2, cgroupfs or systemd driver);
        None when that cannot be read (e.g. the worker runs in a container)."""
        cid = self._container_ids.get(sandbox_id)
        if cid is None:
            try:
                cid = str(self.client.api.inspect_container(self.container_name(sandbox_id))["Id"])
            except docker.errors.APIError:
                return None
            if len(self._container_ids) > 4096:
                self._container_ids.clear()  # ids of removed sandboxes; cheap to look up again
            self._container_ids[sandbox_id] = cid
        for path in _oom_files(cid):
            try:
                with open(path, encoding="ascii") as f:
                    for line in f:
                        name, _, value = line.partition(" ")
                        if name == "oom_kill":
                            return int(value)
            except (OSError, ValueError):
                continue
        return None

    def kill_group(self, sandbox_id: str, pgid: int) -> None:
        """SIGKILL a process group inside the sandbox (as the sandbox user: no capability)."""
        self._run(sandbox_id, ["kill", "-KILL", "--", f"-{pgid}"])

    # -- helpers -----------------------------------------------------------------------------
    def _run(
        self,
        sandbox_id: str,
        argv: list[str],
        stdin: bytes | None = None,
        max_stdout: int | None = None,
    ) -> tuple[int, bytes, bytes]:
        """Run a short command in the sandbox under settings.fs_timeout. Raises
        SandboxTimeout, SandboxGone."""
        limit = self.settings.fs_timeout
        # The host's deadline is a little longer, so that normally the sandbox's own `timeout`
        # ends the command and leaves an exit code; the host's only fires when it cannot.
        argv = ["timeout", "-s", "KILL", f"{limit:g}", *argv]
        try:
            return docker_exec.run(
                self.exec_client,
                self.container_name(sandbox_id),
                argv,
                SANDBOX_USER,
                stdin=stdin,
                timeout=limit + _HOST_GRACE,
                max_stdout=max_stdout,
            )
        except (SandboxTimeout, requests.exceptions.Timeout):
            raise SandboxTimeout(_timed_out(limit)) from None
        except docker.errors.NotFound as exc:
            raise SandboxGone() from exc
        except docker.errors.APIError as exc:
            if exc.status_code == 409:  # container is not running
                raise SandboxGone() from exc
            raise

    def _script(
        self,
        sandbox_id: str,
        script: str,
        *args: str,
        stdin: bytes | None = None,
        max_stdout: int | None = None,
    ) -> bytes:
        argv = ["/bin/sh", "-c", script, "paddock", *args]
        started = time.monotonic()
        code, out, err = self._run(sandbox_id, argv, stdin, max_stdout)
        if code == 0:
            return out
        limit = self.settings.fs_timeout
        if code in _KILLED and time.monotonic() - started >= limit:
            raise SandboxTimeout(_timed_out(limit))
        message = err.decode("utf-8", "replace").strip().splitlines()
        text = message[-1] if message else f"command failed with exit code {code}"
        text = re.sub(r"^(/bin/sh|sh|paddock|mkdir|rm|cat|dd|find|timeout): (\d+: )?", "", text)
        cls = _EXIT_ERRORS.get(code)
        if cls is None:
            cls = next((c for needle, c in _STDERR_ERRORS if needle in text), SandboxError)
        raise cls(text)


def _timed_out(limit: float) -> str:
    return (
        f"the file operation did not finish within {limit:g}s inside the sandbox "
        "(PADDOCK_FS_TIMEOUT) and was stopped"
    )


def _oom_files(container_id: str) -> list[str]:
    base = "/sys/fs/cgroup"
    return [
        f"{base}/memory/docker/{container_id}/memory.oom_control",
        f"{base}/memory/system.slice/docker-{container_id}.scope/memory.oom_control",
        f"{base}/docker/{container_id}/memory.events",
        f"{base}/system.slice/docker-{container_id}.scope/memory.events",
    ]


def parse_listening(proc_net: str) -> list[dict[str, Any]]:
    """Parse /proc/net/tcp and tcp6 text into E2B port records (LISTEN sockets only)."""
    seen: set[tuple[str, int]] = set()
    ports: list[dict[str, Any]] = []
    for line in proc_net.splitlines():
        parts = line.split()
        if len(parts) < 4 or parts[3] != "0A" or ":" not in parts[1]:
            continue
        hex_ip, hex_port = parts[1].rsplit(":", 1)
        try:
            ip, port = _hex_ip(hex_ip), int(hex_port, 16)
        except ValueError:
            continue
        if (ip, port) not in seen:
            seen.add((ip, port))
            ports.append({"State": "LISTEN", "Ip": ip, "Port": port})
    return ports


def _hex_ip(h: str) -> str:
    raw = bytes.fromhex(h)
    if len(raw) == 4:
        return ".".join(str(b) for b in raw[::-1])
    if len(raw) != 16:
        raise ValueError(h)
    # IPv6 is four 32-bit words, each in host (little-endian) order.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    return str(ipaddress.IPv6Address(words))
