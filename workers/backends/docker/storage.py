"""Each sandbox's writable storage, capped: the only places a sandbox can write.

A sandbox's root filesystem is read-only. What it may write (its home, ``/workspace``,
``/tmp``, ``/var/tmp``, ``/dev/shm``) lives in one filesystem of its own, made here on the host
and bind-mounted into the container by the driver:

- ``PADDOCK_SANDBOX_DISK`` > 0 (2 GiB by default): a sparse ext4 image of exactly that size,
  loop-mounted. A write past the cap fails inside the sandbox with ENOSPC, the image only grows
  as it is written, and it never outgrows the cap, whatever the host's filesystem or Docker's
  storage driver. Before making one, the host checks that its free disk can still hold every
  image's unwritten rest plus this one, so sandboxes can never fill the host's disk.
- ``PADDOCK_SANDBOX_DISK=0``: no disk at all; the same paths are one tmpfs of half the
  sandbox's memory (``PADDOCK_SANDBOX_MEMORY``), whose pages count in that memory limit.

The image's own content of ``/home/user`` and ``/workspace`` (dotfiles, directories a template
made) is exported once per image id into a cache (:class:`ImageSeeds`) and unpacked into every
new sandbox's storage, owned by the sandbox user.

On the host: ``<storage_dir>/<instance>/<host>/<sandbox>/{disk.img,mnt/}`` (every directory
0700, root only), seeds in ``<storage_dir>/.seeds/<image id>/``. Releasing unmounts (lazily if
something still holds it), detaches the loop device and deletes the directory. Everything here
is idempotent, every command runs with a timeout, and a failed create leaves nothing behind.
Needs root (mount); imports nothing from Celery.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import logging
import os
import re
import shutil
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import docker
import docker.errors

from shared.errors import ConfigError, NoCapacity, SandboxError
from shared.settings import Settings
from workers.backends.base import SANDBOX_UID

logger = logging.getLogger(__name__)


# (path in the sandbox, directory in its storage, owner uid, mode)
WRITABLE: tuple[tuple[str, str, int, int], ...] = (
    ("/home/user", "home", SANDBOX_UID, 0o755),
    ("/workspace", "workspace", SANDBOX_UID, 0o755),
    ("/tmp", "tmp", 0, 0o1777),
    ("/var/tmp", "vartmp", 0, 0o1777),
    ("/dev/shm", "shm", 0, 0o1777),
)
# The paths whose content in the image is copied into a new sandbox's storage.
SEEDED: tuple[tuple[str, str], ...] = (("/home/user", "home"), ("/workspace", "workspace"))

# nosuid, nodev: nothing a sandbox writes can become a setuid program or a device, on the host
# or in the sandbox (bind mounts keep these flags). Exec stays allowed: compilers build into
# /tmp and the home's caches and run what they built.
_MOUNT_FLAGS = "nosuid,nodev,noatime"
# noinit_itable: the kernel would otherwise zero the inode tables in the background, allocating
# them in the sparse image; discard: files deleted in the sandbox give their blocks back to
# the host at once.
_EXT4_MOUNT = f"loop,{_MOUNT_FLAGS},noinit_itable,discard"
# No journal: the filesystem never outlives its sandbox, so crash recovery buys nothing and the
# sandbox gets its whole cap. Lazy init and no discard keep mkfs at a few milliseconds and the
# image sparse.
_MKFS = [
    "mkfs.ext4",
    "-q",
    "-F",
    "-m",
    "0",
    "-O",
    "^has_journal",
    "-E",
    "lazy_itable_init=1,nodiscard",
    "-L",
    "paddock",
]
_COMMAND_TIMEOUT = 30.0
# mount(8) and mkfs live in sbin, which a non-login PATH may lack.
_SBIN = "/usr/local/sbin:/usr/sbin:/sbin:/usr/local/bin:/usr/bin:/bin"
_PROBE = ".probe"  # the start-up check's storage; no sandbox id starts with a dot
_PROBE_BYTES = 16 << 20
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_STALE_SEED_SECONDS = 600
_CLAIM = "claim.json"  # beside mnt/ and disk.img: SandboxStorage.write_claim


class StorageError(SandboxError):
    """A sandbox's storage could not be made or released (the message says which step)."""


class SandboxStorage:
    """Make, list and release the capped writable storage of this host's sandboxes."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.size = settings.sandbox_disk
        # Absolute: Docker needs absolute bind sources, whatever the worker's cwd was.
        self.root = Path(
            os.path.abspath(settings.storage_dir or os.path.join(settings.data_dir, "storage"))
        )
        self.host_dir = self.root / _safe(settings.instance) / _safe(settings.host_id)
        self.seed_dir = self.root / ".seeds"
        self._env = {**os.environ, "PATH": f"{os.environ.get('PATH', '')}:{_SBIN}", "LC_ALL": "C"}

    # -- start-up ----------------------------------------------------------------------------
    def check(self, capacity: int) -> None:
        """Prove, once at worker start, that sandbox storage works here: make, write, release
        a small one. A host that cannot cap its sandboxes must not start any.

        Raises ConfigError naming what is missing.
        """
        if self.size < 0:
            raise ConfigError("PADDOCK_SANDBOX_DISK must be 0 (no disk) or a size")
        if os.geteuid() != 0:
            raise ConfigError("the host worker must run as root: it mounts each sandbox's storage")
        tools = ["mount", "umount"] + (["mkfs.ext4", "losetup"] if self.size else [])
        missing = [t for t in tools if shutil.which(t, path=self._env["PATH"]) is None]
        if missing:
            raise ConfigError(
                f"sandbox storage needs {', '.join(missing)} (packages e2fsprogs and mount; "
                "scripts/bootstrap.sh installs them)"
            )
        if self.size and not os.path.exists("/dev/loop-control"):
            # Without loop-control the kernel cannot add loop devices on demand: the ones that
            # exist must cover a full host.
            have = len([p for p in os.listdir("/dev") if re.fullmatch(r"loop\d+", p)])
            if have < capacity:
                raise ConfigError(
                    f"/dev/loop-control is missing and only {have} loop devices exist: "
                    f"{capacity} sandboxes (the host's capacity) need one "
                    "each (modprobe loop max_loop=N)"
                )
        try:
            self._ensure_dirs()
            self.release(_PROBE)  # left by a worker that died during its check
            mounts = self._make(_PROBE, min(self.size, _PROBE_BYTES) if self.size else 0, {})
            with open(os.path.join(mounts["/tmp"], "probe"), "wb") as f:
                f.write(b"paddock")
            self.release(_PROBE)
        except (OSError, StorageError, NoCapacity) as exc:
            raise ConfigError(
                f"sandbox storage does not work on this machine ({exc}); it needs root, loop "
                "devices (/dev/loop-control) and mkfs.ext4, or PADDOCK_SANDBOX_DISK=0 for "
                "in-memory storage (tmpfs)"
            ) from exc
        what = f"{self.size}-byte ext4 image" if self.size else "tmpfs in the sandbox's memory"
        logger.info("sandbox storage: a %s per sandbox, under %s", what, self.host_dir)

    # -- lifecycle ---------------------------------------------------------------------------
    def create(self, sandbox_id: str, seeds: Mapping[str, Path]) -> dict[str, str]:
        """Make the sandbox's storage, with ``seeds`` (storage directory → tar of the image's
        content, from :class:`ImageSeeds`) unpacked in it; replaces any leftover of an earlier
        attempt. Returns sandbox path → host directory, to bind-mount.

        Raises NoCapacity (the host's disk cannot hold another cap), StorageError; on failure
        nothing is left behind.
        """
        _check_id(sandbox_id)
        return self._make(sandbox_id, self.size, seeds)

    def release(self, sandbox_id: str) -> None:
        """Unmount and delete the sandbox's storage, if any. Idempotent.

        Raises StorageError when it stays mounted (then nothing is deleted).
        """
        _check_id(sandbox_id)
        self._release_path(self.host_dir / sandbox_id)

    def write_claim(self, sandbox_id: str, policy: str) -> None:
        """Note, beside (not in) a warm sandbox's storage, the network policy of the tenant
        who claimed it (workers/host/pool.py): its container's labels still say the pool's
        closed policy, and a restarted worker must restore the claimed one. Root-only, out
        of the sandbox's reach; deleted with the storage. Raises StorageError."""
        _check_id(sandbox_id)
        path = self.host_dir / sandbox_id / _CLAIM
        try:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(policy, encoding="utf-8")
            os.replace(tmp, path)
        except OSError as exc:
            raise StorageError(f"could not note the sandbox's claim: {exc}") from exc

    def read_claim(self, sandbox_id: str) -> str | None:
        """The policy ``write_claim`` noted (None: never claimed, or unreadable)."""
        if not _SAFE_NAME.match(sandbox_id):
            return None
        try:
            return (self.host_dir / sandbox_id / _CLAIM).read_text(encoding="utf-8")[:65536]
        except (OSError, UnicodeDecodeError):
            return None

    def sandbox_ids(self) -> list[str]:
        """The sandboxes of this host that have storage (mounted or not)."""
        try:
            names = os.listdir(self.host_dir)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if _SAFE_NAME.match(n))

    def release_instance(self) -> None:
        """Release the storage of every host of this instance (a test stack's teardown)."""
        instance_dir = self.host_dir.parent
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            for host in os.listdir(instance_dir):
                for name in os.listdir(instance_dir / host):
                    self._release_path(instance_dir / host / name)

    # -- internals ---------------------------------------------------------------------------
    def _make(self, name: str, size: int, seeds: Mapping[str, Path]) -> dict[str, str]:
        started = time.monotonic()
        self._ensure_dirs()
        self.release(name)  # what an earlier attempt left
        path = self.host_dir / name
        mnt, image = path / "mnt", path / "disk.img"
        try:
            path.mkdir(mode=0o700)
            mnt.mkdir(mode=0o700)
            if size:
                with self._disk_lock():
                    self._admit(size)
                    with open(image, "xb") as f:
                        f.truncate(size)  # sparse: takes no space until written
                self._run([*_MKFS, str(image)], "make the filesystem")
                self._run(["mount", "-t", "ext4", "-o", _EXT4_MOUNT, str(image), str(mnt)], "mount")
            else:
                # Pages of a tmpfs count in the memory cgroup of whoever writes them: the
                # sandbox. Half its memory, so that a full one is ENOSPC, not an OOM kill.
                opts = f"{_MOUNT_FLAGS},size={self.settings.sandbox_memory // 2},mode=0755"
                self._run(["mount", "-t", "tmpfs", "-o", opts, "paddock", str(mnt)], "mount")
            mounts = {}
            for target, sub, uid, mode in WRITABLE:
                d = mnt / sub
                d.mkdir()
                os.chown(d, uid, uid)
                os.chmod(d, mode)
                mounts[target] = str(d)
            for sub, tar in seeds.items():
                _unpack(tar, mnt, sub)
        except BaseException as exc:
            with contextlib.suppress(Exception):
                self.release(name)
            if isinstance(exc, OSError):
                raise StorageError(f"could not prepare the sandbox storage: {exc}") from exc
            raise
        logger.info(
            "sandbox %s: storage ready in %.0f ms", name, (time.monotonic() - started) * 1000
        )
        return mounts

    def _release_path(self, path: Path) -> None:
        if not path.exists():
            return
        mnt, image = path / "mnt", path / "disk.img"
        for _ in range(3):  # a create racing a release could have stacked two mounts
            if not os.path.ismount(mnt):
                break
            try:
                self._run(["umount", str(mnt)], "unmount")
            except StorageError as exc:
                # Busy (a host process still in it): detach now, freed when it lets go.
                logger.warning("storage %s: %s; unmounting lazily", path.name, exc)
                self._run(["umount", "-l", str(mnt)], "unmount lazily")
        if os.path.ismount(mnt):
            raise StorageError(f"sandbox storage is still mounted at {mnt}")
        if image.exists():
            self._detach_loops(image)
        shutil.rmtree(path, ignore_errors=True)
        if path.exists():
            raise StorageError(f"could not delete the sandbox storage at {path}")
        logger.info("sandbox %s: storage released", path.name)

    def _ensure_dirs(self) -> None:
        # 0700 all the way: host users must not reach into a sandbox's files.
        for d in (self.root, self.host_dir.parent, self.host_dir, self.seed_dir):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)

    @contextlib.contextmanager
    def _disk_lock(self) -> Iterator[None]:
        """Serialize admission across threads and worker processes sharing this storage."""
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _admit(self, size: int) -> None:
        """Raises NoCapacity unless the host's free disk holds what every existing image may
        still grow by, plus ``size``: sparse images must not promise more than there is."""
        promised = 0
        for image in self.root.glob("*/*/*/disk.img"):
            with contextlib.suppress(FileNotFoundError):
                st = image.stat()
                promised += max(0, st.st_size - st.st_blocks * 512)
        free = shutil.disk_usage(self.root).free
        if free - promised < size:
            raise NoCapacity(
                f"this host's disk cannot hold another sandbox: {free >> 20} MiB free, "
                f"{promised >> 20} MiB promised to running sandboxes, {size >> 20} MiB needed "
                "(PADDOCK_SANDBOX_DISK)"
            )

    def _detach_loops(self, image: Path) -> None:
        """Detach loop devices still backed by ``image`` (mount's autoclear normally did)."""
        try:
            out = self._run(["losetup", "-j", str(image)], "list loop devices")
        except StorageError as exc:
            logger.warning("%s", exc)
            return
        for line in out.splitlines():
            device = line.split(":", 1)[0].strip()
            if device.startswith("/dev/loop"):
                try:  # on a busy device this only marks it to detach when freed
                    self._run(["losetup", "-d", device], "detach the loop device")
                except StorageError as exc:
                    logger.warning("%s", exc)

    def _run(self, argv: list[str], what: str) -> str:
        try:
            done = subprocess.run(
                argv,
                capture_output=True,
                timeout=_COMMAND_TIMEOUT,
                env=self._env,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise StorageError(f"could not {what}: timed out after {exc.timeout:.0f} s") from exc
        except OSError as exc:
            raise StorageError(f"could not {what}: {exc}") from exc
        if done.returncode != 0:
            err = done.stderr.decode("utf-8", "replace").strip() or f"exit {done.returncode}"
            raise StorageError(f"could not {what}: {err}")
        return done.stdout.decode("utf-8", "replace")


class ImageSeeds:
    """The content of an image's ``/home/user`` and ``/workspace``, exported once per image id
    (a created, never started container) into tar files under ``<storage_dir>/.seeds``."""

    def __init__(self, client: docker.DockerClient, seed_dir: Path) -> None:
        self.client = client
        self.seed_dir = seed_dir
        self._lock = threading.Lock()

    def for_image(self, image_id: str) -> dict[str, Path]:
        """Storage directory → tar of its content in the image.

        Raises docker.errors.APIError, StorageError.
        """
        key = image_id.rpartition(":")[2]
        if not re.fullmatch(r"[0-9a-f]{12,64}", key):
            raise StorageError(f"unexpected image id {image_id!r}")
        d = self.seed_dir / key
        if not (d / "complete").exists():
            with self._lock:
                if not (d / "complete").exists():
                    try:
                        self._export(image_id, d)
                    except OSError as exc:
                        raise StorageError(f"could not export the image's home: {exc}") from exc
        return {sub: d / f"{sub}.tar" for _, sub in SEEDED if (d / f"{sub}.tar").exists()}

    def prune(self) -> None:
        """Drop the seeds of images that no longer exist, and what a crash left half-made."""
        with contextlib.suppress(FileNotFoundError):
            for key in os.listdir(self.seed_dir):
                d = self.seed_dir / key
                try:
                    self.client.api.inspect_image(f"sha256:{key}")
                    continue
                except docker.errors.ImageNotFound:
                    pass
                except docker.errors.APIError:
                    continue
                shutil.rmtree(d, ignore_errors=True)
        cutoff = time.time() - _STALE_SEED_SECONDS
        with contextlib.suppress(docker.errors.APIError):
            for c in self.client.api.containers(all=True, filters={"label": "paddock.seed"}):
                if c.get("Created", 0) < cutoff:
                    self.client.api.remove_container(c["Id"], force=True)

    def _export(self, image_id: str, d: Path) -> None:
        started = time.monotonic()
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        container = self.client.api.create_container(
            image_id,
            command=["true"],
            network_disabled=True,
            labels={"paddock.seed": "1"},
        )["Id"]
        try:
            for path, sub in SEEDED:
                try:
                    stream, _ = self.client.api.get_archive(container, path)
                except docker.errors.NotFound:
                    continue  # the image lacks this path: the sandbox gets it empty
                tmp = d / f".{sub}.tar.{os.getpid()}.{threading.get_ident()}"
                try:
                    with open(tmp, "wb") as f:
                        for chunk in stream:
                            f.write(chunk)
                    os.replace(tmp, d / f"{sub}.tar")
                finally:
                    with contextlib.suppress(FileNotFoundError):
                        tmp.unlink()
        finally:
            with contextlib.suppress(docker.errors.APIError):
                self.client.api.remove_container(container, force=True)
        (d / "complete").touch()
        logger.info(
            "image %s: seed exported in %.0f ms", image_id[:19], (time.monotonic() - started) * 1000
        )


def _unpack(tar: Path, mnt: Path, sub: str) -> None:
    """Unpack an exported directory (its entries under one top name) into ``mnt/sub``, owned
    by the sandbox user. Extraction runs as root on the host, so the archive is treated as
    untrusted: nothing may land outside ``mnt`` or link out of it, no device files or fifos,
    no setuid bits (the checks of tarfile's ``data`` filter, made here because Debian 12's
    Python 3.11.2 predates that filter)."""
    dest = os.path.realpath(mnt)
    refused = 0
    with tarfile.open(tar) as archive:
        while (member := archive.next()) is not None:
            # tarfile keeps every member it has read; an archive of millions of entries (most
            # of them refused, taking no room on the capped disk) must not take the worker's
            # memory with them. Nothing needs them later: hard links go to what is on disk.
            archive.members.clear()  # type: ignore[attr-defined]  # (not in typeshed)
            try:
                placed = _place(member, dest, sub)
            except _Refused as exc:
                refused += 1
                if refused <= _REFUSALS_LOGGED:
                    logger.warning(
                        "seed %s: skipping %s: %s", tar.parent.name[:12], member.name, exc
                    )
                continue
            if placed is not None:
                archive.extract(placed, dest, set_attrs=True, **_TRUSTED)
    if refused > _REFUSALS_LOGGED:
        logger.warning("seed %s: %d entries skipped in all", tar.parent.name[:12], refused)


# Skipped entries named in the log, per seed; past this only their count.
_REFUSALS_LOGGED = 20
# The member is checked by _place already; newer Pythons would otherwise warn (3.12, 3.13) or
# apply their default filter a second time (3.14).
_TRUSTED: dict[str, Any] = (
    {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}
)


class _Refused(Exception):
    pass


def _place(member: tarfile.TarInfo, dest: str, sub: str) -> tarfile.TarInfo | None:
    """The member renamed under ``sub``, owned by the sandbox user with safe mode bits; None
    for the top directory itself. Raises _Refused for what may not be unpacked."""
    rest = member.name.lstrip("/").partition("/")[2]
    if not rest:
        return None  # the directory itself: made already, with its owner and mode
    if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
        raise _Refused("not a file, directory or link")
    placed = copy.copy(member)
    placed.name = f"{sub}/{rest}"
    target = os.path.join(dest, placed.name)
    if not _inside(dest, target):
        raise _Refused("outside the destination")
    if member.islnk():  # hard links name their target by its path in the archive
        placed.linkname = f"{sub}/{member.linkname.lstrip('/').partition('/')[2]}"
        linked = os.path.join(dest, placed.linkname)
        if not _inside(dest, linked):
            raise _Refused("a hard link to outside the destination")
        if not os.path.isfile(linked):
            # Its target was skipped, or comes later: tarfile would look for it among the
            # members read (KeyError), or copy it from the archive.
            raise _Refused("a hard link to no file unpacked before it")
    elif member.issym():
        if os.path.isabs(member.linkname):
            raise _Refused("a symlink to an absolute path")
        if not _inside(dest, os.path.join(os.path.dirname(target), member.linkname)):
            raise _Refused("a symlink to outside the destination")
    mode = member.mode & 0o755  # no setuid, setgid, sticky, group or other write
    if member.isreg() or member.islnk():
        if not mode & 0o100:
            mode &= ~0o111  # executable by others only if by its owner
        mode |= 0o600
    placed.mode = mode
    placed.uid = placed.gid = SANDBOX_UID
    placed.uname = placed.gname = ""
    return placed


def _inside(dest: str, path: str) -> bool:
    """Whether ``path``, with every link already on disk resolved, is ``dest`` or below it."""
    return os.path.commonpath([dest, os.path.realpath(path)]) == dest


def _safe(name: str) -> str:
    """A setting (instance, host id) as one path component."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    return cleaned if cleaned.strip(".") else "_"


def _check_id(sandbox_id: str) -> None:
    if sandbox_id != _PROBE and not _SAFE_NAME.match(sandbox_id):
        raise StorageError(f"not a sandbox id: {sandbox_id!r}")
