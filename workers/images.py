"""Builds the sandbox images: a debootstrapped Debian base and one image per template.

``<prefix>/base`` is created without any registry: ``debootstrap`` writes a minimal bookworm
root filesystem, ``templates/base/configure.sh`` prepares it in a chroot, and the result is
imported as an image. Every ``templates/<Name>/Dockerfile`` is then built ``FROM`` that base
into ``<prefix>/tpl-<name>``. Each image carries a content hash of its inputs in the
``paddock.hash`` label, so an image whose inputs did not change is never rebuilt.

Command line::

    python -m workers.images build [--templates-dir templates] [--prefix paddock] [--only NAME ...]
    python -m workers.images list
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors

logger = logging.getLogger(__name__)

TEMPLATE_LABEL = "paddock.template"
HASH_LABEL = "paddock.hash"

BASE_NAME = "base"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# How much of a failing build's output goes into the error message.
ERROR_TAIL_LINES = 20
# Docker repository path components allow only these; template names are lowercased into one.
_REPO_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_HASH_TAG = re.compile(r"^[0-9a-f]{12}$")
# The classic builder colours RUN steps' stderr; escape codes only clutter an error message.
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# Builder bookkeeping lines that would crowd the useful output out of an error's tail.
_BUILD_NOISE = (" ---> ", "Removing intermediate container")
_CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Dockerfile-style settings applied when importing the base root filesystem. They are part of
# the base hash, so editing them here rebuilds the base like editing templates/base/ does.
_BASE_CHANGES = (
    "ENV LANG=C.UTF-8",
    "ENV LC_ALL=C.UTF-8",
    f"ENV PATH={_CHROOT_PATH}",
    "USER user",
    "WORKDIR /home/user",
    'CMD ["/bin/bash"]',
)

Log = Callable[[str], object]


class ImageBuildError(Exception):
    """An image could not be built; the message names the image and shows the failing output."""


@dataclass(frozen=True)
class BuildResult:
    """Outcome for one image of :func:`build_all`."""

    name: str
    ref: str
    hash: str
    built: bool
    seconds: float
    size_bytes: int


@dataclass(frozen=True)
class _Template:
    name: str
    path: Path


def image_ref(prefix: str, template: str) -> str:
    """The ``:latest`` reference of ``template``'s image, e.g. ``paddock/tpl-nodejs:latest``."""
    return f"{prefix}/tpl-{template.lower()}:latest"


def base_repo(prefix: str) -> str:
    return f"{prefix}/{BASE_NAME}"


def available_templates(client: docker.DockerClient, prefix: str) -> dict[str, str]:
    """Map template name (exact case, e.g. ``Nodejs``) to image ref, for the local images.

    Only images tagged ``<prefix>/tpl-<name>:latest`` that carry the ``paddock.template`` label
    count. Raises docker.errors.DockerException when the engine cannot be reached.
    """
    found: dict[str, str] = {}
    # Tags are matched here rather than with the engine's `reference` glob filter, whose
    # matching of multi-component names (registry:port/prefix) varies between engine versions.
    for image in client.images.list(filters={"label": TEMPLATE_LABEL}):
        name = (image.labels or {}).get(TEMPLATE_LABEL)
        if not name:
            continue
        ref = image_ref(prefix, name)
        if ref in image.tags:
            found[name] = ref
    return dict(sorted(found.items()))


def discover_templates(templates_dir: Path) -> list[str]:
    """Names of the templates under ``templates_dir``: every subdirectory with a Dockerfile.

    Raises ImageBuildError for a name that cannot become a docker repository name, or for two
    names that differ only in case (they would share one image).
    """
    return [t.name for t in _discover(templates_dir)]


def _discover(templates_dir: Path) -> list[_Template]:
    if not templates_dir.is_dir():
        raise ImageBuildError(f"templates directory {templates_dir} does not exist")
    templates: list[_Template] = []
    seen: dict[str, str] = {}
    for path in sorted(templates_dir.iterdir()):
        if path.name == BASE_NAME or not (path / "Dockerfile").is_file():
            continue
        lower = path.name.lower()
        if not _REPO_COMPONENT.match(lower):
            raise ImageBuildError(
                f"template directory {path.name!r} is not usable as an image name "
                "(letters, digits and single . _ - separators only)"
            )
        if lower in seen:
            raise ImageBuildError(
                f"templates {seen[lower]!r} and {path.name!r} differ only in case"
            )
        seen[lower] = path.name
        templates.append(_Template(path.name, path))
    return templates


def _dir_digest(directory: Path) -> hashlib._Hash:
    """sha256 over every file below ``directory``: relative path and content, sorted."""
    digest = hashlib.sha256()
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    for path in files:
        rel = path.relative_to(directory).as_posix()
        digest.update(rel.encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest


def base_hash(templates_dir: Path) -> str:
    """Content hash of the base image's inputs (``templates/base/`` plus the import settings).

    Raises ImageBuildError when ``templates/base/`` is missing.
    """
    base_dir = templates_dir / BASE_NAME
    if not base_dir.is_dir():
        raise ImageBuildError(f"{base_dir} is missing; it defines the base image")
    digest = _dir_digest(base_dir)
    digest.update("\n".join(_BASE_CHANGES).encode())
    return digest.hexdigest()


def template_hash(template_dir: Path, base: str) -> str:
    """Content hash of a template: its base's hash plus every file of its directory."""
    digest = hashlib.sha256(b"base\0" + base.encode() + b"\0")
    digest.update(_dir_digest(template_dir).digest())
    return digest.hexdigest()


def build_all(
    client: docker.DockerClient,
    templates_dir: Path,
    prefix: str,
    only: list[str] | None = None,
    log: Log = print,
    *,
    mirror: str | None = None,
    build_dir: Path | None = None,
) -> list[BuildResult]:
    """Bring the base and the templates (all, or those named in ``only``) up to date.

    The base is always brought up to date first because templates are built from it. An image
    whose ``:latest`` already carries the current input hash is left alone. ``mirror``
    overrides the Debian mirror of ``templates/base/debootstrap.conf``; ``build_dir`` (default
    ``.paddock/build`` next to ``templates_dir``) holds the temporary root filesystem and a
    lock that serialises concurrent builds.

    Raises ImageBuildError naming the image when a build fails or ``only`` names an unknown
    template; docker.errors.DockerException when the engine cannot be reached.
    """
    templates_dir = templates_dir.resolve()
    templates = _discover(templates_dir)
    if only:
        known = {t.name.lower() for t in templates}
        wanted = {name.lower() for name in only}
        unknown = sorted(name for name in only if name.lower() not in known | {BASE_NAME})
        if unknown:
            names = ", ".join(t.name for t in templates)
            raise ImageBuildError(f"unknown template(s) {', '.join(unknown)} (known: {names})")
        templates = [t for t in templates if t.name.lower() in wanted]
    if build_dir is None:
        build_dir = templates_dir.parent / ".paddock" / "build"
    build_dir.mkdir(parents=True, exist_ok=True)

    with _build_lock(build_dir, log):
        results = [_ensure_base(client, templates_dir, prefix, log, mirror, build_dir)]
        base_ref = f"{base_repo(prefix)}:{results[0].hash[:12]}"
        for template in templates:
            results.append(
                _ensure_template(client, template, prefix, results[0].hash, base_ref, log)
            )
    return results


@contextmanager
def _build_lock(build_dir: Path, log: Log) -> Iterator[None]:
    """Hold an exclusive flock on ``<build_dir>/.lock`` so two builders never run at once."""
    fd = os.open(build_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log("[images] another build is running; waiting for it to finish")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _current(client: docker.DockerClient, ref: str, wanted: str) -> Any | None:
    """The image at ``ref`` if it exists and carries ``wanted`` as its hash label."""
    try:
        image = client.images.get(ref)
    except docker.errors.ImageNotFound:
        return None
    if (image.labels or {}).get(HASH_LABEL) != wanted:
        return None
    return image


def _size(image: Any) -> int:
    return int(image.attrs.get("Size") or 0)


def _mb(size: int) -> str:
    return f"{size / 1e6:.0f} MB"


def _ensure_base(
    client: docker.DockerClient,
    templates_dir: Path,
    prefix: str,
    log: Log,
    mirror: str | None,
    build_dir: Path,
) -> BuildResult:
    repo = base_repo(prefix)
    h = base_hash(templates_dir)
    image = _current(client, f"{repo}:latest", h)
    if image is not None:
        # Templates are built FROM the hash tag, so restore it if someone removed it.
        if f"{repo}:{h[:12]}" not in image.tags:
            image.tag(repo, h[:12])
        log(f"[images] {BASE_NAME}: up to date (hash {h[:12]}, {_mb(_size(image))})")
        return BuildResult(BASE_NAME, f"{repo}:latest", h, False, 0.0, _size(image))

    log(f"[images] {BASE_NAME}: building (debootstrap)...")
    started = time.monotonic()
    conf = _read_conf(templates_dir / BASE_NAME / "debootstrap.conf")
    packages = _read_list(templates_dir / BASE_NAME / "packages.txt")
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
        _configure(rootfs, templates_dir / BASE_NAME / "configure.sh")
        image = _import(client, rootfs, repo, h)
    finally:
        _remove_tree(work)
    _prune_old_tags(client, repo, h[:12])
    seconds = time.monotonic() - started
    log(f"[images] {BASE_NAME}: built in {seconds:.1f} s ({_mb(_size(image))})")
    return BuildResult(BASE_NAME, f"{repo}:latest", h, True, seconds, _size(image))


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
        "PATH": _CHROOT_PATH,
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
    changes = [*_BASE_CHANGES, f"LABEL {HASH_LABEL}={h}"]
    with tempfile.TemporaryFile() as tar_err:
        # --numeric-owner: the rootfs's /etc/passwd, not the host's, gives uids their names.
        tar = subprocess.Popen(
            ["tar", "--numeric-owner", "-C", str(rootfs), "-c", "."],
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
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)
    result = subprocess.run(
        ["rm", "-rf", "--one-file-system", resolved], check=False, capture_output=True, text=True
    )
    if result.returncode != 0:
        logger.warning("could not remove %s: %s", resolved, result.stderr.strip())


def _prune_old_tags(client: docker.DockerClient, repo: str, keep: str) -> None:
    """Untag this repo's older ``:<hash12>`` tags; best effort, never fails the build.

    Only tags that look like our hash tags are touched. An image still used by a container or
    as the parent of another image stays on disk (the engine refuses or merely untags it).
    """
    try:
        images = client.images.list(name=repo)
    except docker.errors.APIError:
        return
    for image in images:
        for tag in image.tags:
            name, _, version = tag.rpartition(":")
            if name != repo or version == keep or not _HASH_TAG.match(version):
                continue
            try:
                client.api.remove_image(tag)
                logger.info("removed old image tag %s", tag)
            except docker.errors.APIError as exc:
                logger.debug("kept old image tag %s: %s", tag, exc)


def _ensure_template(
    client: docker.DockerClient,
    template: _Template,
    prefix: str,
    base: str,
    base_ref: str,
    log: Log,
) -> BuildResult:
    h = template_hash(template.path, base)
    latest = image_ref(prefix, template.name)
    repo = latest.rpartition(":")[0]
    image = _current(client, latest, h)
    if image is not None:
        log(f"[images] {template.name}: up to date (hash {h[:12]}, {_mb(_size(image))})")
        return BuildResult(template.name, latest, h, False, 0.0, _size(image))

    log(f"[images] {template.name}: building...")
    started = time.monotonic()
    tagged = f"{repo}:{h[:12]}"
    _docker_build(client, template, tagged, base_ref, h)
    try:
        image = client.images.get(tagged)
    except docker.errors.ImageNotFound as exc:
        raise ImageBuildError(f"{template.name}: build reported success but no image") from exc
    image.tag(repo, "latest")
    _prune_old_tags(client, repo, h[:12])
    seconds = time.monotonic() - started
    log(f"[images] {template.name}: built in {seconds:.1f} s ({_mb(_size(image))})")
    return BuildResult(template.name, latest, h, True, seconds, _size(image))


class _BuildOutput:
    """Reassembles the builder's output into lines and remembers the step and the last lines.

    Chunks of the stream do not end at line boundaries (stdout and stderr of a RUN step
    arrive interleaved in pieces), so a partial line is held until its newline arrives.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.step = "(before the first step)"
        self.tail: deque[str] = deque(maxlen=ERROR_TAIL_LINES)
        self._pending = ""

    def feed(self, text: str) -> None:
        lines = (self._pending + text).split("\n")
        self._pending = lines.pop()
        for line in lines:
            self._line(line)

    def flush(self) -> None:
        if self._pending:
            self._line(self._pending)
            self._pending = ""

    def _line(self, raw: str) -> None:
        line = _ANSI.sub("", raw).rstrip()
        if not line:
            return
        logger.debug("[%s] %s", self.name, line)
        if line.startswith("Step "):
            self.step = line
        if not line.startswith(_BUILD_NOISE):
            self.tail.append(line)

    def failure(self, message: object) -> ImageBuildError:
        self.flush()
        return ImageBuildError(
            f"{self.name}: build failed at {self.step}: {str(message).strip()}\n"
            "last output:\n" + "\n".join(self.tail)
        )


def _docker_build(
    client: docker.DockerClient, template: _Template, tag: str, base_ref: str, h: str
) -> None:
    """Build ``template`` as ``tag``, streaming its output to the debug log.

    Raises ImageBuildError with the failing step and the last lines of output.
    """
    output = _BuildOutput(template.name)
    try:
        # Host networking: RUN steps reach the Debian mirror directly instead of depending on
        # the docker bridge's NAT, which is not set up on every host. pull=False: FROM is the
        # locally built base and no registry is reachable anyway.
        stream = client.api.build(
            path=str(template.path),
            tag=tag,
            buildargs={"BASE_IMAGE": base_ref},
            labels={TEMPLATE_LABEL: template.name, HASH_LABEL: h},
            network_mode="host",
            rm=True,
            forcerm=True,
            pull=False,
            decode=True,
        )
        for chunk in stream:
            if "error" in chunk or "errorDetail" in chunk:
                detail = chunk.get("errorDetail") or {}
                raise output.failure(chunk.get("error") or detail.get("message") or "unknown error")
            text = chunk.get("stream")
            if isinstance(text, str):
                output.feed(text)
    except docker.errors.APIError as exc:
        raise output.failure(exc) from exc
    output.flush()


def _list(client: docker.DockerClient, prefix: str) -> None:
    try:
        base = client.images.get(f"{base_repo(prefix)}:latest")
        base_line = (
            f"{'base':<12} {base_repo(prefix) + ':latest':<32} "
            f"{(base.labels or {}).get(HASH_LABEL, '?')[:12]:<12} {_mb(_size(base)):>8}"
        )
        print(base_line)
    except docker.errors.ImageNotFound:
        print(f"{'base':<12} (not built)")
    for name, ref in available_templates(client, prefix).items():
        image = client.images.get(ref)
        h = (image.labels or {}).get(HASH_LABEL, "?")[:12]
        print(f"{name:<12} {ref:<32} {h:<12} {_mb(_size(image)):>8}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m workers.images``; returns the process exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m workers.images", description=__doc__.split("\n")[0]
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="stream build output")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build the base and template images that are stale")
    build.add_argument(
        "--templates-dir",
        default=os.environ.get("PADDOCK_TEMPLATES_DIR") or "templates",
        help="directory holding base/ and one directory per template (default: %(default)s)",
    )
    build.add_argument("--prefix", default=os.environ.get("PADDOCK_IMAGE_PREFIX") or "paddock")
    build.add_argument("--only", nargs="+", metavar="NAME", help="build only these templates")
    listing = sub.add_parser("list", help="list the built images")
    listing.add_argument("--prefix", default=os.environ.get("PADDOCK_IMAGE_PREFIX") or "paddock")
    args = parser.parse_args(argv)

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(message)s" if args.verbose else "%(levelname)s %(name)s: %(message)s",
    )
    try:
        # Builds stream output slowly (an apt step can be silent for minutes), so the socket
        # timeout is generous; it bounds a single read, not the whole build.
        client = docker.from_env(timeout=900)
        if args.command == "list":
            _list(client, args.prefix)
            return 0
        started = time.monotonic()
        results = build_all(
            client,
            Path(args.templates_dir),
            args.prefix,
            only=args.only,
            mirror=os.environ.get("PADDOCK_DEBIAN_MIRROR") or None,
        )
    except ImageBuildError as exc:
        print(f"[images] error: {exc}", file=sys.stderr)
        return 1
    except docker.errors.DockerException as exc:
        print(f"[images] error: docker engine: {exc}", file=sys.stderr)
        return 1
    built = sum(1 for r in results if r.built)
    print(
        f"[images] done in {time.monotonic() - started:.1f} s ({built} built, "
        f"{len(results) - built} up to date)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
