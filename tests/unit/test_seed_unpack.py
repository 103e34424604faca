"""A hostile seed tar (an image's home, unpacked as root on the host) against _unpack: link
chains, hard links to what was skipped, and more entries than the worker should hold. The
disk cap itself is tested with real storage in tests/integration/test_abuse_disk.py."""

from __future__ import annotations

import io
import logging
import os
import tarfile
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from workers.backends.docker import storage
from workers.backends.docker.storage import _unpack


def add(tar: tarfile.TarFile, name: str, data: bytes = b"", **attrs: Any) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in attrs.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data) if data else None)


def seed_of(tmp_path: Path, members: list[tuple[str, bytes, dict[str, Any]]]) -> Path:
    seed = tmp_path / "seed" / "home.tar"
    seed.parent.mkdir()
    with tarfile.open(seed, "w") as tar:
        add(tar, "user", type=tarfile.DIRTYPE, mode=0o755)
        for name, data, attrs in members:
            add(tar, name, data, **attrs)
    return seed


def unpack(tmp_path: Path, members: list[tuple[str, bytes, dict[str, Any]]]) -> Path:
    return unpack_seed(tmp_path, seed_of(tmp_path, members))


def unpack_seed(tmp_path: Path, seed: Path) -> Path:
    mnt = tmp_path / "mnt"
    (mnt / "home").mkdir(parents=True)
    _unpack(seed, mnt, "home")
    return mnt


def test_a_link_chain_made_to_point_out_later_is_never_written_through(tmp_path: Path) -> None:
    sym = {"type": tarfile.SYMTYPE}
    mnt = unpack(
        tmp_path,
        [
            ("user/a", b"", {**sym, "linkname": "b/../.."}),  # mnt itself while b is absent
            ("user/b", b"", {**sym, "linkname": "."}),  # now a is mnt's parent
            ("user/a/escaped", b"x", {}),
            ("user/c", b"", {**sym, "linkname": "a"}),
            ("user/c/escaped", b"x", {}),
            ("user/d", b"", {"type": tarfile.LNKTYPE, "linkname": "user/a/escaped"}),
        ],
    )
    # a now points out, so nothing is written through it; c (to a) is skipped, so c/escaped
    # lands in a plain directory of the home; d, a hard link through a, is skipped.
    assert os.path.realpath(mnt / "home" / "a") == str(tmp_path)
    assert [p.relative_to(mnt) for p in tmp_path.rglob("escaped")] == [Path("home/c/escaped")]
    assert not (mnt / "home" / "c").is_symlink()
    assert not os.path.lexists(mnt / "home" / "d")


def test_a_hard_link_to_a_skipped_or_later_entry_is_skipped(tmp_path: Path) -> None:
    mnt = unpack(
        tmp_path,
        [
            ("user/fifo", b"", {"type": tarfile.FIFOTYPE}),
            ("user/to-fifo", b"", {"type": tarfile.LNKTYPE, "linkname": "user/fifo"}),
            ("user/to-later", b"", {"type": tarfile.LNKTYPE, "linkname": "user/later"}),
            ("user/dir", b"", {"type": tarfile.DIRTYPE, "mode": 0o755}),
            ("user/to-dir", b"", {"type": tarfile.LNKTYPE, "linkname": "user/dir"}),
            ("user/later", b"x", {}),
            ("user/to-file", b"", {"type": tarfile.LNKTYPE, "linkname": "user/later"}),
        ],
    )
    home = mnt / "home"
    assert sorted(os.listdir(home)) == ["dir", "later", "to-file"]
    assert os.stat(home / "to-file").st_ino == os.stat(home / "later").st_ino


def test_many_skipped_entries_cost_neither_memory_nor_log_lines(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    n = 20_000  # fifos: skipped, so the disk cap never stops them
    seed = seed_of(tmp_path, [(f"user/f{i}", b"", {"type": tarfile.FIFOTYPE}) for i in range(n)])
    caplog.set_level(logging.WARNING, logger=storage.__name__)
    tracemalloc.start()
    try:
        unpack_seed(tmp_path, seed)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Kept, the members alone would take some 10 MiB here.
    assert peak < 2 << 20, peak
    warnings = [r for r in caplog.records if r.name == storage.__name__]
    assert len(warnings) == storage._REFUSALS_LOGGED + 1
    assert f"{n} entries skipped" in warnings[-1].getMessage()
