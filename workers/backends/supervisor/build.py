"""Build the supervisor binary inside the Go template image, cached by a hash of its source.

``python -m workers.backends.supervisor.build`` prints the binary's path. The build runs with
no network and no module downloads (stdlib only); a second build of the same source is a
cache hit under ``.paddock/build/supervisor/<hash>/``."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[3]
SOURCE = ROOT / "supervisor"
BUILD_DIR = ROOT / ".paddock" / "build"
GO_IMAGE = "paddock/tpl-go:latest"
BINARY = "paddock-supervisor"


class BuildError(RuntimeError):
    """The Go build failed (its output is in the message)."""


def source_hash(source: Path = SOURCE, image: str = GO_IMAGE) -> str:
    """A hash of every file under ``source`` (names and contents) and the builder image."""
    digest = hashlib.sha256(image.encode() + b"\0")
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        digest.update(path.relative_to(source).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:20]


def build(source: Path = SOURCE, out_root: Path = BUILD_DIR, image: str = GO_IMAGE) -> Path:
    """The path of the binary for this source, built first if not cached.

    Raises BuildError when the Go build fails, FileNotFoundError without a docker CLI."""
    target = out_root / "supervisor" / source_hash(source, image) / BINARY
    if target.is_file():
        return target
    cache = out_root / "gocache"
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out_root))
    # The user's own uid, so the outputs belong to the caller; no capabilities, no network.
    user = f"{os.getuid()}:{os.getgid()}"
    script = 'test -z "$(gofmt -l .)" || { gofmt -l .; exit 3; }; go vet ./... && ' + (
        f"go build -trimpath -buildvcs=false -ldflags='-s -w' -o /out/{BINARY} ."
    )
    command = ["docker", "run", "--rm", "--network", "none", "--user", user, "--cap-drop", "ALL"]
    command += ["--security-opt", "no-new-privileges:true"]
    command += ["-v", f"{source}:/src:ro", "-v", f"{staging}:/out", "-v", f"{cache}:/gocache"]
    for env in ("HOME=/tmp", "GOTMPDIR=/tmp", "GOCACHE=/gocache", "GOPATH=/tmp/gopath"):
        command += ["-e", env]
    command += ["-e", "GOPROXY=off", "-e", "GOFLAGS=-mod=mod", "-e", "CGO_ENABLED=0"]
    command += ["-w", "/src", image, "sh", "-c", script]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            raise BuildError(
                f"supervisor build failed ({done.returncode}):\n{done.stdout}{done.stderr}"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / BINARY, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("built the supervisor: %s", target)
    return target


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        print(build())
    except BuildError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
