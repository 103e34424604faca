"""web/console/vendor.py's checks: a tarball is taken only with the pinned sha512, only the
named regular files come out of it, and the folder counts as installed only for these pins."""

from __future__ import annotations

import base64
import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from web.console import vendor
from web.console.vendor import Package, VendorError


def tarball(members: dict[str, bytes], link: str | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if link:
            info = tarfile.TarInfo(link)
            info.type = tarfile.SYMTYPE
            info.linkname = "/etc/passwd"
            tar.addfile(info)
    return buf.getvalue()


def sri(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


PKG = Package("@x/y", "1.0.0", "", (("lib/y.js", "y.js"),))


def test_integrity_is_checked() -> None:
    data = tarball({"package/lib/y.js": b"ok"})
    vendor.check_integrity(data, sri(data))
    with pytest.raises(VendorError, match="mismatch"):
        vendor.check_integrity(data + b"x", sri(data))
    with pytest.raises(VendorError, match="sha512 only"):
        vendor.check_integrity(data, "sha1-abc")


def test_only_named_regular_files_are_extracted(tmp_path: Path) -> None:
    data = tarball({"package/lib/y.js": b"ok", "package/../../evil.js": b"no"})
    vendor.extract(data, PKG, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["y.js"]
    assert (tmp_path / "y.js").read_bytes() == b"ok"
    with pytest.raises(VendorError, match="regular"):
        vendor.extract(tarball({}, link="package/lib/y.js"), PKG, tmp_path / "x")
    with pytest.raises(VendorError, match="lacks"):
        vendor.extract(tarball({"package/other.js": b""}), PKG, tmp_path)


def test_installed_only_for_these_pins(tmp_path: Path) -> None:
    assert not vendor.installed(tmp_path, (PKG,))
    (tmp_path / "y.js").write_text("ok")
    (tmp_path / vendor.STAMP).write_text(vendor.pins_digest((PKG,)))
    assert vendor.installed(tmp_path, (PKG,))
    moved = Package("@x/y", "1.0.1", "", PKG.files)
    assert not vendor.installed(tmp_path, (moved,))
    # The served names are the pins' and nothing else.
    assert {"xterm.js", "xterm.css", "xterm-addon-canvas.js", "xterm-addon-fit.js"} == vendor.FILES
