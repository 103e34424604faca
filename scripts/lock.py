"""requirements.lock: every dependency of Paddock (runtime, the `dev` extra and the build
backend) pinned, with the hashes of its files.

    python3 scripts/lock.py compile   # `make lock` (keeps pins; `make lock UPGRADE=1` lifts them)
    python3 scripts/lock.py check     # bootstrap: fail if pyproject.toml changed since, or
                                      # the lock holds anything but pins and hashes

The lock is universal (uv's resolver, for every Python 3.11 and platform, with environment
markers): the host's Python (3.11.7 here) and the image's (Debian's 3.11.2) need different
packages (redis pulls async-timeout below 3.11.3). Hashes are those of the package index's
files; pip on a machine with a local mirror or wheel directory skips a local file whose hash is
not in the lock and takes the index's. Only the standard library here: bootstrap runs this with
the system Python before any virtualenv exists.

The lock's first lines record a digest of the parts of pyproject.toml it was made from
(dependencies, extras, build requirements, requires-python), so `check` notices an edit that
was not followed by `make lock` without needing the resolver. `check` also refuses any line
pip would read that uv does not write (an option such as --index-url, -r or -e; a URL or a
path instead of a pin): the digest says nothing about the rest of the file, and pip follows
such lines before any hash is checked.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"
LOCK = ROOT / "requirements.lock"
# The resolver, in a virtualenv of its own under .paddock (only `make lock` needs it).
UV_VERSION = "0.13.9"
TOOLS = ROOT / ".paddock" / "tools" / "uv"
DIGEST_PREFIX = "# pyproject-deps-sha256: "
# The only lines uv writes besides comments: a pin (name==version, maybe an environment
# marker) and its hashes, each but the last continued with a backslash.
PIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9.!+_-]+( ; [^\\#]+)? \\")
HASH = re.compile(r"    --hash=sha256:[0-9a-f]{64}( \\)?")


def deps_digest(pyproject: Path = PYPROJECT) -> str:
    """The sha256 of what the lock is made from; other edits (tool settings) do not count."""
    data = tomllib.loads(pyproject.read_text())
    project = data.get("project", {})
    relevant = {
        "requires-python": project.get("requires-python"),
        "dependencies": project.get("dependencies", []),
        "optional-dependencies": project.get("optional-dependencies", {}),
        "build-requires": data.get("build-system", {}).get("requires", []),
    }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()


def recorded_digest(text: str) -> str | None:
    for line in text.splitlines():
        if line.startswith(DIGEST_PREFIX):
            return line[len(DIGEST_PREFIX) :].strip()
    return None


def foreign_lines(text: str) -> list[str]:
    """The lines of a lock that are neither a comment, a pin nor a hash, as uv writes them."""
    return [
        line
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
        if not (PIN.fullmatch(line) or HASH.fullmatch(line))
    ]


def check(lock: Path = LOCK, pyproject: Path = PYPROJECT) -> int:
    """0 if the lock matches pyproject.toml and holds only pins and hashes; 1 with the reason
    on stderr."""
    try:
        text = lock.read_text(encoding="utf-8")
        digest = deps_digest(pyproject)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        print(
            f"lock: cannot read {lock.name} or {pyproject.name} ({exc}): run `make lock`",
            file=sys.stderr,
        )
        return 1
    recorded = recorded_digest(text)
    if recorded is None:
        print(f"lock: {lock.name} has no digest line: run `make lock`", file=sys.stderr)
        return 1
    foreign = foreign_lines(text)
    if foreign:
        print(
            f"lock: {lock.name} holds {len(foreign)} line(s) that are not a pin or a hash "
            f"(the first: {foreign[0][:200]!r}): run `make lock`",
            file=sys.stderr,
        )
        return 1
    if recorded != digest:
        print(
            f"lock: pyproject.toml's dependencies changed since {lock.name} was made: "
            "run `make lock` and commit requirements.lock",
            file=sys.stderr,
        )
        return 1
    return 0


def _uv() -> Path:
    uv = TOOLS / "bin" / "uv"
    have = (
        subprocess.run([uv, "--version"], capture_output=True, text=True) if uv.exists() else None
    )
    if have is None or UV_VERSION not in have.stdout:
        subprocess.run([sys.executable, "-m", "venv", TOOLS], check=True)
        subprocess.run([TOOLS / "bin" / "pip", "install", "-q", f"uv=={UV_VERSION}"], check=True)
    return uv


def compile_lock(upgrade: bool) -> int:
    """Resolve and write the lock (existing pins are kept unless ``upgrade``).

    Raises subprocess.CalledProcessError when the resolver fails."""
    data = tomllib.loads(PYPROJECT.read_text())
    extras = sorted(data.get("project", {}).get("optional-dependencies", {}))
    build_requires = data.get("build-system", {}).get("requires", [])
    with tempfile.TemporaryDirectory() as tmp:
        # The build backend, so Paddock itself installs with --no-build-isolation from the lock.
        build_in = Path(tmp) / "build-requires.in"
        build_in.write_text("".join(f"{r}\n" for r in build_requires))
        out = Path(tmp) / "requirements.lock"
        if LOCK.exists() and not upgrade:
            out.write_text(LOCK.read_text())  # uv keeps the pins of an existing output file
        cmd = [
            str(_uv()),
            "pip",
            "compile",
            "--quiet",
            "--no-config",  # no uv.toml of the user's: the index is the default one
            "--universal",
            "--python-version",
            "3.11",
            "--generate-hashes",
            *[f"--extra={e}" for e in extras],
            "--no-emit-index-url",
            "--custom-compile-command",
            "make lock",
            "--output-file",
            str(out),
            *(["--upgrade"] if upgrade else []),
            "pyproject.toml",
            str(build_in),
        ]
        # The annotations name the inputs; a temporary path would differ on every run.
        subprocess.run(cmd, cwd=ROOT, check=True, env={**os.environ, "UV_NO_PROGRESS": "1"})
        text = out.read_text().replace(str(build_in), "build-system.requires")
    lines = [ln for ln in text.splitlines() if not ln.startswith(DIGEST_PREFIX)]
    # After uv's header (its first comment lines), before the first requirement.
    at = next((i for i, ln in enumerate(lines) if ln and not ln.startswith("#")), len(lines))
    lines.insert(at, f"{DIGEST_PREFIX}{deps_digest()}")
    LOCK.write_text("\n".join(lines) + "\n")
    print(f"lock: wrote {LOCK.relative_to(ROOT)}")
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["check"]:
        return check()
    if argv[:1] == ["compile"]:
        return compile_lock(upgrade=os.environ.get("UPGRADE", "") not in ("", "0"))
    if argv[:1] == ["digest"]:
        print(deps_digest())
        return 0
    print("usage: lock.py compile|check|digest", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
