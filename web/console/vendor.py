"""The console's third-party browser files (xterm.js and two of its addons), pinned here by
version and npm integrity hash, fetched at build time and served by the console from
``web/console/vendor/`` (not committed; ``.gitignore``). Nothing is fetched at run time.

``python -m web.console.vendor`` (run by ``make images``) asks ``npm pack`` for each pinned
tarball (npm's own registry settings and content-addressed cache apply), checks its sha512
against the pin, and copies out only the files `Package.files` names. The folder carries a
stamp of the pins: while it matches, nothing is fetched again. A tarball whose hash differs
from its pin is refused and nothing is replaced.

Why these three: xterm.js 5.5's default DOM renderer writes ``<style>`` elements, which the
console's Content-Security-Policy (no inline style) refuses; its canvas renderer addon draws
without any, so the terminal loads with the addon first and the policy stays strict. The
fit addon sizes the terminal to its box.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

VENDOR_DIR = Path(__file__).parent / "vendor"
STAMP = ".pins"
_MAX_FILE = 4 << 20  # bytes: far above any file below; a tarball claiming more is refused
_NPM_TIMEOUT = 300  # seconds for one `npm pack`


class VendorError(RuntimeError):
    """A pinned package could not be fetched, or is not what its pin says."""


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    integrity: str  # npm's "sha512-<base64>" of the tarball
    files: tuple[tuple[str, str], ...]  # (path in the tarball under package/, name served)


PACKAGES = (
    Package(
        "@xterm/xterm",
        "5.5.0",
        "sha512-hqJHYaQb5OptNunnyAnkHyM8aCjZ1MEIDTQu1iIbbTD/xops91NB5yq1ZK/dC2JDbVWtF23zUtl9JE2NqwT87A==",
        (("lib/xterm.js", "xterm.js"), ("css/xterm.css", "xterm.css")),
    ),
    Package(
        "@xterm/addon-canvas",
        "0.7.0",
        "sha512-LF5LYcfvefJuJ7QotNRdRSPc9YASAVDeoT5uyXS/nZshZXjYplGXRECBGiznwvhNL2I8bq1Lf5MzRwstsYQ2Iw==",
        (("lib/addon-canvas.js", "xterm-addon-canvas.js"),),
    ),
    Package(
        "@xterm/addon-fit",
        "0.10.0",
        "sha512-UFYkDm4HUahf2lnEyHvio51TNGiLK66mqP2JoATy7hRZeXaGMRDr00JiSF7m63vR5WKATF605yEggJKsw0JpMQ==",
        (("lib/addon-fit.js", "xterm-addon-fit.js"),),
    ),
)
# Every name the console serves from VENDOR_DIR (web/console/__init__.py).
FILES = frozenset(served for p in PACKAGES for _, served in p.files)


def pins_digest(packages: tuple[Package, ...] = PACKAGES) -> str:
    text = "\n".join(f"{p.name}@{p.version} {p.integrity} {p.files}" for p in packages)
    return hashlib.sha256(text.encode()).hexdigest()


def installed(folder: Path = VENDOR_DIR, packages: tuple[Package, ...] = PACKAGES) -> bool:
    """True when ``folder`` holds every file of these pins."""
    try:
        stamp = (folder / STAMP).read_text().strip()
    except OSError:
        return False
    served = [served for p in packages for _, served in p.files]
    return stamp == pins_digest(packages) and all((folder / n).is_file() for n in served)


def check_integrity(data: bytes, integrity: str) -> None:
    """Raises VendorError unless ``data``'s sha512 is the one ``integrity`` names."""
    algo, _, want = integrity.partition("-")
    if algo != "sha512" or not want:
        raise VendorError(f"unsupported integrity {integrity[:20]!r} (sha512 only)")
    got = base64.b64encode(hashlib.sha512(data).digest()).decode()
    if got != want:
        raise VendorError(f"integrity mismatch: pinned sha512-{want}, got sha512-{got}")


def extract(data: bytes, package: Package, into: Path) -> None:
    """Copy ``package.files`` out of its tarball ``data`` into ``into``: regular files only,
    by exact name (nothing else in the tarball is written anywhere). Raises VendorError."""
    wanted = {f"package/{inner}": served for inner, served in package.files}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            served = wanted.get(member.name)
            if served is None:
                continue
            if not member.isreg() or member.size > _MAX_FILE:
                raise VendorError(f"{package.name}: {member.name} is not a regular small file")
            source = tar.extractfile(member)
            assert source is not None  # a regular file
            (into / served).write_bytes(source.read())
            del wanted[member.name]
    if wanted:
        raise VendorError(f"{package.name}@{package.version} lacks {sorted(wanted)}")


def npm_pack(package: Package, workdir: Path) -> bytes:
    """The package's tarball, through ``npm pack`` (no scripts run). Raises VendorError."""
    npm = shutil.which("npm")
    if npm is None:
        raise VendorError("npm is missing: scripts/bootstrap.sh installs it (Debian's npm)")
    spec = f"{package.name}@{package.version}"
    command = [npm, "pack", spec, "--pack-destination", str(workdir), "--ignore-scripts"]
    command += ["--silent", "--json"]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=_NPM_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        raise VendorError(f"npm pack {spec}: no answer in {_NPM_TIMEOUT} s") from None
    if done.returncode != 0:
        raise VendorError(f"npm pack {spec} failed ({done.returncode}): {done.stderr[-2000:]}")
    tarballs = list(workdir.glob("*.tgz"))
    if len(tarballs) != 1:
        raise VendorError(f"npm pack {spec}: expected one tarball, found {len(tarballs)}")
    data = tarballs[0].read_bytes()
    tarballs[0].unlink()
    return data


def ensure(folder: Path = VENDOR_DIR, packages: tuple[Package, ...] = PACKAGES) -> bool:
    """Fetch and install the pinned files unless ``folder`` has them; True when it fetched.
    The folder is replaced whole, only once every package passed its check.

    Raises VendorError (npm missing or failing, a hash or a file not as pinned)."""
    if installed(folder, packages):
        return False
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".vendor-", dir=folder.parent))
    staging.chmod(0o755)  # (mkdtemp's is 0700) the web tier may run as another user
    try:
        with tempfile.TemporaryDirectory(prefix="paddock-npm-") as work:
            for package in packages:
                data = npm_pack(package, Path(work))
                check_integrity(data, package.integrity)
                extract(data, package, staging)
                logger.info("console: %s@%s checked and unpacked", package.name, package.version)
        (staging / STAMP).write_text(pins_digest(packages) + "\n")
        old = folder.with_name(folder.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if folder.exists():
            os.replace(folder, old)
        os.replace(staging, folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return True


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        fetched = ensure()
    except VendorError as exc:
        print(f"console assets: {exc}", file=sys.stderr)
        return 1
    state = "fetched" if fetched else "up to date"
    print(f"console assets: {state} in {VENDOR_DIR}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
