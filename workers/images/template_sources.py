"""What the image builder reads from disk: the templates path, the templates found on it, the
directory defining the base, the content hashes of their inputs and the build arguments each
template receives. No Docker engine is involved; :mod:`workers.images.build` builds from these.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from workers.images import rootfs
from workers.images.rootfs import BASE_NAME
from workers.images.templates import ImageBuildError

_ROOT = Path(__file__).resolve().parent.parent.parent
# Paddock's own templates: where the base is defined when no directory on the path has one.
BUILTIN_TEMPLATES = _ROOT / "templates"
# Part of every template's hash: bumped when the builder changes what it puts into an image
# (2: the versions label), so that images made by an older builder are rebuilt.
BUILDER_VERSION = "2"

# Docker repository path components allow only these; template names are lowercased into one.
_REPO_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_ARG = re.compile(r"^\s*ARG\s+([A-Za-z_][A-Za-z0-9_]*)", re.MULTILINE | re.IGNORECASE)
_FROM_BASE = re.compile(
    r"^\s*FROM\s+(?:--\S+\s+)*\$(?:BASE_IMAGE|\{BASE_IMAGE\})(?:\s|$)", re.MULTILINE | re.IGNORECASE
)

TemplatesPath = Path | Sequence[Path]


@dataclass(frozen=True)
class TemplateDir:
    """One template on the path: its name, its directory and its Dockerfile's text."""

    name: str
    path: Path
    dockerfile: str


def parse_templates_path(value: str) -> list[Path]:
    """``PADDOCK_TEMPLATES_DIR``'s value (directories separated by ``:``) as paths."""
    return [Path(part) for part in value.split(os.pathsep) if part.strip()]


def as_dirs(templates: TemplatesPath) -> list[Path]:
    """The templates path as a list, whether it was given as one directory or several."""
    return [templates] if isinstance(templates, Path) else list(templates)


def discover_templates(templates: TemplatesPath) -> list[str]:
    """Names of the templates on the path: every subdirectory with a Dockerfile.

    Raises ImageBuildError for a missing directory, a name that cannot become a docker
    repository name, two names that differ only in case (they would share one image), or a
    Dockerfile that is not built FROM ${BASE_IMAGE}.
    """
    return [t.name for t in scan_templates(as_dirs(templates))]


def scan_templates(dirs: list[Path]) -> list[TemplateDir]:
    """The templates in ``dirs``, directory by directory in name order.

    Raises ImageBuildError as `discover_templates` does.
    """
    templates: list[TemplateDir] = []
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
            templates.append(TemplateDir(path.name, path, dockerfile))
    return templates


def base_dir(templates: TemplatesPath) -> Path:
    """The directory defining the base: the first ``base/`` on the path, else the built-in one.

    Raises ImageBuildError when neither exists.
    """
    for directory in as_dirs(templates):
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
