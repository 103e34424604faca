"""Redis commands per operation, on an otherwise idle stack of one real host worker (``python
-m workers host`` over the fake backend, the production program): one exec round trip
(``echo 22`` with ``wait=true``), one sandbox create + delete, and an idle host per second.

Counted from Redis's own counters: a window of N operations one after the other, less what
the same stack does in as long a window with nothing asked of it (heartbeat, reconcile, the
workers' broker polls, the reaper), over N. Two figures per operation: commands clients sent
(a Lua script counts once: the issue's "Redis commands per exec") and calls Redis made
(the commands inside scripts too). One of each operation is also traced with MONITOR: each
command in order, the tier that sent it, and its key with ids masked (no other argument is
written: values can be secrets).
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import redis
import requests

from bench.scale.measure import (
    OWN_COMMANDS,
    calls_between,
    descendants,
    per_operation,
    read_redis,
)
from bench.scale.stack import ScaleStack
from shared.accounts import Accounts

# Ids in keys (shared/ids.py): sandboxes, processes, then task and message uuids.
_ID_PATTERNS = (
    (re.compile(r"\b[a-z0-9]{8}-[0-9a-f]{8}\b"), "<sandbox>"),
    (re.compile(r"\b(?=[A-Za-z0-9]*[A-Z0-9])[A-Za-z0-9]{12}\b"), "<process>"),
    (
        re.compile(r"[0-9a-f]{32}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"),
        "<id>",
    ),
)


class CostError(Exception):
    """An operation answered something other than expected."""


@dataclass
class OpCost:
    name: str
    ops: int
    sent: dict[str, float]  # commands clients sent per operation, by the tier that sent them
    calls: dict[str, float]  # Redis calls of each command per operation (inside scripts too)

    @property
    def total_sent(self) -> float:
        return sum(self.sent.values())

    @property
    def total_calls(self) -> float:
        return sum(self.calls.values())


@dataclass
class Costs:
    idle_seconds: float
    idle_sent: dict[str, float]  # per second, by tier
    idle_calls: dict[str, float]  # per second, by command
    ops: list[OpCost] = field(default_factory=list)
    trace: list[str] = field(default_factory=list)
    title: str = "Redis per operation"
    # The broker's own Redis, counted apart (ScaleStack(separate_broker=True)); then this
    # object's figures are the state Redis's.
    broker: Costs | None = None

    def table(self) -> str:
        own = self._table()
        return own if self.broker is None else own + "\n\n" + self.broker._table()

    def _table(self) -> str:
        head = (
            f"{self.title:<28} {'n':>3} {'sent':>6} {'web':>5} {'host':>5} "
            f"{'ctrl':>5} {'calls':>6}  calls by command (inside scripts too)"
        )
        lines = [head, "-" * 118]
        rows = [(op.name, str(op.ops), op.sent, op.calls) for op in self.ops]
        rows.append(("idle stack, per second", "", self.idle_sent, self.idle_calls))
        for name, n, sent, calls in rows:
            by = ", ".join(f"{k} {v:.1f}" for k, v in list(calls.items())[:7])
            lines.append(
                f"{name:<28} {n:>3} {sum(sent.values()):>6.1f} {sent.get('web', 0):>5.1f} "
                f"{sent.get('host', 0):>5.1f} {sent.get('control', 0):>5.1f} "
                f"{sum(calls.values()):>6.1f}  {by}"
            )
        lines.append("-" * 118)
        lines.append(
            "sent: commands clients sent (MONITOR; a script and MULTI/EXEC count as commands), "
            "by tier; calls: what Redis ran"
        )
        lines.append(
            "(INFO commandstats: commands inside scripts too). One host worker (python -m "
            "workers host, fake backend), control, web;"
        )
        lines.append("the idle stack's rate over as long a window subtracted.")
        return "\n".join(lines)


def measure_costs(stack: ScaleStack, reps: int, idle_s: float, trace_to: Path | None) -> Costs:
    """Raises CostError, RuntimeError."""
    _, key = Accounts(stack.redis, "unused").create_api_key("usr_costs", "costs", 10)
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {key}"
    url = stack.url

    def create() -> str:
        r = http.post(f"{url}/sessions", json={"envID": "Bash"}, timeout=60)
        if r.status_code != 200:
            raise CostError(f"POST /sessions answered {r.status_code}: {r.text[:200]}")
        return str(r.json()["id"])

    def delete(sid: str) -> None:
        r = http.delete(f"{url}/sessions/{sid}", timeout=60)
        if r.status_code != 204:
            raise CostError(f"DELETE /sessions answered {r.status_code}: {r.text[:200]}")

    sid = create()

    def echo() -> None:
        r = http.post(
            f"{url}/sessions/{sid}/processes?wait=true", json={"cmd": "echo 22"}, timeout=60
        )
        if r.status_code != 200 or [o["line"] for o in r.json()["stdout"]] != ["22"]:
            raise CostError(f"echo 22 answered {r.status_code}: {r.text[:200]}")

    def create_delete() -> None:
        delete(create())

    for _ in range(3):  # first calls load scripts and open connections
        echo()
        create_delete()
    time.sleep(1.0)
    # Each Redis the stack has (state; the broker's when apart), counted apart.
    targets = [stack.redis] + ([stack.broker_redis] if stack.broker_url else [])
    titles = (
        ["Redis per operation"]
        if len(targets) == 1
        else ["State Redis per op", "Broker Redis per op"]
    )
    with Monitors(targets) as mons:
        a = [read_redis(t) for t in targets]
        time.sleep(idle_s)
        b = [read_redis(t) for t in targets]
    owners = port_owners(stack)
    all_costs: list[Costs] = []
    idle: list[tuple[float, Counter[str], dict[str, int]]] = []
    for i, title in enumerate(titles):
        idle_len, idle_calls = b[i].at - a[i].at, calls_between(a[i], b[i])
        idle_sent = mons[i].sent_by(owners)
        idle.append((idle_len, idle_calls, idle_sent))
        all_costs.append(
            Costs(
                idle_len,
                {k: v / idle_len for k, v in idle_sent.items()},
                {k: v / idle_len for k, v in sorted(idle_calls.items(), key=lambda kv: -kv[1])},
                title=title,
            )
        )
    for name, fn, n in (
        ("exec (echo 22, wait=true)", echo, reps),
        ("create + delete (cold)", create_delete, max(3, reps // 3)),
    ):
        with Monitors(targets) as mons:
            a = [read_redis(t) for t in targets]
            for _ in range(n):
                fn()
            b = [read_redis(t) for t in targets]
        owners = port_owners(stack)
        for i, costs in enumerate(all_costs):
            busy_len = b[i].at - a[i].at
            idle_len, idle_calls, idle_sent = idle[i]
            sent = per_operation(mons[i].sent_by(owners), busy_len, idle_sent, idle_len, n)
            calls = per_operation(calls_between(a[i], b[i]), busy_len, idle_calls, idle_len, n)
            costs.ops.append(OpCost(name, n, sent, calls))
    costs = all_costs[0]
    if len(all_costs) > 1:
        costs.broker = all_costs[1]
    if trace_to is not None:
        masks = {"usr_costs": "<tenant>"}
        for title, fn in (
            ("one exec (echo 22, wait=true)", echo),
            ("one create + delete", create_delete),
        ):
            with Monitors(targets) as mons:
                time.sleep(0.1)
                t0 = time.time()
                fn()
                time.sleep(0.3)  # what the worker does after its reply
            owners = port_owners(stack)
            for i, mon in enumerate(mons):
                where = "" if len(mons) == 1 else f" — {titles[i].split(' per ')[0]}"
                costs.trace += [f"# {title}{where}", *mon.lines(t0, owners, masks), ""]
        trace_to.write_text("\n".join(costs.trace))
    delete(sid)
    return costs


class Monitors:
    """A Monitor on each Redis while the block runs (the list of them)."""

    def __init__(self, targets: list[redis.Redis]) -> None:
        self.monitors = [Monitor(r) for r in targets]

    def __enter__(self) -> list[Monitor]:
        for m in self.monitors:
            m.__enter__()
        return self.monitors

    def __exit__(self, *exc: object) -> None:
        for m in self.monitors:
            m.__exit__(*exc)


class Monitor:
    """Redis's MONITOR in a thread while the block runs: every command (time, client port,
    "lua" for those a script ran, name, key)."""

    def __init__(self, r: redis.Redis) -> None:
        self.redis = r
        self.records: list[tuple[float, str, str, str]] = []
        self._done = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="monitor", daemon=True)

    def __enter__(self) -> Monitor:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self.redis.ping()  # one more command ends the monitor's wait
        self._thread.join(10)

    def _watch(self) -> None:
        with self.redis.monitor() as m:
            self._ready.set()
            while not self._done.is_set():
                try:
                    cmd = m.next_command()
                except (redis.RedisError, OSError):
                    return
                if not cmd:
                    continue
                port = "lua" if cmd["client_type"] == "lua" else str(cmd["client_port"])
                words = str(cmd["command"]).split()
                self.records.append((float(cmd["time"]), port, *_name_and_key(words)))

    def sent_by(self, owners: dict[str, str]) -> dict[str, int]:
        """Commands clients sent, by tier (web, host, control; "?" a port nobody owns now),
        the harness's own left out."""
        out: Counter[str] = Counter()
        for _, port, name, _ in self.records:
            if port != "lua" and name not in OWN_COMMANDS and name != "ping":
                out[_tier(owners.get(port, "?"))] += 1
        return dict(out)

    def lines(self, t0: float, owners: dict[str, str], masks: dict[str, str]) -> list[str]:
        """The commands from ``t0`` on, one a line: ms, tier, name, key (ids masked)."""
        out = []
        for at, port, name, key in self.records:
            if at < t0 or name in OWN_COMMANDS or name == "ping":
                continue
            for raw, label in masks.items():
                key = key.replace(raw, label)
            for pattern, label in _ID_PATTERNS:
                key = pattern.sub(label, key)
            who = "  (lua)" if port == "lua" else owners.get(port, "?")
            out.append(f"{(at - t0) * 1000:8.1f} ms  {who:<10} {name:<16} {key[:80]}")
        return out


def _tier(component: str) -> str:
    return "host" if component.startswith("host") else component


def _name_and_key(words: list[str]) -> tuple[str, str]:
    name = words[0].lower() if words else "?"
    if name in ("evalsha", "eval") and len(words) > 3 and words[2] != "0":
        return name, words[3]
    return name, words[1] if len(words) > 1 else ""


def port_owners(stack: ScaleStack) -> dict[str, str]:
    """The local port of each TCP connection of the stack's processes -> the component that
    owns it ("web", "control", "host-solo"), from /proc (sockets' inodes)."""
    inode_port: dict[str, str] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            inode_port[cols[9]] = str(int(cols[1].rsplit(":", 1)[1], 16))
    owners: dict[str, str] = {}
    for name, proc in stack.procs.items():
        for pid in descendants([proc.pid]):
            try:
                fds = list(Path(f"/proc/{pid}/fd").iterdir())
            except OSError:
                continue
            for fd in fds:
                try:
                    target = fd.readlink().as_posix()
                except OSError:
                    continue
                if target.startswith("socket:["):
                    port = inode_port.get(target[8:-1])
                    if port is not None:
                        owners[port] = name
    return owners
