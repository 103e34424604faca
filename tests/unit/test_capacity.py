"""A host's capacity from its memory and CPUs (workers/host/capacity.py)."""

from __future__ import annotations

import pytest

from shared.errors import ConfigError
from shared.settings import Settings
from workers.host.capacity import host_capacity

GIB = 1 << 30


def test_the_smaller_of_the_memory_and_cpu_bounds() -> None:
    s = Settings()  # 1 GiB and 1 CPU per sandbox, 2 GiB reserved, memory x1, CPUs x8
    # 24 GiB and 2 CPUs (this kind of machine): memory allows 22, CPUs 16.
    cap = host_capacity(s, 24 * GIB, 2)
    assert cap.sandboxes == 16
    assert "memory allows 22" in cap.reason and "CPUs allow 16" in cap.reason
    # 8 GiB and 16 CPUs: memory decides.
    assert host_capacity(s, 8 * GIB, 16).sandboxes == 6


def test_limits_and_factors_change_it() -> None:
    s = Settings(sandbox_memory=512 << 20, sandbox_cpus=0.5, host_memory_overcommit=1.5)
    # memory: (24 - 2) x 1.5 / 0.5 = 66; CPUs: 2 x 8 / 0.5 = 32
    assert host_capacity(s, 24 * GIB, 2).sandboxes == 32
    s = Settings(host_cpu_overcommit=100)
    assert host_capacity(s, 24 * GIB, 2).sandboxes == 22


def test_a_set_capacity_wins_and_a_tiny_host_still_takes_one() -> None:
    assert host_capacity(Settings(host_capacity=5), 64 * GIB, 64).sandboxes == 5
    # 1 GiB of memory, all of it reserved: still one sandbox, not a host nobody can use.
    assert host_capacity(Settings(), 1 * GIB, 1).sandboxes == 1


@pytest.mark.parametrize(
    "env",
    [
        {"PADDOCK_HOST_CAPACITY": "-1"},
        {"PADDOCK_HOST_MEMORY_OVERCOMMIT": "0"},
        {"PADDOCK_HOST_CPU_OVERCOMMIT": "-2"},
        {"PADDOCK_HOST_RESERVED_MEMORY": "-1"},
        {"PADDOCK_SANDBOX_CPUS": "0"},
    ],
)
def test_bad_factors_are_refused_at_start(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match=next(iter(env))):
        Settings.from_env(env)


def test_sizes_are_read_with_units() -> None:
    assert Settings.from_env({"PADDOCK_HOST_RESERVED_MEMORY": "3g"}).host_reserved_memory == 3 * GIB
