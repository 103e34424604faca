"""How many sandboxes a host takes: from its engine's memory and CPUs and the sandbox limits.

Memory is the hard bound (a host that runs out kills processes, its own included), so by
default the sandboxes' memory limits add up to at most what the engine's machine has, less a
reserve for the engine, the worker and the page cache. CPU is a soft bound (a busy host runs
every sandbox slower, nothing fails), and agents' sandboxes idle most of the time waiting on
their model, so CPUs are overcommitted eight times by default. ``PADDOCK_HOST_CAPACITY`` set to
a positive number overrides both.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.settings import Settings


@dataclass(frozen=True)
class Capacity:
    sandboxes: int
    reason: str  # for the worker's log: which bound decided, with the figures


def host_capacity(settings: Settings, mem_total: int, ncpu: int) -> Capacity:
    """The host's capacity from its engine's ``MemTotal`` (bytes) and ``NCPU``.

    At least 1 on any machine that runs a worker at all: a host too small for one sandbox by
    these factors still takes one rather than announcing 0 and never being placed on.
    """
    if settings.host_capacity > 0:
        return Capacity(settings.host_capacity, "PADDOCK_HOST_CAPACITY")
    usable = max(0, mem_total - settings.host_reserved_memory)
    by_memory = int(usable * settings.host_memory_overcommit // settings.sandbox_memory)
    by_cpu = int(ncpu * settings.host_cpu_overcommit // settings.sandbox_cpus)
    gib = 1 << 30
    reserved, factor = settings.host_reserved_memory / gib, settings.host_memory_overcommit
    memory = (
        f"memory allows {by_memory} ({mem_total / gib:.1f} GiB - {reserved:.1f} GiB reserved, "
        f"x{factor:g} / {settings.sandbox_memory / gib:.2f} GiB each)"
    )
    cpu = (
        f"CPUs allow {by_cpu} ({ncpu} x{settings.host_cpu_overcommit:g} / "
        f"{settings.sandbox_cpus:g} each)"
    )
    return Capacity(max(1, min(by_memory, by_cpu)), f"{memory}; {cpu}")
