"""The sandbox driver: every operation on a sandbox, over the Docker API.

Takes the Docker client and settings as parameters and imports nothing from Celery. Filesystem
operations run inside the sandbox as its non-root user, so the API can do exactly what the
sandbox's own processes can do and no more.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import re
import signal
import time
from collections.abc import Callable, Sequence
from functools import cached_property
from typing import Any

import docker
import docker.errors
import requests

from shared.egress import NetworkPolicy
from shared.errors import (
    EngineUnavailable,
    FileTooLarge,
    IsADirectory,
    NotADirectory,
    NotARegularFile,
    PathExists,
    PathNotFound,
    PermissionDenied,
    SandboxError,
    SandboxGone,
    SandboxPaused,
    SandboxTimeout,
)
from shared.settings import Settings
from workers.backends.base import SANDBOX_HOME, SANDBOX_USER, ResourceUsage
from workers.backends.docker import docker_exec
from workers.backends.docker.egress import (
    CLOSED,
    LABEL_NETWORK,
    Attached,
    Egress,
    attached_from,
    policy_label,
)
from workers.backends.docker.storage import ImageSeeds, SandboxStorage

logger = logging.getLogger(__name__)

LABEL_SANDBOX = "paddock.sandbox"
LABEL_TENANT = "paddock.tenant"
LABEL_HOST = "paddock.host"
LABEL_INSTANCE = "paddock.instance"
# A warm pool's sandbox (workers/host/pool.py): its network mode; "" for any other sandbox.
LABEL_WARM = "paddock.warm"
# The rules of a warm sandbox with internet until it is claimed: everything refused, the
# host's resolvers included (a mode "none" policy on the internet network: egress.py ruleset).
WARM_CLOSED = CLOSED
# Where sandboxes find their CA bundle (Debian's path), replaced when PADDOCK_SANDBOX_CA_BUNDLE.
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"

# Exit codes our small scripts use to say what went wrong (out of the range the shell and
# coreutils use themselves); stderr carries the message.
_EXIT_ERRORS: dict[int, type[SandboxError]] = {
    82: PathNotFound,
    83: NotADirectory,
    84: IsADirectory,
    85: NotARegularFile,
    86: PermissionDenied,  # _REMOVE: rm refused
    87: PathExists,
}
MESSAGE_ERRORS: list[tuple[str, type[SandboxError]]] = [
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
# What the engine reports when its runtime cannot start the exec'd command.
_EXEC_FAILED = 126
# Seconds the host waits past settings.fs_timeout before it gives up on the command itself.
_HOST_GRACE = 2.0
# Removing a container (`rm -f`) takes well under a second, unless the engine is stuck on it: a
# tenant that SIGSTOPs the `runc init` of one of our execs blocks every engine call on its
# container (exec, inspect, kill, rm) until that process runs again. The control client's calls
# give up after this many seconds; the host then kills the container's processes itself.
_CONTROL_TIMEOUT = 10.0
_REMOVE_TRIES = 3
# How long a removal the engine had begun may take to finish once the processes are dead.
_GONE_WAIT = 5.0
_KILL_ROUNDS = 10
_CGROUP_ROOT = "/sys/fs/cgroup"
_CONTAINER_ID = re.compile(r"^[0-9a-f]{64}$")
# What an engine call raises when it times out (requests) or is refused (docker).
_ENGINE_ERRORS = (requests.exceptions.RequestException, docker.errors.APIError)
ENGINE_ERRORS = _ENGINE_ERRORS
# Container states (the engine's listing) in which a sandbox is alive: a paused container is
# frozen, not dead (it runs on when unpaused), so it is not lost.
ALIVE_STATES = frozenset({"running", "paused", "restarting"})

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
# rm -rf fails only where removing is not allowed (read-only or busy mounts, /proc, `.`,
# `..`, the root): that is the caller's 403, with rm's own last line, never a 500. A signal
# (the fs timeout's kill) keeps its exit code.
_REMOVE = (
    _PATH
    + r"""[ -e "$p" ] || [ -L "$p" ] || { echo "no such file or directory: $1" >&2; exit 82; }
[ "$p" -ef / ] && { echo "refusing to remove the root directory: $1" >&2; exit 86; }
rm -rf -- "$p" || { c=$?; [ "$c" -gt 128 ] && exit "$c"; exit 86; }
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
# The same for a program and its arguments ("$3"...), its stdin /dev/null unless "$2" is 1.
_SPAWN_ARGV = r"""echo "$$" >&2
case $1 in /*) d=$1 ;; *) d=./$1 ;; esac
cd -- "$d" 2>/dev/null || { echo "rootdir does not exist or is not a directory: $1" >&2; exit 1; }
[ "$2" = 1 ] || exec </dev/null
shift 2
exec "$@"
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
        # Nothing of the image is writable: a sandbox writes only to its own capped storage
        # (storage.py), which DockerDriver.create mounts on the writable paths.
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
        egress: Egress | None = None,
    ) -> None:
        self.client = client
        self.settings = settings
        self.storage = storage or SandboxStorage(settings)
        self.egress = egress or Egress(client, settings)
        self.seeds = ImageSeeds(client, self.storage.seed_dir)
        self._container_ids: dict[str, str] = {}
        # What the container runs, and what a backend built on this driver adds to it (the
        # supervisor backend: its binary's mount and the attached stdin it talks over).
        self.command: list[str] = ["sleep", "infinity"]
        self.extra_mounts: list[docker.types.Mount] = []
        self.extra_options: dict[str, Any] = {}
        # Called with the sandbox id when the engine says its container is gone or not
        # running (workers/host/reconcile.py wakes its reconcile, which marks the sandbox lost).
        self.on_gone: Callable[[str], None] | None = None

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

    @cached_property
    def control_client(self) -> docker.DockerClient:
        """The client of removals and of container look-ups made while a sandbox may be
        wedged (destroy, oom_kills): its calls give up after _CONTROL_TIMEOUT seconds."""
        return docker.DockerClient.from_env(timeout=_CONTROL_TIMEOUT, max_pool_size=64)

    # -- lifecycle ---------------------------------------------------------------------------
    def create(
        self,
        sandbox_id: str,
        tenant_id: str,
        image: str,
        network: NetworkPolicy | None = None,
        warm: bool = False,
    ) -> None:
        """Make the sandbox's capped storage, seeded with the image's home and /workspace, and
        start its container, hardened, with that storage on its writable paths and, with
        ``internet``, on the host's confined network under its own egress rules (installed
        before anything of the tenant's runs: the container runs only `sleep` until then).

        ``warm``: a pool sandbox (workers/host/pool.py), of no tenant: on ``network``'s
        network, but its address's rules refuse everything until ``claim`` installs the
        claiming tenant's policy.

        Raises docker.errors.APIError, StorageError, NoCapacity (the host's disk is promised
        to other sandboxes), EgressUnavailable (internet asked, the host's rules are not in
        place); on failure neither container, storage nor rules are left.
        """
        s = self.settings
        network = network or NetworkPolicy(mode="none")
        if network.internet:
            self.egress.require()
        seeds = self.seeds.for_image(self.client.api.inspect_image(image)["Id"])
        binds = self.storage.create(sandbox_id, seeds)
        try:
            container = self.client.containers.run(
                image,
                command=self.command,
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
                    # A warm one's: closed until claimed (a restart before the claim
                    # restores that; after it, the claim's note: start_network).
                    LABEL_NETWORK: policy_label(WARM_CLOSED if warm else network),
                    LABEL_WARM: network.mode if warm else "",
                },
                # Mounts, not binds: a missing source is an error rather than a new empty
                # directory, so a sandbox never silently writes outside its storage.
                mounts=[
                    docker.types.Mount(target, source, type="bind")
                    for target, source in binds.items()
                ]
                + self._ca_mounts()
                + self.extra_mounts,
                environment=self._ca_env(),
                **self._network_options(network),
                **hardening(s),
                **self.extra_options,
            )
            self._remember_id(sandbox_id, str(container.id))
            if network.internet:
                ip = self.egress.container_ip(str(container.id))
                self.egress.attach(sandbox_id, ip, WARM_CLOSED if warm else network)
        except BaseException:
            logger.warning("sandbox %s: start failed, removing container and storage", sandbox_id)
            try:
                self.destroy(sandbox_id)
            except Exception:  # the start's error is the one to report
                logger.exception("sandbox %s: cleanup after a failed start failed", sandbox_id)
            raise
        logger.info("sandbox %s: container started from %s", sandbox_id, image)

    def claim(self, sandbox_id: str, network: NetworkPolicy, wait: bool = True) -> None:
        """Hand a warm sandbox (``create(warm=True)``) to a tenant: note ``network`` beside
        its storage (a restarted worker restores it from there: its labels keep the pool's
        closed policy), then replace its closed rules with ``network``'s (without ``wait``:
        in the background, Egress.claim; the caller waits with Egress.settled before it
        runs anything in the sandbox). Raises SandboxError when the sandbox's network mode
        is not ``network``'s (it is then not claimed), StorageError, EgressUnavailable."""
        ip = self.egress.address(sandbox_id)
        if network.internet != (ip is not None):
            raise SandboxError(
                f"the warm sandbox's network is not the one asked ({network.mode}); not claimed"
            )
        self.storage.write_claim(sandbox_id, policy_label(network))
        if ip is not None and wait:
            self.egress.attach(sandbox_id, ip, network)
        elif ip is not None:
            self.egress.claim(sandbox_id, network)
        logger.info("sandbox %s: claimed from the warm pool (%s)", sandbox_id, network.mode)

    def _network_options(self, network: NetworkPolicy) -> dict[str, Any]:
        if not network.internet:
            return {"network_mode": "none"}
        options: dict[str, Any] = {
            "network": self.egress.network,
            # No IPv6 inside: the policy is IPv4 (the host drops the bridge's IPv6 as well).
            "sysctls": {
                "net.ipv6.conf.all.disable_ipv6": "1",
                "net.ipv6.conf.default.disable_ipv6": "1",
            },
        }
        if self.settings.sandbox_dns:
            options["dns"] = self.egress.dns
        return options

    def _ca_mounts(self) -> list[docker.types.Mount]:
        bundle = self.settings.sandbox_ca_bundle
        if not bundle:
            return []
        return [docker.types.Mount(CA_BUNDLE, bundle, type="bind", read_only=True)]

    def _ca_env(self) -> dict[str, str]:
        # Node.js and some Python clients keep their own CA lists unless told.
        if not self.settings.sandbox_ca_bundle:
            return {}
        return {
            "NODE_EXTRA_CA_CERTS": CA_BUNDLE,
            "REQUESTS_CA_BUNDLE": CA_BUNDLE,
            "SSL_CERT_FILE": CA_BUNDLE,
        }

    def destroy(self, sandbox_id: str, container: str | None = None) -> None:
        """Remove the sandbox's container (by name, or the given id) and then its storage, if
        they exist, in bounded time whatever the sandbox's processes do: a wedged container
        costs about _CONTROL_TIMEOUT seconds more than a normal one, and there are at most
        _REMOVE_TRIES attempts, each bounded by the control client's timeouts.

        Raises SandboxError when the container is still there after that (its storage is
        then kept: the container may still use it), StorageError when the storage cannot be
        freed; either way the caller keeps the record and the destroy is retried later.
        """
        self._remove_container(sandbox_id, container)
        self._container_ids.pop(sandbox_id, None)
        self.egress.detach(sandbox_id)
        self.storage.release(sandbox_id)

    def _remove_container(self, sandbox_id: str, container: str | None) -> None:
        """`rm -f` under _CONTROL_TIMEOUT; when the engine does not answer (a wedged exec holds
        the container) or refuses, SIGKILL the container's processes from the host, which
        lets the engine finish, and try again. Raises SandboxError after _REMOVE_TRIES."""
        ref = container or self.container_name(sandbox_id)
        for attempt in range(1, _REMOVE_TRIES + 1):
            started = time.monotonic()
            try:
                self.control_client.api.remove_container(ref, force=True)
                logger.info("sandbox %s: container removed", sandbox_id)
                return
            except docker.errors.NotFound:
                logger.info("sandbox %s: container already gone", sandbox_id)
                return
            except _ENGINE_ERRORS as exc:
                status = getattr(exc, "status_code", None)
                logger.warning(
                    "sandbox %s: container removal %d/%d failed after %.1f s (%s%s); killing "
                    "its processes from the host",
                    sandbox_id,
                    attempt,
                    _REMOVE_TRIES,
                    time.monotonic() - started,
                    type(exc).__name__,
                    f" {status}" if status else "",
                )
            cid = container or self._container_id(sandbox_id)
            if cid is None:  # not listed (the look-up itself does not block): gone
                logger.info("sandbox %s: container gone", sandbox_id)
                return
            killed = kill_container_processes(cid)
            if killed is None:
                # Its cgroup is not visible here (the worker runs in a container of its own):
                # the engine's kill, which works unless another call holds the container.
                logger.warning(
                    "sandbox %s: container %s has no cgroup visible on this host; asking the "
                    "engine to kill it",
                    sandbox_id,
                    cid[:12],
                )
                with contextlib.suppress(*_ENGINE_ERRORS):
                    self.control_client.api.kill(cid)
            else:
                logger.warning(
                    "sandbox %s: killed %d processes of container %s", sandbox_id, killed, cid[:12]
                )
            # The engine goes on with the removal that timed out above once nothing holds
            # the container any more; if it does not, the next attempt asks again.
            if self._wait_gone(cid, _GONE_WAIT):
                logger.info("sandbox %s: container removed", sandbox_id)
                return
        raise SandboxError(
            f"the sandbox's container could not be removed after {_REMOVE_TRIES} attempts; "
            "it will be removed on the next try"
        )

    def _container_id(self, sandbox_id: str) -> str | None:
        """The sandbox's full container id: remembered since its create, or listed. A listing
        never waits for a container's lock, unlike inspect, so a wedged sandbox cannot hold
        it. None when no such container exists or the engine does not answer."""
        cid = self._container_ids.get(sandbox_id)
        if cid is not None:
            return cid
        try:
            found = self._listing(sandbox_id=sandbox_id)
        except _ENGINE_ERRORS as exc:
            logger.warning("sandbox %s: listing its container failed: %s", sandbox_id, exc)
            return None
        if not found:
            return None
        cid = str(found[0]["Id"])
        self._remember_id(sandbox_id, cid)
        return cid

    def _remember_id(self, sandbox_id: str, cid: str) -> None:
        if len(self._container_ids) > 4096:
            self._container_ids.clear()  # ids of removed sandboxes; cheap to look up again
        self._container_ids[sandbox_id] = cid

    def _wait_gone(self, cid: str, timeout: float) -> bool:
        """Whether the container is gone (not listed) within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if not self.control_client.api.containers(all=True, filters={"id": cid}):
                    return True
            except _ENGINE_ERRORS:
                pass
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)

    def container_states(self) -> dict[str, tuple[str, str]]:
        """Sandbox id → (container id, state: running, exited, paused...) of every container
        of this host and instance, from one listing (never an inspect: a listing does not wait
        for a wedged container's lock), under the control client's timeout.

        Raises requests.exceptions.RequestException or docker.errors.APIError when the engine
        does not answer."""
        return {
            c["Labels"][LABEL_SANDBOX]: (str(c["Id"]), str(c.get("State") or ""))
            for c in self._listing()
            if LABEL_SANDBOX in (c.get("Labels") or {})
        }

    def start_network(self) -> None:
        """At worker start: the egress rules, with the own rules of the sandboxes already
        running here (they outlive a worker restart). Never raises: a failure refuses internet
        sandboxes, with the reason in the log and in /health (Egress.error)."""
        try:
            running = self._listing(all_states=False)
        except _ENGINE_ERRORS as exc:
            self.egress.setup_failed(f"could not list the sandboxes: {exc}")
            return
        attached = attached_from(running, self.egress.network)
        for sandbox_id, found in attached.items():
            # A claimed warm sandbox: its tenant's policy, not the label's closed one.
            claimed = self.storage.read_claim(sandbox_id)
            if claimed is not None:
                attached[sandbox_id] = Attached(found.ip, _policy(claimed))
        self.egress.setup(attached)

    def _listing(
        self, sandbox_id: str | None = None, all_states: bool = True
    ) -> list[dict[str, Any]]:
        """This host's and instance's containers (or one sandbox's), from one listing (never an
        inspect: a listing does not wait for a wedged container's lock), under the control
        client's timeout. Raises what the engine client raises."""
        labels = [
            f"{LABEL_INSTANCE}={self.settings.instance}",
            f"{LABEL_HOST}={self.settings.host_id}",
        ]
        if sandbox_id is not None:
            labels.append(f"{LABEL_SANDBOX}={sandbox_id}")
        found: list[dict[str, Any]] = self.control_client.api.containers(
            all=all_states, filters={"label": labels}
        )
        return found

    def _gone(self, sandbox_id: str, exc: Exception) -> SandboxGone:
        """The error of an operation on a sandbox whose container is gone or not running
        (Docker's 404, or 409 "is not running"), after telling on_gone."""
        logger.warning("sandbox %s: the engine says its container is gone: %s", sandbox_id, exc)
        if self.on_gone is not None:
            try:
                self.on_gone(sandbox_id)
            except Exception:  # the caller's answer (SandboxGone) matters more
                logger.exception("sandbox %s: on_gone failed", sandbox_id)
        return SandboxGone(
            "the sandbox's container is no longer running (stopped outside Paddock or lost "
            "with its engine)"
        )

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
        """The sandbox's listening TCP sockets, from its own /proc/net/tcp{,6}. A sandbox can
        open sockets by the hundred thousand: what is read is capped (max_file_bytes), so a
        huge table yields the sockets listed first."""
        _code, out, _ = self._run(
            sandbox_id,
            ["cat", "/proc/net/tcp", "/proc/net/tcp6"],
            max_stdout=self.settings.max_file_bytes,
        )
        return parse_listening(out[: self.settings.max_file_bytes].decode("ascii", "replace"))

    # -- processes ---------------------------------------------------------------------------
    def spawn(
        self,
        sandbox_id: str,
        cmd: str,
        env: dict[str, str],
        cwd: str,
        argv: Sequence[str] = (),
        stdin: bool = True,
    ) -> docker_exec.Attached:
        """Start ``cmd`` (or the program ``argv``, its stdin open when ``stdin``) attached
        (the runner pumps its output). Raises SandboxTimeout, SandboxGone (container gone or
        not running), SandboxPaused, EngineUnavailable."""
        full_env = {"HOME": SANDBOX_HOME, "USER": SANDBOX_USER, "LANG": "C.UTF-8", **env}
        if argv:
            script = ["/bin/sh", "-c", _SPAWN_ARGV, "paddock", cwd, "1" if stdin else "0", *argv]
        else:
            script = ["/bin/sh", "-c", _SPAWN, "paddock", cwd, cmd]
        try:
            return docker_exec.start(
                self.exec_client,
                self.container_name(sandbox_id),
                script,
                user=SANDBOX_USER,
                env=full_env,
            )
        except requests.exceptions.Timeout:
            limit = self.settings.fs_timeout + _HOST_GRACE
            message = f"the sandbox did not start the process within {limit:g}s"
            raise SandboxTimeout(message) from None
        except requests.exceptions.ConnectionError as exc:
            raise EngineUnavailable() from exc
        except docker.errors.APIError as exc:
            raise self._engine_error(sandbox_id, exc) from exc

    def oom_kills(self, sandbox_id: str) -> int | None:
        """How many processes the kernel's OOM killer has ended in the sandbox so far, read
        from its memory cgroup on the host (cgroup v1 or v2, cgroupfs or systemd driver);
        None when that cannot be read (e.g. the worker runs in a container)."""
        # Not inspect: it waits for the container's lock, which a wedged exec holds.
        cid = self._container_id(sandbox_id)
        if cid is None:
            return None
        # cgroup v1 counts in memory.oom_control, v2 in memory.events; both say "oom_kill N".
        candidates = [
            f"{d}/{name}"
            for d in _cgroup_dirs(cid)
            for name in ("memory.oom_control", "memory.events")
        ]
        for path in candidates:
            try:
                with open(path, encoding="ascii") as f:
                    for line in f:
                        name, _, value = line.partition(" ")
                        if name == "oom_kill":
                            return int(value)
            except (OSError, ValueError):
                continue
        return None

    # -- pause and usage -----------------------------------------------------------------------
    def pause(self, sandbox_id: str) -> bool:
        """`docker pause`: the cgroup freezer stops every process of the sandbox where it
        stands; memory stays allocated, nothing is written to disk (a host that dies loses
        it). False when it was paused already. Raises SandboxGone, EngineUnavailable."""
        return self._freeze(sandbox_id, pause=True)

    def resume(self, sandbox_id: str) -> bool:
        """`docker unpause`. False when it was not paused. Raises SandboxGone,
        EngineUnavailable."""
        return self._freeze(sandbox_id, pause=False)

    def _freeze(self, sandbox_id: str, pause: bool) -> bool:
        name = self.container_name(sandbox_id)
        try:
            if pause:
                self.control_client.api.pause(name)
            else:
                self.control_client.api.unpause(name)
        except docker.errors.APIError as exc:
            text = str(exc.explanation or exc).lower()
            # The engine's words (409 "is already paused", 500 "is not paused"): nothing to do.
            if ("already paused" if pause else "is not paused") in text:
                return False
            if exc.status_code == 404 or "is not running" in text:
                raise self._gone(sandbox_id, exc) from exc
            raise EngineUnavailable(f"the engine refused: {exc.explanation or exc}") from exc
        except requests.exceptions.RequestException as exc:
            raise EngineUnavailable() from exc
        logger.info("sandbox %s: %s", sandbox_id, "paused" if pause else "resumed")
        return True

    def usage(self, sandbox_id: str) -> ResourceUsage | None:
        """CPU (two readings of the cgroup's counter _USAGE_SAMPLE seconds apart), memory
        (the cgroup's, page cache apart as ``docker stats`` counts it) and disk (the
        sandbox's storage filesystem), all read on the host; None when the container's
        cgroup is not visible here."""
        cid = self._container_id(sandbox_id)
        if cid is None or not _CONTAINER_ID.match(cid):
            return None
        first = _cpu_ns(cid)
        started = time.monotonic()
        if first is None:
            return None
        time.sleep(_USAGE_SAMPLE)
        second = _cpu_ns(cid)
        elapsed = time.monotonic() - started
        if second is None:
            return None
        cpus = max(self.settings.sandbox_cpus, 0.01)
        pct = min(100.0, max(0.0, (second - first) / (elapsed * 1e9 * cpus) * 100))
        mem = _memory(cid)
        if mem is None:
            return None
        used, cache, limit = mem
        limit = min(limit or self.settings.sandbox_memory, self.settings.sandbox_memory)
        disk_used, disk_total = self._disk(sandbox_id)
        return ResourceUsage(round(pct, 2), used, limit, cache, disk_used, disk_total)

    def _disk(self, sandbox_id: str) -> tuple[int, int]:
        """(used, size) of the sandbox's storage filesystem; (0, 0) when it has none here."""
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,128}", sandbox_id):
            return 0, 0
        try:
            st = os.statvfs(self.storage.host_dir / sandbox_id / "mnt")
        except OSError:
            return 0, 0
        total = st.f_blocks * st.f_frsize
        return total - st.f_bfree * st.f_frsize, total

    def kill_group(self, sandbox_id: str, pgid: int, signal_name: str = "KILL") -> None:
        """Send SIGKILL (or ``signal_name``, e.g. "TERM") to a process group inside the
        sandbox (as the sandbox user: no capability)."""
        self._run(sandbox_id, ["kill", f"-{signal_name}", "--", f"-{pgid}"])

    # -- helpers -----------------------------------------------------------------------------
    def _run(
        self,
        sandbox_id: str,
        argv: list[str],
        stdin: bytes | None = None,
        max_stdout: int | None = None,
    ) -> tuple[int, bytes, bytes]:
        """Run a short command in the sandbox under settings.fs_timeout. Raises
        SandboxTimeout, SandboxGone (container gone or not running), SandboxPaused,
        EngineUnavailable (the engine does not answer)."""
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
        except requests.exceptions.ConnectionError as exc:
            raise EngineUnavailable() from exc
        except docker.errors.APIError as exc:
            raise self._engine_error(sandbox_id, exc) from exc

    def _engine_error(self, sandbox_id: str, exc: docker.errors.APIError) -> Exception:
        """The error to raise for the engine's refusal of an exec on the sandbox: 404 (no such
        container) and 409 "is not running" are SandboxGone (and the lost path starts); 409
        "is paused" is SandboxPaused; anything else is the engine's own error."""
        text = str(exc.explanation or exc).lower()
        if exc.status_code == 404:
            return self._gone(sandbox_id, exc)
        if exc.status_code == 409 and "paused" in text:
            return SandboxPaused()
        if exc.status_code == 409:  # "container ... is not running" (or restarting)
            return self._gone(sandbox_id, exc)
        if "is not running" in text:  # a 500 from exec start: "... Removal In Progress"
            return self._gone(sandbox_id, exc)
        return exc

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
        if code == _EXEC_FAILED and not message:
            # Our scripts are always there: the runtime could not start them, which happens
            # while the container is being removed (a delete racing this request).
            raise self._gone(sandbox_id, RuntimeError("exec failed with exit code 126"))
        text = message[-1] if message else f"command failed with exit code {code}"
        text = re.sub(r"^(/bin/sh|sh|paddock|mkdir|rm|cat|dd|find|timeout): (\d+: )?", "", text)
        cls = _EXIT_ERRORS.get(code)
        if cls is None:
            cls = next((c for needle, c in MESSAGE_ERRORS if needle in text), SandboxError)
        raise cls(text)


def _policy(label: str) -> NetworkPolicy:
    """A policy noted by ``claim`` (anything unreadable: no network at all)."""
    try:
        return NetworkPolicy.from_json(json.loads(label))
    except ValueError:
        return NetworkPolicy(mode="none")


def _timed_out(limit: float) -> str:
    return (
        f"the file operation did not finish within {limit:g}s inside the sandbox "
        "(PADDOCK_FS_TIMEOUT) and was stopped"
    )


def _cgroup_dirs(container_id: str) -> list[str]:
    """Where a container's cgroup may be on the host: cgroup v1 (its pids and memory
    hierarchies) or v2, with the cgroupfs or the systemd driver."""
    base = _CGROUP_ROOT
    return [
        f"{base}/pids/docker/{container_id}",
        f"{base}/pids/system.slice/docker-{container_id}.scope",
        f"{base}/memory/docker/{container_id}",
        f"{base}/memory/system.slice/docker-{container_id}.scope",
        f"{base}/docker/{container_id}",
        f"{base}/system.slice/docker-{container_id}.scope",
    ]


# Seconds between the two readings of a sandbox's CPU counter (DockerDriver.usage).
_USAGE_SAMPLE = 0.2


def _read_first(paths: list[str]) -> str | None:
    for path in paths:
        try:
            with open(path, encoding="ascii") as f:
                return f.read(1 << 16)
        except (OSError, UnicodeDecodeError):
            continue
    return None


def _stat_lines(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        with contextlib.suppress(ValueError):
            out[name] = int(value)
    return out


def _cpu_ns(container_id: str) -> int | None:
    """The container's CPU time so far, in ns: cgroup v1 ``cpuacct.usage`` or v2
    ``cpu.stat`` usage_usec (cgroupfs or systemd driver)."""
    base = _CGROUP_ROOT
    v1 = _read_first(
        [
            f"{base}/cpuacct/docker/{container_id}/cpuacct.usage",
            f"{base}/cpuacct/system.slice/docker-{container_id}.scope/cpuacct.usage",
            f"{base}/cpu,cpuacct/docker/{container_id}/cpuacct.usage",
            f"{base}/cpu,cpuacct/system.slice/docker-{container_id}.scope/cpuacct.usage",
        ]
    )
    if v1 is not None:
        try:
            return int(v1.strip())
        except ValueError:
            return None
    v2 = _read_first(
        [
            f"{base}/docker/{container_id}/cpu.stat",
            f"{base}/system.slice/docker-{container_id}.scope/cpu.stat",
        ]
    )
    if v2 is None:
        return None
    usec = _stat_lines(v2).get("usage_usec")
    return None if usec is None else usec * 1000


def _memory(container_id: str) -> tuple[int, int, int] | None:
    """(used without reclaimable page cache, page cache, limit or 0) of the container's
    memory cgroup, v1 or v2."""
    for d in _cgroup_dirs(container_id):
        v1 = _read_first([f"{d}/memory.usage_in_bytes"])
        v2 = None if v1 is not None else _read_first([f"{d}/memory.current"])
        if v1 is None and v2 is None:
            continue
        stat = _stat_lines(_read_first([f"{d}/memory.stat"]) or "")
        try:
            current = int((v1 or v2 or "0").strip())
        except ValueError:
            return None
        if v1 is not None:
            cache = stat.get("total_cache", stat.get("cache", 0))
            inactive = stat.get("total_inactive_file", 0)
            raw_limit = (_read_first([f"{d}/memory.limit_in_bytes"]) or "0").strip()
        else:
            cache = stat.get("file", 0)
            inactive = stat.get("inactive_file", 0)
            raw_limit = (_read_first([f"{d}/memory.max"]) or "0").strip()
        limit = int(raw_limit) if raw_limit.isdigit() else 0
        return max(0, current - inactive), cache, limit
    return None


def kill_container_processes(container_id: str) -> int | None:
    """SIGKILL every process of a container from the host (the worker is root), without the
    engine: a SIGKILL ends stopped processes too, and once the container's init is dead the
    kernel kills the rest of its pid namespace. Returns how many processes were signalled
    (cgroup v2's ``cgroup.kill`` counts as one), None when the container's cgroup is not
    visible here (another cgroup layout, or the worker runs in a container)."""
    if not _CONTAINER_ID.match(container_id):
        return None
    found = [d for d in _cgroup_dirs(container_id) if os.path.isdir(d)]
    if not found:
        return None
    group = found[0]
    if os.path.exists(f"{group}/cgroup.kill"):  # cgroup v2, Linux 5.14+: the kernel kills all
        try:
            with open(f"{group}/cgroup.kill", "w", encoding="ascii") as f:
                f.write("1")
            return 1
        except OSError as exc:
            logger.warning("container %s: cgroup.kill failed: %s", container_id[:12], exc)
    killed: set[int] = set()
    for _ in range(_KILL_ROUNDS):  # again for what forked meanwhile
        pids = _cgroup_pids(group)
        if not pids:
            break
        killed.update(pid for pid in pids if _kill(pid, container_id))
        time.sleep(0.05)
    return len(killed)


def _cgroup_pids(group: str) -> list[int]:
    """The processes of a cgroup and of the cgroups below it."""
    pids: list[int] = []
    for d, _dirs, _files in os.walk(group):
        with contextlib.suppress(OSError, ValueError), open(f"{d}/cgroup.procs") as f:
            pids.extend(int(line) for line in f if line.strip())
    return pids


def _kill(pid: int, container_id: str) -> bool:
    """SIGKILL ``pid`` if it is still a process of the container."""
    return _signal(pid, container_id, signal.SIGKILL)


def _signal(pid: int, container_id: str, signum: int) -> bool:
    """Send ``signum`` to ``pid`` if it is still a process of the container. Through a pidfd:
    the pid cannot name another process between the check and the signal (pids are reused)."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return False  # gone already
    try:
        with open(f"/proc/{pid}/cgroup", encoding="utf-8") as f:
            if container_id not in f.read():
                return False  # another process now has this pid (or another pid namespace)
        signal.pidfd_send_signal(fd, signum)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def kill_group_from_host(container_id: str, pgid: int) -> int | None:
    """SIGKILL process group ``pgid`` (as the container's own pid namespace numbers it) from
    the host, without the engine or anything inside the sandbox (a process there may be
    stopped or lying): every process of the container's cgroup whose innermost ``NSpgid`` is
    ``pgid``, a few rounds for what forks meanwhile. Returns how many were signalled, None
    when the container's cgroup is not visible here."""
    if not _CONTAINER_ID.match(container_id):
        return None
    found = [d for d in _cgroup_dirs(container_id) if os.path.isdir(d)]
    if not found:
        return None
    killed: set[int] = set()
    for _ in range(3):
        members = [pid for pid in _cgroup_pids(found[0]) if _ns_pgid(pid) == pgid]
        if not members:
            break
        killed.update(pid for pid in members if _kill(pid, container_id))
        time.sleep(0.02)
    return len(killed)


def continue_stopped(container_id: str, exe: str) -> int:
    """SIGCONT every stopped process of the container whose executable is ``exe`` (as the
    container sees it): the tenant can SIGSTOP a process that runs as its user, such as the
    sandbox's supervisor, and only the host can make it go on. Returns how many."""
    if not _CONTAINER_ID.match(container_id):
        return 0
    found = [d for d in _cgroup_dirs(container_id) if os.path.isdir(d)]
    continued = 0
    for pid in _cgroup_pids(found[0]) if found else []:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
                state = f.read(4096).rpartition(")")[2].split()[0]
            if state != "T" or os.readlink(f"/proc/{pid}/exe") != exe:
                continue
        except (OSError, IndexError):
            continue
        continued += _signal(pid, container_id, signal.SIGCONT)
    return continued


def _ns_pgid(pid: int) -> int | None:
    """A process's group id in its innermost pid namespace (the last NSpgid field)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("NSpgid:"):
                    return int(line.split()[-1])
    except (OSError, ValueError, IndexError):
        return None
    return None


# The embedded DNS of a user-defined Docker network (a sandbox with internet) listens on this
# address inside the container's network namespace, on a random port.
DOCKER_DNS = "127.0.0.11"


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
        if ip == DOCKER_DNS:
            continue  # Docker's resolver, listening in the sandbox's namespace: not the tenant's
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
