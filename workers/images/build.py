"""Builds the sandbox images: a debootstrapped Debian base and one image per template.

``<prefix>/base`` is created without any registry (:mod:`workers.images.rootfs`). Every
``<Name>/Dockerfile`` under the templates path is then built ``FROM`` that base into
``<prefix>/tpl-<name>``, its language versions are measured inside the result
(:mod:`workers.images.templates`), and the image is labelled with its name, the content hash
of its inputs and those versions (:mod:`workers.images.template_build`). An image whose inputs
did not change is never rebuilt, so a run with nothing to do takes seconds. What is read from
disk (the templates path, the hashes, the build arguments) is in
:mod:`workers.images.template_sources`.

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
import logging
import os
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import docker
import docker.errors

from shared.errors import ConfigError
from shared.settings import Settings
from workers.images import rootfs
from workers.images.rootfs import BASE_NAME
from workers.images.template_build import (
    BuildResult,
    Log,
    TemplateStep,
    current_image,
    image_size,
    mb,
    prune_old_tags,
    versions_text,
)
from workers.images.template_sources import (
    TemplatesPath,
    as_dirs,
    base_dir,
    base_hash,
    parse_build_args,
    parse_templates_path,
    scan_templates,
)
from workers.images.templates import HASH_LABEL, ImageBuildError, template_catalog

logger = logging.getLogger(__name__)

_ROOT = Path(__file__).resolve().parent.parent.parent
DEFAULT_BUILD_DIR = _ROOT / ".paddock" / "build"


def base_repo(prefix: str) -> str:
    return f"{prefix}/{BASE_NAME}"


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
    dirs = [d.resolve() for d in as_dirs(templates_dir)]
    templates = scan_templates(dirs)
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
            step = TemplateStep(client, prefix, results[0].hash, base_ref, log, f"{i}/{total}")
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
    image = current_image(client, f"{repo}:latest", h)
    if image is not None:
        # Templates are built FROM the hash tag, so restore it if someone removed it.
        if f"{repo}:{h[:12]}" not in image.tags:
            image.tag(repo, h[:12])
        log(f"[images] 1/{total} {BASE_NAME}: up to date (hash {h[:12]}, {mb(image_size(image))})")
        return BuildResult(BASE_NAME, f"{repo}:latest", h, False, 0.0, image_size(image), {})

    log(f"[images] 1/{total} {BASE_NAME}: building (debootstrap from {base})...")
    started = time.monotonic()
    image = rootfs.build_base(client, base, repo, h, mirror=mirror, build_dir=build_dir)
    prune_old_tags(client, repo, h[:12])
    seconds = time.monotonic() - started
    log(f"[images] 1/{total} {BASE_NAME}: built in {seconds:.1f} s ({mb(image_size(image))})")
    return BuildResult(BASE_NAME, f"{repo}:latest", h, True, seconds, image_size(image), {})


def _list(client: docker.DockerClient, prefix: str) -> None:
    try:
        base = client.images.get(f"{base_repo(prefix)}:latest")
        h = (base.labels or {}).get(HASH_LABEL, "?")[:12]
        print(f"{'base':<12} {base_repo(prefix) + ':latest':<32} {h:<12} {mb(image_size(base)):>8}")
    except docker.errors.ImageNotFound:
        print(f"{'base':<12} (not built)")
    for t in template_catalog(client, prefix):
        print(
            f"{t.name:<12} {t.image:<32} {t.hash[:12]:<12} {mb(t.size_bytes):>8}  "
            f"{versions_text(t.versions)}"
        )


def main(argv: list[str] | None = None, settings: Settings | None = None) -> int:
    """Entry point of ``python -m workers.images``; returns the process exit code. The
    ``PADDOCK_*`` settings (default: read from the environment) give the options' defaults."""
    try:
        settings = settings or Settings.from_env()
    except ConfigError as exc:
        print(f"[images] error: {exc}", file=sys.stderr)
        return 1
    parser = argparse.ArgumentParser(
        prog="python -m workers.images", description=__doc__.split("\n")[0]
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="stream build output")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build the base and template images that are stale")
    build.add_argument(
        "--templates-dir",
        default=settings.templates_dir,
        help="directories holding one directory per template, separated by ':' "
        "(default: %(default)s)",
    )
    build.add_argument("--prefix", default=settings.image_prefix)
    build.add_argument("--only", nargs="+", metavar="NAME", help="build only these templates")
    build.add_argument(
        "--build-arg",
        action="append",
        default=settings.build_args.split(),
        metavar="NAME=VALUE",
        help="a build argument for the templates that declare ARG NAME (repeatable; also "
        "PADDOCK_BUILD_ARGS, space-separated)",
    )
    build.add_argument(
        "--no-cache", action="store_true", help="build templates without the layer cache"
    )
    listing = sub.add_parser("list", help="list the built images")
    listing.add_argument("--prefix", default=settings.image_prefix)
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
            mirror=settings.debian_mirror or None,
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
