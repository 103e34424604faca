from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# The integration modules that take longest (seconds of work each in a full run on a 2-core
# machine, measured with --durations=0), first: `make test` hands whole files to two workers
# (xdist --dist loadfile) in collection order, so a long module collected last would run alone
# at the end while the other worker idles. Longest first, the short ones fill in at the end.
SLOW_FIRST = (
    "test_agent_sessions.py",  # ~120 s
    "test_redis_auth.py",  # ~100 s
    "test_egress.py",  # ~90 s
    "test_console_browser.py",  # ~85 s
    "test_abuse_output.py",  # ~85 s
    "test_faults_engine.py",  # ~75 s
    "test_two_engines.py",  # ~70 s
    "test_abuse_disk.py",
    "test_abuse_frozen.py",
    "test_up.py",
    "test_e2b_sdk_control.py",
    "test_lifecycle.py",
    "test_ports.py",
    "test_mail_tls.py",
    "test_pools.py",
    "test_abuse_files.py",
    "test_faults_web.py",
    "test_agent_llm.py",
    "test_e2b_sdk_watch.py",
    "test_processes.py",
    "test_hosts.py",
    "test_console_terminal.py",
    "test_e2b_sdk_commands.py",
    "test_faults_redis.py",
    "test_broker_split.py",  # ~35 s; the rest take less
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}

    def weight(item: pytest.Item) -> int:
        if item.path.parent.name != "integration":
            return len(rank)
        return rank.get(item.path.name, len(rank))

    items.sort(key=weight)  # stable: the order within a file and among the rest is kept
