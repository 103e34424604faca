"""The base image's root filesystem: ``debootstrap`` a minimal Debian into a build directory,
prepare it in a chroot with ``configure.sh``, and import it into the engine as an image.

No container registry is involved anywhere, so the base builds on a machine that reaches only a
Debian mirror. Plain functions over the Docker client; :mod:`workers.images.build` decides when to
call them.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import tempfile
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors

from workers.images.templates import HASH_LABEL, ImageBuildError

logger = logging.getLogger(__name__)

BASE_NAME = "base"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# How much of a failing command's output goes into the error message.
ERROR_TAIL_LINES = 20
CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Dockerfile-style settings applied when importing the base root filesystem. They are part of
# the base hash, so editing them here rebuilds the base like editing templates/base/ does.
# No USER: a template's RUN steps start as root and can install packages without `USER root`;
# the builder gives every template image `USER user` at the end (workers.images), and
# sandboxes run as `user` whatever the image says (workers.backends.docker.driver).
BASE_CHANGES = (
    "ENV LANG=C.UTF-8",
    "ENV LC_ALL=C.UTF-8",
    f"ENV PATH={CHROOT_PATH}",
    "WORKDIR /home/user",
    'CMD ["/bin/bash"]',
)


def build_base(
    client: docker.DockerClient,
    base_dir: Path,
    repo: str,
    h: str,
    *,
    mirror: str | None,
    build_dir: Path,
) -> Any:
    """Debootstrap, configure and import ``base_dir``'s definition as ``repo:<hash12>`` and
    ``repo:latest``; returns the image. Downloaded packages are cached in ``build_dir/debs``.

    Raises ImageBuildError naming the failing step with the tail of its output.
    """
    conf = _read_conf(base_dir / "debootstrap.conf")
    packages = _read_list(base_dir / "packages.txt")
    work = Path(tempfile.mkdtemp(prefix="base-", dir=build_dir))
    try:
        rootfs = work / "rootfs"
        _debootstrap(
            rootfs,
            suite=conf.get("suite", "bookworm"),
            variant=conf.get("variant", "minbase"),
            mirror=mirror or conf.get("mirror", DEFAULT_MIRROR),
            packages=packages,
            cache_dir=build_dir / "debs",
        )
        _configure(rootfs, base_dir / "configure.sh")
        return _import(client, rootfs, repo, h)
    finally:
        _remove_tree(work)


def _read_conf(path: Path) -> dict[str, str]:
    conf: dict[str, str] = {}
    if not path.is_file():
        return conf
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            conf[key.strip()] = value.strip()
    return conf


def _read_list(path: Path) -> list[str]:
    if not path.is_file():
        return []
    items = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [item for item in items if item]


def _run(cmd: list[str], what: str, env: dict[str, str] | None = None) -> None:
    """Run ``cmd``, logging its output at debug level.

    Raises ImageBuildError with the tail of the output when it exits non-zero.
    """
    logger.debug("running %s", " ".join(cmd))
    tail: deque[str] = deque(maxlen=ERROR_TAIL_LINES)
    try:
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            text=True,
            errors="replace",
        )
    except OSError as exc:
        raise ImageBuildError(f"{what}: cannot run {cmd[0]}: {exc}") from exc
    assert proc.stdout is not None
    with proc:
        for line in proc.stdout:
            line = line.rstrip()
            tail.append(line)
            logger.debug("%s", line)
    if proc.returncode != 0:
        raise ImageBuildError(
            f"{what} failed (exit {proc.returncode}); last output:\n" + "\n".join(tail)
        )


def _debootstrap(
    rootfs: Path,
    *,
    suite: str,
    variant: str,
    mirror: str,
    packages: list[str],
    cache_dir: Path,
) -> None:
    if shutil.which("debootstrap") is None:
        raise ImageBuildError(
            f"{BASE_NAME}: debootstrap is not installed (run scripts/bootstrap.sh)"
        )
    # Downloaded .debs are kept, so rebuilding the base after a configure change does not
    # fetch the whole distribution again.
    cache_dir.mkdir(parents=True, exist_ok=True)
    cmd = ["debootstrap", f"--variant={variant}", f"--cache-dir={cache_dir.resolve()}"]
    if packages:
        cmd.append("--include=" + ",".join(packages))
    cmd += [suite, str(rootfs), mirror]
    _run(cmd, f"{BASE_NAME}: debootstrap {suite} from {mirror}")


def _configure(rootfs: Path, script: Path) -> None:
    if not script.is_file():
        return
    inside = "/tmp/paddock-configure.sh"
    target = rootfs / inside.lstrip("/")
    shutil.copyfile(script, target)
    # A clean environment: the host's variables (proxies, locale, HOME) must not shape the image.
    env = {
        "PATH": CHROOT_PATH,
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "DEBIAN_FRONTEND": "noninteractive",
    }
    try:
        _run(["chroot", str(rootfs), "/bin/sh", inside], f"{BASE_NAME}: configure.sh", env=env)
    finally:
        target.unlink(missing_ok=True)


def _import(client: docker.DockerClient, rootfs: Path, repo: str, h: str) -> Any:
    """Stream ``tar -c`` of ``rootfs`` into the engine as ``repo:<hash12>`` and ``:latest``.

    Raises ImageBuildError when tar or the import fails.
    """
    changes = [*BASE_CHANGES, f"LABEL {HASH_LABEL}={h}"]
    # debootstrap or configure.sh can leave /proc (or /sys, /dev/pts) mounted in the root: tar
    # would read the host's live files (and fail on them), so detach them first.
    _unmount_under(rootfs)
    with tempfile.TemporaryFile() as tar_err:
        tar = subprocess.Popen(
            tar_command(rootfs),
            stdout=subprocess.PIPE,
            stderr=tar_err,
            stdin=subprocess.DEVNULL,
        )
        assert tar.stdout is not None
        stdout = tar.stdout

        def chunks() -> Iterator[bytes]:
            while chunk := stdout.read(1 << 20):
                yield chunk

        try:
            reply = client.api.import_image(
                src=chunks(), stream_src=True, repository=repo, tag=h[:12], changes=changes
            )
        except docker.errors.APIError as exc:
            tar.kill()
            raise ImageBuildError(f"{BASE_NAME}: docker import failed: {exc}") from exc
        finally:
            stdout.close()
            tar.wait()
        if tar.returncode != 0:
            tar_err.seek(0)
            message = tar_err.read().decode(errors="replace").strip()
            raise ImageBuildError(f"{BASE_NAME}: tar of the root filesystem failed: {message}")
    error = _import_error(reply)
    if error:
        raise ImageBuildError(f"{BASE_NAME}: docker import failed: {error}")
    try:
        image = client.images.get(f"{repo}:{h[:12]}")
    except docker.errors.ImageNotFound as exc:
        raise ImageBuildError(f"{BASE_NAME}: import reported success but no image") from exc
    if (image.labels or {}).get(HASH_LABEL) != h:
        # Without the label the next run would not recognise the image and rebuild it forever.
        raise ImageBuildError(f"{BASE_NAME}: the engine dropped the {HASH_LABEL} label on import")
    image.tag(repo, "latest")
    return image


# Filled by the engine in every container (procfs, sysfs, a tmpfs /dev): the image keeps the
# empty directories and none of what a build left in them.
RUNTIME_DIRS = ("proc", "sys", "dev")


def tar_command(rootfs: Path) -> list[str]:
    """``tar`` writing ``rootfs`` to stdout, without the contents of :data:`RUNTIME_DIRS` and
    without anything on another file system (a mount that survived :func:`_unmount_under`)."""
    # --numeric-owner: the rootfs's /etc/passwd, not the host's, gives uids their names.
    # --anchored: "./proc/*" is the top-level /proc only, never e.g. ./usr/lib/x/proc.
    excludes = [f"--exclude=./{d}/*" for d in RUNTIME_DIRS]
    return [
        "tar",
        "--numeric-owner",
        "--one-file-system",
        "--anchored",
        *excludes,
        "-C",
        str(rootfs),
        "-c",
        ".",
    ]


def _import_error(reply: Any) -> str | None:
    """The error of an import reply (a stream of JSON objects as text), if it has one."""
    for line in str(reply or "").splitlines():
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if isinstance(message, dict) and message.get("error"):
            return str(message["error"])
    return None


def _remove_tree(path: Path) -> None:
    """Delete a (root-owned) build tree, first detaching anything debootstrap left mounted.

    A failed debootstrap can leave /proc or /sys mounted inside the rootfs; deleting through
    those mounts would be disastrous, hence the unmount and ``--one-file-system``.
    """
    resolved = str(path.resolve())
    _unmount_under(path)
    result = subprocess.run(
        ["rm", "-rf", "--one-file-system", resolved], check=False, capture_output=True, text=True
    )
    if result.returncode != 0:
        logger.warning("could not remove %s: %s", resolved, result.stderr.strip())


def _unmount_under(path: Path) -> None:
    """Lazily unmount every mount at or below ``path``, deepest first (best effort: what stays
    mounted is skipped by ``tar --one-file-system`` and ``rm --one-file-system``)."""
    resolved = str(path.resolve())
    mounts: list[str] = []
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                point = line.split()[1].replace("\\040", " ")
                if point == resolved or point.startswith(resolved + "/"):
                    mounts.append(point)
    except OSError:
        pass
    for point in sorted(mounts, reverse=True):
        result = subprocess.run(["umount", "-l", point], check=False, capture_output=True)
        if result.returncode != 0:
            logger.warning("could not unmount %s: %s", point, result.stderr.decode().strip())
