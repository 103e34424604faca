"""The base image's tar (workers.images.rootfs): a build root with a file system still mounted on
/proc and leftovers in /sys and /dev tars without them (the first `make up` on a fresh machine
failed on `tar: ./proc/...: Cannot open`), and nothing else is dropped."""

from __future__ import annotations

import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from workers.images import rootfs


def _tree(root: Path) -> None:
    for rel in ("proc/1/status", "sys/kernel/x", "dev/pts/0", "etc/hostname", "usr/lib/x/proc/a"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x\n")


def _members(root: Path, out: Path) -> set[str]:
    with out.open("wb") as f:
        subprocess.run(rootfs.tar_command(root), stdout=f, check=True)
    with tarfile.open(out) as tar:
        return {m.name.removeprefix("./").rstrip("/") for m in tar.getmembers()}


def test_tar_keeps_the_runtime_dirs_empty_and_everything_else(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    _tree(root)
    names = _members(root, tmp_path / "out.tar")
    assert {"proc", "sys", "dev", "etc/hostname", "usr/lib/x/proc/a"} <= names
    assert not [n for n in names if n.startswith(("proc/", "sys/", "dev/"))], names


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")
def test_a_mount_left_in_the_root_is_detached_and_not_tarred(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    _tree(root)
    nested = root / "usr/lib/x/proc"
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(nested)], check=True)
    try:
        (nested / "from-the-mount").write_text("live\n")
        assert str(nested) in Path("/proc/self/mounts").read_text()
        rootfs._unmount_under(root)
        assert str(nested) not in Path("/proc/self/mounts").read_text()
        names = _members(root, tmp_path / "out.tar")
        assert "usr/lib/x/proc/a" in names and "usr/lib/x/proc/from-the-mount" not in names
    finally:
        subprocess.run(["umount", "-l", str(nested)], check=False, capture_output=True)
