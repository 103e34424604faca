"""Brings one template image up to date: build its directory ``FROM`` the base with the classic
builder, measure its language versions inside the result (:mod:`workers.images.templates`),
label it, tag it and untag older builds. The builder's output goes to the debug log; a failure
is reported with the failing step and the last lines of output. :mod:`workers.images.build`
decides what to build.
"""

from __future__ import annotations

import io
import json
import logging
import re
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors

from workers.backends.base import SANDBOX_USER
from workers.images.rootfs import ERROR_TAIL_LINES
from workers.images.template_sources import TemplateDir, declared_args, template_hash
from workers.images.templates import (
    HASH_LABEL,
    TEMPLATE_LABEL,
    VERSIONS_LABEL,
    ImageBuildError,
    ProbeError,
    image_ref,
    parse_versions_label,
    run_probes,
    version_probes,
)

logger = logging.getLogger(__name__)

_HASH_TAG = re.compile(r"^[0-9a-f]{12}$")
# The classic builder colours RUN steps' stderr; escape codes only clutter an error message.
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# Builder bookkeeping lines that would crowd the useful output out of an error's tail.
_BUILD_NOISE = (" ---> ", "Removing intermediate container")

Log = Callable[[str], object]


@dataclass(frozen=True)
class BuildResult:
    """Outcome for one image of :func:`workers.images.build.build_all`."""

    name: str
    ref: str
    hash: str
    built: bool
    seconds: float
    size_bytes: int
    versions: dict[str, str]


def current_image(client: docker.DockerClient, ref: str, wanted: str) -> Any | None:
    """The image at ``ref`` if it exists and carries ``wanted`` as its hash label."""
    try:
        image = client.images.get(ref)
    except docker.errors.ImageNotFound:
        return None
    if (image.labels or {}).get(HASH_LABEL) != wanted:
        return None
    return image


def image_size(image: Any) -> int:
    return int(image.attrs.get("Size") or 0)


def mb(size: int) -> str:
    return f"{size / 1e6:.0f} MB"


def versions_text(versions: Mapping[str, str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in versions.items())


def prune_old_tags(client: docker.DockerClient, repo: str, keep: str) -> None:
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
class TemplateStep:
    """Brings one template up to date: build, measure versions, label, tag."""

    client: docker.DockerClient
    prefix: str
    base_hash: str
    base_ref: str
    log: Log
    position: str

    def ensure(
        self, template: TemplateDir, build_args: dict[str, str], no_cache: bool
    ) -> BuildResult:
        """Raises ImageBuildError naming the template when its build or version probe fails."""
        name = template.name
        args = {k: v for k, v in build_args.items() if k in declared_args(template.dockerfile)}
        h = template_hash(template.path, self.base_hash, args)
        latest = image_ref(self.prefix, name)
        repo = latest.rpartition(":")[0]
        image = current_image(self.client, latest, h)
        if image is not None:
            versions = parse_versions_label((image.labels or {}).get(VERSIONS_LABEL))
            self.log(
                f"[images] {self.position} {name}: up to date (hash {h[:12]}, "
                f"{mb(image_size(image))})"
            )
            return BuildResult(name, latest, h, False, 0.0, image_size(image), versions)
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
        prune_old_tags(self.client, repo, h[:12])
        seconds = time.monotonic() - started
        detail = mb(image_size(image)) + (f"; {versions_text(versions)}" if versions else "")
        self.log(f"[images] {self.position} {name}: built in {seconds:.1f} s ({detail})")
        return BuildResult(name, latest, h, True, seconds, image_size(image), versions)


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
    template: TemplateDir,
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
