"""The sandbox driver: every operation on a sandbox, over the Docker API.

Takes the Docker client and settings as parameters and imports nothing from Celery. Filesystem
operations run inside the sandbox as its non-root user, so the API can do exactly what the
sandbox's own processes can do and no more.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from typing import Any

import docker
import docker.errors

from shared.errors import (
    FileTooLarge,
    IsADirectory,
    NotADirectory,
    PathExists,
    PathNotFound,
    PermissionDenied,
    SandboxError,
    SandboxGone,
)
from shared.settings import Settings
from workers import docker_exec

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
    87: PathExists,
}
_STDERR_ERRORS: list[tuple[str, type[SandboxError]]] = [
    ("No such file or directory", PathNotFound),
    ("Not a directory", NotADirectory),
    ("Is a directory", IsADirectory),
    ("Permission denied", PermissionDenied),
    ("Read-only file system", PermissionDenied),
    ("File exists", PathExists),
]

_LIST = r"""p=$1
[ -e "$p" ] || { echo "no such file or directory: $p" >&2; exit 82; }
[ -d "$p" ] || { echo "not a directory: $p" >&2; exit 83; }
exec find "$p" -mindepth 1 -maxdepth 1 -printf '%Y\t%f\0'
"""
_READ = r"""p=$1
[ -e "$p" ] || { echo "no such file or directory: $p" >&2; exit 82; }
[ -d "$p" ] && { echo "is a directory: $p" >&2; exit 84; }
exec head -c "$2" -- "$p"
"""
_WRITE = r"""p=$1
[ -d "$p" ] && { echo "is a directory: $p" >&2; exit 84; }
mkdir -p -- "$(dirname -- "$p")" && exec cat > "$p"
"""
_MKDIR = r"""p=$1
[ -e "$p" ] && [ ! -d "$p" ] && { echo "a file exists at this path: $p" >&2; exit 87; }
exec mkdir -p -- "$p"
"""
_REMOVE = r"""p=$1
[ -e "$p" ] || [ -L "$p" ] || { echo "no such file or directory: $p" >&2; exit 82; }
exec rm -rf -- "$p"
"""
# Starts a process: report our pid (docker exec makes it a process group leader, so the pid is
# also the group to kill), move to the working directory, become the user's command.
_SPAWN = r"""echo "$$" >&2
cd -- "$1" 2>/dev/null || { echo "rootdir does not exist or is not a directory: $1" >&2; exit 1; }
exec /bin/bash -c "$2"
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
        # exec: compilers build into /tmp and run from there.
        "tmpfs": {"/tmp": f"rw,exec,nosuid,nodev,size={s.sandbox_tmp_size},mode=1777"},
        "ipc_mode": "private",
    }
    if s.sandbox_disk:
        options["storage_opt"] = {"size": str(s.sandbox_disk)}
    return options


class DockerDriver:
    """Create, inspect and destroy sandboxes and act inside them."""

    def __init__(self, client: docker.DockerClient, settings: Settings) -> None:
        self.client = client
        self.settings = settings

    def container_name(self, sandbox_id: str) -> str:
        return f"paddock-{self.settings.instance}-{sandbox_id}"

    # -- lifecycle ---------------------------------------------------------------------------
    def create(self, sandbox_id: str, tenant_id: str, image: str) -> None:
        """Start the sandbox's container, hardened. Raises docker.errors.APIError on failure."""
        s = self.settings
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
            **hardening(s),
        )
        logger.info("sandbox %s: container started from %s", sandbox_id, image)

    def destroy(self, sandbox_id: str, container: str | None = None) -> None:
        """Remove the sandbox's container (by name, or the given id) if it exists."""
        try:
            self.client.api.remove_container(
                container or self.container_name(sandbox_id), force=True
            )
            logger.info("sandbox %s: container removed", sandbox_id)
        except docker.errors.NotFound:
            logger.info("sandbox %s: container already gone", sandbox_id)

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
    def list_dir(self, sandbox_id: str, path: str) -> list[tuple[str, bool]]:
        out = self._script(sandbox_id, _LIST, path)
        entries = []
        for item in out.split(b"\0"):
            if not item:
                continue
            kind, _, name = item.decode("utf-8", "replace").partition("\t")
            entries.append((name, kind == "d"))
        return sorted(entries)

    def read_file(self, sandbox_id: str, path: str) -> bytes:
        limit = self.settings.max_file_bytes
        data = self._script(sandbox_id, _READ, path, str(limit + 1))
        if len(data) > limit:
            raise FileTooLarge(f"file is larger than {limit} bytes: {path}")
        return data

    def write_file(self, sandbox_id: str, path: str, data: bytes) -> None:
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
                self.client,
                self.container_name(sandbox_id),
                ["/bin/sh", "-c", _SPAWN, "paddock", cwd, cmd],
                user=SANDBOX_USER,
                env=full_env,
            )
        except docker.errors.NotFound as exc:
            raise SandboxGone() from exc

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
        try:
            return docker_exec.run(
                self.client,
                self.container_name(sandbox_id),
                argv,
                SANDBOX_USER,
                stdin=stdin,
                timeout=self.settings.task_timeout,
                max_stdout=max_stdout,
            )
        except docker.errors.NotFound as exc:
            raise SandboxGone() from exc
        except docker.errors.APIError as exc:
            if exc.status_code == 409:  # container is not running
                raise SandboxGone() from exc
            raise

    def _script(
        self, sandbox_id: str, script: str, *args: str, stdin: bytes | None = None
    ) -> bytes:
        code, out, err = self._run(sandbox_id, ["/bin/sh", "-c", script, "paddock", *args], stdin)
        if code == 0:
            return out
        message = err.decode("utf-8", "replace").strip().splitlines()
        text = message[-1] if message else f"command failed with exit code {code}"
        text = re.sub(r"^(/bin/sh|sh|paddock|mkdir|rm|cat|head|find): (\d+: )?", "", text)
        cls = _EXIT_ERRORS.get(code)
        if cls is None:
            cls = next((c for needle, c in _STDERR_ERRORS if needle in text), SandboxError)
        raise cls(text)


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
