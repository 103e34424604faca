"""Where a test stack keeps a sandbox's capped storage on the host, and what of it is left."""

from __future__ import annotations

from pathlib import Path

from devstack.stack import Stack


def storage_of(stack: Stack, host: str, sid: str) -> Path:
    return stack.workdir / "storage" / stack.instance / host / sid


def host_traces(path: Path) -> list[str]:
    """Mounts and loop devices on the host that still refer to ``path``."""
    found = [
        line for line in Path("/proc/self/mountinfo").read_text().splitlines() if str(path) in line
    ]
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            if str(path) in backing.read_text():
                found.append(f"{backing.parent.parent.name}: {backing.read_text().strip()}")
        except OSError:
            continue  # detached meanwhile
    return found
