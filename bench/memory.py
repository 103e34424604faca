"""An idle sandbox's memory, read from the host: its container's memory cgroup (working set as
``docker stats`` counts it, and anonymous RSS) and the resident set of its supervisor process.
The bench runs as root on the Docker host, as the worker does; where the cgroups are not
visible (another layout, a bench in a container) the figures are None."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

from workers.backends.docker.driver import _cgroup_dirs, _cgroup_pids, _memory
from workers.backends.supervisor.backend import SUPERVISOR_PATH

MB = 1e6


@dataclass(frozen=True)
class Memory:
    """In MB (10^6 bytes). ``supervisor_rss`` None: no supervisor process in the container."""

    working_set: float | None  # the cgroup's usage less inactive page cache
    rss: float | None  # the cgroup's anonymous memory (v1 total_rss, v2 anon)
    supervisor_rss: float | None


def container_memory(container_id: str) -> Memory:
    used = _memory(container_id)
    return Memory(
        used[0] / MB if used else None, _cgroup_rss(container_id), _supervisor_rss(container_id)
    )


def _cgroup_rss(container_id: str) -> float | None:
    for d in _cgroup_dirs(container_id):
        with contextlib.suppress(OSError, ValueError), open(f"{d}/memory.stat") as f:
            stat = dict(line.split() for line in f if line.count(" ") == 1)
            value = stat.get("total_rss", stat.get("anon"))
            if value is not None:
                return int(value) / MB
    return None


def _supervisor_rss(container_id: str) -> float | None:
    """VmRSS of the container's processes whose executable is the supervisor (one expected;
    their sum if the sandbox started another). By name: seen from the host, a bind-mounted
    binary's link may read as its path in the container or on the host."""
    found = [d for d in _cgroup_dirs(container_id) if os.path.isdir(d)]
    total, seen = 0, False
    for pid in _cgroup_pids(found[0]) if found else []:
        with contextlib.suppress(OSError, ValueError):
            if os.path.basename(os.readlink(f"/proc/{pid}/exe")) != os.path.basename(
                SUPERVISOR_PATH
            ):
                continue
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        seen = True
    return total / MB if seen else None
