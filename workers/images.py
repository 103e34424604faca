"""Builds the sandbox images: a debootstrapped Debian base and one image per template.

``<prefix>/base`` is created without any registry (:mod:`workers.rootfs`). Every
``<Name>/Dockerfile`` under the templates path is then built ``FROM`` that base into
``<prefix>/tpl-<name>``, its language versions are measured inside the result
(:mod:`workers.templates`), and the image is labelled with its name, the content hash of its
inputs and those versions. An image whose inputs did not change is never rebuilt, so a run with
nothing to do takes seconds.

The templates path is one or more directories (``PADDOCK_TEMPLATES_DIR``, separated by ``:``;
default ``templates``). Every subdirectory with a Dockerfile is a template named after it; the
base is defined by the first ``base/`` on the path, or Paddock's own ``templates/base``. So an
operator's own templates can live in a directory of their own next to the built-in ones::

    PADDOCK_TEMPLATES_DIR=templates:/srv/paddock-templates make images

Build arguments (``--build-arg NAME=VALUE`` or ``PADDOCK_BUILD_ARGS="NAME=VALUE ..."``) reach
only the templates whose Dockerfile declares ``ARG NAME``, and are part of their hash.

Command line::

    python -m workers.images build [--templates-dir DIR[:DIR...]] [--prefix paddock]
                                   [--only NAME ...] [--build-arg NAME=VALUE ...] [--no-cache]
    python -m workers.images list
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import io
import json
import logging
import os
import re
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors

from workers import rootfs
from workers.rootfs import BASE_NAME, ERROR_TAIL_LINES
from workers.templates import HASH_LABEL as HASH_LABEL
from workers.templates import (
    SANDBOX_USER,
    VERSIONS_LABEL,
    ProbeError,
    parse_versions_label,
    run_probes,
    version_probes,
)
from workers.templates import TEMPLATE_LABEL as TEMPLATE_LABEL
from workers.templates import ImageBuildError as ImageBuildError
from workers.templates import available_templates as available_templates
from workers.templates import image_ref as image_ref

logger = logging.getLogger(__name__)

_ROOT = Path(__file__).resolve().parent.parent
# Paddock's own templates: where the base is defined when no directory on the path has one.
BUILTIN_TEMPLATES = _ROOT / "templates"
DEFAULT_BUILD_DIR = _ROOT / ".paddock" / "build"
# Part of every template's hash: bumped when the builder changes what it puts into an image
# (2: the versions label), so that images made by an older builder are rebuilt.
BUILDER_VERSION = "2"

# Docker repository path components allow only these; template names are lowercased into one.
_REPO_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_HASH_TAG = re.compile(r"^[0-9a-f]{12}$")
_ARG = re.compile(r"^\s*ARG\s+([A-Za-z_][A-Za-z0-9_]*)", re.MULTILINE | re.IGNORECASE)
_FROM_BASE = re.compile(
    r"^\s*FROM\s+(?:--\S+\s+)*\$(?:BASE_IMAGE|\{BASE_IMAGE\})(?:\s|$)", re.MULTILINE | re.IGNORECASE
)
# The classic builder colours RUN steps' stderr; escape codes only clutter an error message.
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# Builder bookkeeping lines that would crowd the useful output out of an error's tail.
_BUILD_NOISE = (" ---> ", "Removing intermediate container")

Log = Callable[[str], object]
TemplatesPath = Path | Sequence[Path]


@dataclass(frozen=True)
class BuildResult:
    """Outcome for one image of :func:`build_all`."""

    name: str
    ref: str
    hash: str
    built: bool
    seconds: float
    size_bytes: int
    versions: dict[str, str]


@dataclass(frozen=True)
class _Template:
    name: str
    path: Path
    dockerfile: str


def base_repo(prefix: str) -> str:
    return f"{prefix}/{BASE_NAME}"


def parse_templates_path(value: str) -> list[Path]:
    """``PADDOCK_TEMPLATES_DIR``'s value (directories separated by ``:``) as paths."""
    return [Path(part) for part in value.split(os.pathsep) if part.strip()]


def _dirs(templates: TemplatesPath) -> list[Path]:
    return [templates] if isinstance(templates, Path) else list(templates)


def discover_templates(templates: TemplatesPath) -> list[str]:
    """Names of the templates on the path: every subdirectory with a Dockerfile.

    Raises ImageBuildError for a missing directory, a name that cannot become a docker
    repository name, two names that differ only in case (they would share one image), or a
    Dockerfile that is not built FROM ${BASE_IMAGE}.
    """
    return [t.name for t in _discover(_dirs(templates))]


def _discover(dirs: list[Path]) -> list[_Template]:
    templates: list[_Template] = []
    seen: dict[str, Path] = {}
    for directory in dirs:
        if not directory.is_dir():
            raise ImageBuildError(f"templates directory {directory} does not exist")
        for path in sorted(directory.iterdir()):
            if path.name == BASE_NAME or not (path / "Dockerfile").is_file():
                continue
            lower = path.name.lower()
            if not _REPO_COMPONENT.match(lower):
                raise ImageBuildError(
                    f"template directory {path} is not usable as an image name "
                    "(letters, digits and single . _ - separators only)"
                )
            if lower in seen:
                raise ImageBuildError(
                    f"templates {seen[lower]} and {path} have the same name "
                    "(names are compared without case: they would share one image)"
                )
            dockerfile = (path / "Dockerfile").read_text()
            if not _FROM_BASE.search(dockerfile):
                raise ImageBuildError(
                    f"{path.name}: {path / 'Dockerfile'} must build FROM ${{BASE_IMAGE}} "
                    "(declare `ARG BASE_IMAGE` first): sandboxes need the base's user and "
                    "tools, and no registry is used"
                )
            seen[lower] = path
            templates.append(_Template(path.name, path, dockerfile))
    return templates


def base_dir(templates: TemplatesPath) -> Path:
    """The directory defining the base: the first ``base/`` on the path, else the built-in one.

    Raises ImageBuildError when neither exists.
    """
    for directory in _dirs(templates):
        if (directory / BASE_NAME).is_dir():
            return directory / BASE_NAME
    builtin = BUILTIN_TEMPLATES / BASE_NAME
    if not builtin.is_dir():
        raise ImageBuildError(f"{builtin} is missing; it defines the base image")
    return builtin


def _dir_digest(directory: Path) -> hashlib._Hash:
    """sha256 over every file below ``directory``: relative path and content, sorted."""
    digest = hashlib.sha256()
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    for path in files:
        rel = path.relative_to(directory).as_posix()
        digest.update(rel.encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest


def base_hash(base: Path) -> str:
    """Content hash of the base image's inputs (its directory plus the import settings)."""
    digest = _dir_digest(base)
    digest.update("\n".join(rootfs.BASE_CHANGES).encode())
    return digest.hexdigest()


def template_hash(
    template_dir: Path, base: str, build_args: Mapping[str, str] | None = None
) -> str:
    """Content hash of a template: builder version, its base's hash, every file of its
    directory, and the build arguments it receives."""
    digest = hashlib.sha256(f"builder\0{BUILDER_VERSION}\0base\0{base}\0".encode())
    digest.update(_dir_digest(template_dir).digest())
    for name, value in sorted((build_args or {}).items()):
        digest.update(f"arg\0{name}\0{value}\0".encode())
    return digest.hexdigest()


def declared_args(dockerfile: str) -> set[str]:
    """The names of the ``ARG``s a Dockerfile declares."""
    return set(_ARG.findall(dockerfile))


def parse_build_args(items: Sequence[str]) -> dict[str, str]:
    """``NAME=VALUE`` strings as a dict. Raises ImageBuildError for one without ``=``."""
    args: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ImageBuildError(f"build argument {item!r} is not NAME=VALUE")
        if name == "BASE_IMAGE":
            raise ImageBuildError("BASE_IMAGE is set by the builder, not by a build argument")
        args[name] = value
    return args


def build_all(
    client: docker.DockerClient,
    templates_dir: TemplatesPath,
    prefix: str,
    only: list[str] | None = None,
    log: Log = print,
    *,
    mirror: str | None = None,
    build_dir: Path | None = None,
    build_args: Mapping[str, str] | None = None,
    no_cache: bool = False,
) -> list[BuildResult]:
    """Bring the base and the templates (all, or those named in ``only``) up to date.

    ``templates_dir`` is one directory or several (see the module docstring). The base is
    always brought up to date first because templates are built from it; then each template,
    directory by directory in name order, with one progress line each (``[images] 3/11 Go:
    building...``, then ``built in`` or ``up to date``). An image whose ``:latest`` carries the
    current input hash is left alone. ``mirror`` overrides the Debian mirror of the base's
    ``debootstrap.conf``; ``build_dir`` (default ``.paddock/build`` in the repository) holds
    the temporary root filesystem, the package cache and a lock that serialises concurrent
    builds; ``no_cache`` builds templates without the engine's layer cache.

    Raises ImageBuildError naming the image when a build or its version probe fails, or when
    ``only`` names an unknown template; docker.errors.DockerException when the engine cannot be
    reached.
    """
    dirs = [d.resolve() for d in _dirs(templates_dir)]
    templates = _discover(dirs)
    base = base_dir(dirs)
    if only:
        known = {t.name.lower() for t in templates}
        wanted = {name.lower() for name in only}
        unknown = sorted(name for name in only if name.lower() not in known | {BASE_NAME})
        if unknown:
            names = ", ".join(t.name for t in templates)
            raise ImageBuildError(f"unknown template(s) {', '.join(unknown)} (known: {names})")
        templates = [t for t in templates if t.name.lower() in wanted]
    build_dir = build_dir or DEFAULT_BUILD_DIR
    build_dir.mkdir(parents=True, exist_ok=True)
    total = len(templates) + 1

    with _build_lock(build_dir, log):
        results = [_ensure_base(client, base, prefix, log, mirror, build_dir, total)]
        base_ref = f"{base_repo(prefix)}:{results[0].hash[:12]}"
        for i, template in enumerate(templates, start=2):
            step = _Step(client, prefix, results[0].hash, base_ref, log, f"{i}/{total}")
            results.append(step.ensure(template, dict(build_args or {}), no_cache))
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


def _versions_text(versions: Mapping[str, str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in versions.items())


def _ensure_base(
    client: docker.DockerClient,
    base: Path,
    prefix: str,
    log: Log,
    mirror: str | None,
    build_dir: Path,
    total: int,
) -> BuildResult:
    repo = base_repo(prefix)
    h = base_hash(base)
    image = _current(client, f"{repo}:latest", h)
    if image is not None:
        # Templates are built FROM the hash tag, so restore it if someone removed it.
        if f"{repo}:{h[:12]}" not in image.tags:
            image.tag(repo, h[:12])
        log(f"[images] 1/{total} {BASE_NAME}: up to date (hash {h[:12]}, {_mb(_size(image))})")
        return BuildResult(BASE_NAME, f"{repo}:latest", h, False, 0.0, _size(image), {})

    log(f"[images] 1/{total} {BASE_NAME}: building (debootstrap from {base})...")
    started = time.monotonic()
    image = rootfs.build_base(client, base, repo, h, mirror=mirror, build_dir=build_dir)
    _prune_old_tags(client, repo, h[:12])
    seconds = time.monotonic() - started
    log(f"[images] 1/{total} {BASE_NAME}: built in {seconds:.1f} s ({_mb(_size(image))})")
    return BuildResult(BASE_NAME, f"{repo}:latest", h, True, seconds, _size(image), {})


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


@dataclass
class _Step:
    """Brings one template up to date: build, measure versions, label, tag."""

    client: docker.DockerClient
    prefix: str
    base_hash: str
    base_ref: str
    log: Log
    position: str

    def ensure(
        self, template: _Template, build_args: dict[str, str], no_cache: bool
    ) -> BuildResult:
        name = template.name
        args = {k: v for k, v in build_args.items() if k in declared_args(template.dockerfile)}
        h = template_hash(template.path, self.base_hash, args)
        latest = image_ref(self.prefix, name)
        repo = latest.rpartition(":")[0]
        image = _current(self.client, latest, h)
        if image is not None:
            versions = parse_versions_label((image.labels or {}).get(VERSIONS_LABEL))
            self.log(
                f"[images] {self.position} {name}: up to date (hash {h[:12]}, {_mb(_size(image))})"
            )
            return BuildResult(name, latest, h, False, 0.0, _size(image), versions)
        try:
            probes = version_probes(template.dockerfile)
        except ProbeError as exc:
            raise ImageBuildError(f"{name}: {exc}") from exc

        self.log(f"[images] {self.position} {name}: building...")
        started = time.monotonic()
        # Built under a temporary tag first: the versions are measured inside the result, and
        # labels can only be added by building once more on top of it (a metadata-only step).
        stage = f"{repo}:build-{h[:12]}"
        _docker_build(self.client, template, stage, {"BASE_IMAGE": self.base_ref, **args}, no_cache)
        try:
            try:
                versions = run_probes(self.client, stage, probes)
            except ProbeError as exc:
                raise ImageBuildError(f"{name}: {exc}") from exc
            tagged = f"{repo}:{h[:12]}"
            labels = {
                TEMPLATE_LABEL: name,
                HASH_LABEL: h,
                VERSIONS_LABEL: json.dumps(versions, sort_keys=True),
            }
            _label(self.client, name, stage, tagged, labels)
        finally:
            try:
                # Only the tag goes: the image stays on disk as the labelled image's parent,
                # or is deleted along with a failed build's leftovers.
                self.client.api.remove_image(stage)
            except docker.errors.APIError as exc:
                logger.debug("could not remove %s: %s", stage, exc)
        try:
            image = self.client.images.get(tagged)
        except docker.errors.ImageNotFound as exc:
            raise ImageBuildError(f"{name}: build reported success but no image") from exc
        image.tag(repo, "latest")
        _prune_old_tags(self.client, repo, h[:12])
        seconds = time.monotonic() - started
        detail = _mb(_size(image)) + (f"; {_versions_text(versions)}" if versions else "")
        self.log(f"[images] {self.position} {name}: built in {seconds:.1f} s ({detail})")
        return BuildResult(name, latest, h, True, seconds, _size(image), versions)


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


def _stream_build(output: _BuildOutput, **kwargs: Any) -> None:
    """Run one classic-builder build with ``kwargs``, feeding its output to ``output``.

    Raises ImageBuildError with the failing step and the last lines of output.
    """
    client: docker.DockerClient = kwargs.pop("client")
    try:
        for chunk in client.api.build(rm=True, forcerm=True, pull=False, decode=True, **kwargs):
            if "error" in chunk or "errorDetail" in chunk:
                detail = chunk.get("errorDetail") or {}
                raise output.failure(chunk.get("error") or detail.get("message") or "unknown error")
            text = chunk.get("stream")
            if isinstance(text, str):
                output.feed(text)
    except docker.errors.APIError as exc:
        raise output.failure(exc) from exc
    output.flush()


def _docker_build(
    client: docker.DockerClient,
    template: _Template,
    tag: str,
    buildargs: dict[str, str],
    no_cache: bool,
) -> None:
    """Build ``template``'s directory as ``tag``, streaming its output to the debug log.

    Host networking: RUN steps reach the Debian mirror directly instead of depending on the
    docker bridge's NAT, which is not set up on every host. pull=False: FROM is the locally
    built base and no registry is reachable anyway. Raises ImageBuildError.
    """
    _stream_build(
        _BuildOutput(template.name),
        client=client,
        path=str(template.path),
        tag=tag,
        buildargs=buildargs,
        network_mode="host",
        nocache=no_cache,
    )


def _label(
    client: docker.DockerClient, name: str, source: str, tag: str, labels: dict[str, str]
) -> None:
    """Build ``tag`` as ``source`` plus ``labels`` and the sandbox user as its default user,
    however its Dockerfile ended: metadata-only steps, no new layer."""
    dockerfile = f"FROM {source}\nUSER {SANDBOX_USER}\n".encode()
    _stream_build(
        _BuildOutput(name),
        client=client,
        fileobj=io.BytesIO(dockerfile),
        tag=tag,
        labels=labels,
        network_mode="none",
    )


def _list(client: docker.DockerClient, prefix: str) -> None:
    from workers.templates import template_catalog

    try:
        base = client.images.get(f"{base_repo(prefix)}:latest")
        h = (base.labels or {}).get(HASH_LABEL, "?")[:12]
        print(f"{'base':<12} {base_repo(prefix) + ':latest':<32} {h:<12} {_mb(_size(base)):>8}")
    except docker.errors.ImageNotFound:
        print(f"{'base':<12} (not built)")
    for t in template_catalog(client, prefix):
        print(
            f"{t.name:<12} {t.image:<32} {t.hash[:12]:<12} {_mb(t.size_bytes):>8}  "
            f"{_versions_text(t.versions)}"
        )


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
        help="directories holding one directory per template, separated by ':' "
        "(default: %(default)s)",
    )
    build.add_argument("--prefix", default=os.environ.get("PADDOCK_IMAGE_PREFIX") or "paddock")
    build.add_argument("--only", nargs="+", metavar="NAME", help="build only these templates")
    build.add_argument(
        "--build-arg",
        action="append",
        default=(os.environ.get("PADDOCK_BUILD_ARGS") or "").split(),
        metavar="NAME=VALUE",
        help="a build argument for the templates that declare ARG NAME (repeatable; also "
        "PADDOCK_BUILD_ARGS, space-separated)",
    )
    build.add_argument(
        "--no-cache", action="store_true", help="build templates without the layer cache"
    )
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
            parse_templates_path(args.templates_dir),
            args.prefix,
            only=args.only,
            mirror=os.environ.get("PADDOCK_DEBIAN_MIRROR") or None,
            build_args=parse_build_args(args.build_arg),
            no_cache=args.no_cache,
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
