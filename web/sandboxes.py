"""The web side of sandboxes: look them up (scoped by tenant), place new ones, and send every
command to the owning host's queue."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import redis
from celery import Celery

from shared import commands, ids, rpc, tasks
from shared.egress import NetworkPolicy, parse_cidrs, parse_network
from shared.errors import (
    NoCapacity,
    PaddockError,
    QuotaExceeded,
    ValidationFailed,
    WorkerTimeout,
)
from shared.lifecycle import HISTORY_AFTER_END
from shared.output import Entry, EntryReader, ProcessLog, Snapshot
from shared.sessions import Sessions
from shared.settings import Settings
from shared.slots import PROXIES, STREAMS, WAITS, Slots
from shared.store import Host, Sandbox, Store
from web import metrics

logger = logging.getLogger(__name__)


class Release(Protocol):
    """Gives a held slot back, now or with ``pipe`` (in its round trip)."""

    def __call__(self, pipe: redis.client.Pipeline | None = None) -> None: ...


class Held:
    """A slot a request holds; ``release`` gives it back once (later calls do nothing)."""

    def __init__(self, release: Release) -> None:
        self._release = release
        self.released = False

    def release(self, pipe: redis.client.Pipeline | None = None) -> None:
        if not self.released:
            self.released = True
            self._release(pipe)


def _nothing() -> None:
    pass


# A waiting request refreshes its slot every few seconds; one whose web worker died stops
# counting after this long.
_SLOT_TTL = 60.0
_PROBLEMS_TTL = 1.0
_TOUCH_EVERY = 1.0  # seconds: how stale a sandbox's idle timer may be, at most
_TOUCHED_MAX = 100_000  # sandboxes whose last reset a web process remembers
# A start whose reply did not come but that a worker holds ("starting": the exec under way) is
# awaited this much longer before it counts as failed.
_STARTING_GRACE = 10.0


class Sandboxes:
    def __init__(self, settings: Settings, r: redis.Redis, celery: Celery) -> None:
        self.settings = settings
        self.r = r
        self.celery = celery
        self.store = Store(r)
        self.plog = ProcessLog(r)
        self.slots = Slots(r)
        self.sessions = Sessions(r)
        self.private_allowed = parse_cidrs(
            settings.egress_private_allowed, "PADDOCK_EGRESS_PRIVATE_ALLOWED"
        )
        self._problems: tuple[float, list[dict[str, str]]] = (0.0, [])
        self._hosts: tuple[float, list[Host]] = (-_PROBLEMS_TTL, [])
        self._touched: dict[str, float] = {}  # sandbox id -> when this process reset its timer

    # -- health ------------------------------------------------------------------------------
    def problems(self) -> list[dict[str, str]]:
        """What /health reports besides ``OK``: live hosts that cannot do all they should
        (no egress rules: no internet for sandboxes), or an unreachable state store. Read at
        most once per _PROBLEMS_TTL per process: /health needs no key, and how often it is
        asked must not decide how often every host's record is read."""
        at, cached = self._problems
        if time.monotonic() - at < _PROBLEMS_TTL:
            return cached
        problems: list[dict[str, str]] = []
        try:
            for host in self._alive_hosts():
                if host.egress != "ok":
                    problem = f"sandboxes get no internet: {host.egress}"
                    problems.append({"host": host.host_id, "problem": problem})
        except redis.RedisError as exc:
            problems.append({"host": "", "problem": f"the state store is unreachable: {exc}"})
        self._problems = (time.monotonic(), problems)
        return problems

    def _alive_hosts(self) -> list[Host]:
        """The live hosts, read at most once per _PROBLEMS_TTL per process (reading them costs
        Redis work that grows with the number of hosts)."""
        at, hosts = self._hosts
        if time.monotonic() - at >= _PROBLEMS_TTL:
            hosts = self.store.alive_hosts()
            self._hosts = (time.monotonic(), hosts)
        return hosts

    # -- lifecycle ---------------------------------------------------------------------------
    def network(self, raw: object, where: str) -> NetworkPolicy:
        """A request's ``network`` object as a policy (absent: the operator's default mode).
        Raises ValidationFailed naming the field under ``where``."""
        return parse_network(
            raw,
            default_mode=self.settings.sandbox_network,
            private_allowed=self.private_allowed,
            where=where,
        )

    def create(
        self,
        tenant_id: str,
        template: str,
        field: str = "body.envID",
        network: NetworkPolicy | None = None,
    ) -> Sandbox:
        """Place and start a sandbox with ``network`` (validated: parse_network; default: the
        operator's mode, no lists).

        Raises NoCapacity (no live host / all full), ValidationFailed (unknown template),
        QuotaExceeded (the tenant has ``tenant_max_sandboxes``), EgressUnavailable (internet
        asked, no host can give it), WorkerTimeout or the host's error; nothing is left
        behind on failure (the quota slot included).
        """
        network = network or NetworkPolicy(mode=self.settings.sandbox_network)
        # One Redis call whatever the number of hosts; only when no host offers the template
        # (or none can take it) are the hosts read, once a second at most, to say why.
        if not self.store.offered(template):
            self._refuse(template, field)
        # A warm pool's sandbox of the template and mode when a host has one ready (its id
        # then replaces this one), else a cold start (shared/placement.py PLACE).
        try:
            placed = self.store.place_claim(
                ids.sandbox_id(),
                tenant_id,
                template,
                self.settings.tenant_max_sandboxes,
                self.settings.sandbox_max_lifetime,
                network,
            )
        except NoCapacity:
            self._refuse(template, field)  # (the hosts that offered it died meanwhile)
            raise
        sandbox = placed.sandbox
        sandbox_id = sandbox.sandbox_id
        try:
            self._call(
                commands.SandboxCreate(
                    sandbox_id=sandbox_id,
                    tenant_id=tenant_id,
                    template=template,
                    network=network.to_json(),
                    warm=placed.warm,
                    evict=placed.evict,
                ),
                sandbox,
                timeout=self.settings.create_timeout,
            )
        except PaddockError as exc:
            if isinstance(exc, WorkerTimeout):
                self._abandon(sandbox)  # the host may still start it: it destroys, then forgets
            else:
                self.store.purge_sandbox(sandbox_id)  # the host refused: no container exists
            raise
        except Exception:
            # Unknown outcome (e.g. the broker failed mid-call): the host's destroy, or else the
            # reaper, removes whatever exists and frees the slot.
            self._abandon(sandbox)
            raise
        logger.info(
            "sandbox %s: created on host %s for tenant %s%s",
            sandbox_id,
            sandbox.host_id,
            tenant_id,
            " (warm pool)" if placed.warm else "",
        )
        return sandbox

    def _refuse(self, template: str, field: str) -> None:
        """Raises NoCapacity when no host is alive, ValidationFailed when no live host has
        ``template``; returns otherwise."""
        hosts = self._alive_hosts()
        if not hosts:
            raise NoCapacity("No sandbox host is alive; start a worker (make up)")
        if template not in {t for h in hosts for t in h.templates}:
            raise ValidationFailed({field: f"unknown environment {template!r}"})

    def get(self, tenant_id: str, sandbox_id: str, include_lost: bool = False) -> Sandbox:
        """The tenant's sandbox; resets its idle timer. Raises SandboxNotFound (a lost one
        too, unless ``include_lost``: /v1 shows it as ``lost`` for a while)."""
        sandbox = self.store.get_sandbox(tenant_id, sandbox_id, include_lost=include_lost)
        self._touch(sandbox_id)
        return sandbox

    def _touch(self, sandbox_id: str) -> None:
        """Reset the idle timer, at most once per _TOUCH_EVERY (or an eighth of the idle
        timeout when that is shorter) per web process: a busy sandbox's requests do not each
        pay a write for a timer counted in minutes."""
        now = time.monotonic()
        every = min(_TOUCH_EVERY, self.settings.idle_timeout / 8)
        last = self._touched.get(sandbox_id)
        if last is not None and now - last < every:
            return
        self.store.touch(sandbox_id)
        if len(self._touched) >= _TOUCHED_MAX:
            self._touched.clear()  # forgetting only costs a write each
        self._touched[sandbox_id] = now

    def of_tenant(self, tenant_id: str) -> list[Sandbox]:
        return self.store.tenant_sandboxes(tenant_id)

    def times(self, sandbox: Sandbox) -> tuple[float | None, float | None]:
        """(last request that named it, end of its maximum lifetime), Unix seconds; None
        where it has no such timer (an agent session's sandbox has no idle timer) or its
        record is being removed."""
        return self.store.sandbox_times(sandbox.sandbox_id)

    def template_catalog(self) -> list[dict[str, Any]]:
        """Every template some live host offers (from their heartbeats), each with the
        ``hosts`` that have it."""
        return self.store.template_catalog()

    def bind_to_session(self, sandbox: Sandbox, session_id: str, expires_at: float) -> None:
        """The sandbox lives exactly as long as the agent session: no idle reaping."""
        self.store.bind_lifetime(sandbox.sandbox_id, expires_at, session_id)

    def delete(self, sandbox: Sandbox) -> None:
        """Destroy the sandbox; an agent session living in it ends with it."""
        session_id = self.store.raw_sandbox(sandbox.sandbox_id).get("session")
        if not self.store.begin_delete(sandbox.sandbox_id):
            return
        session = self.sessions.load(session_id) if session_id else None
        if session is not None:
            self.sessions.end(session, keep_for=HISTORY_AFTER_END)
        try:
            self._call(commands.SandboxDestroy(**self._ids(sandbox)), sandbox)
        except PaddockError as exc:
            # The host did not answer, or could not finish (its engine is down: the container
            # or the storage could not be removed). The record stays ``deleting``, which no
            # request reaches, and the reaper sends the destroy again until the host does it:
            # the delete is accepted, not failed.
            logger.warning(
                "sandbox %s: destroy not done by host %s (%s); the reaper retries",
                sandbox.sandbox_id,
                sandbox.host_id,
                exc.code,
            )

    def _abandon(self, sandbox: Sandbox) -> None:
        self.store.begin_delete(sandbox.sandbox_id)
        rpc.send(
            self.celery,
            tasks.host_queue(sandbox.host_id),
            commands.SandboxDestroy.name,
            commands.SandboxDestroy(**self._ids(sandbox)).to_kwargs(),
            expires=self.settings.create_timeout * 10,
        )

    # -- commands ----------------------------------------------------------------------------
    def ports(self, sandbox: Sandbox) -> list[dict[str, Any]]:
        value = self._call(commands.SandboxPorts(**self._ids(sandbox)), sandbox)
        return commands.Ports.from_json(value).to_json()

    def pause(self, sandbox: Sandbox) -> bool:
        """Freeze the sandbox on its host (docker pause). False when it was paused already.
        Raises SandboxGone, EngineUnavailable, WorkerTimeout."""
        value = self._call(commands.SandboxPause(**self._ids(sandbox)), sandbox)
        return commands.Paused.from_json(value).changed

    def resume(self, sandbox: Sandbox) -> bool:
        """Let a paused sandbox run on. False when it was not paused. Raises SandboxGone,
        EngineUnavailable, WorkerTimeout."""
        value = self._call(commands.SandboxResume(**self._ids(sandbox)), sandbox)
        return commands.Paused.from_json(value).changed

    def usage(self, sandbox: Sandbox) -> commands.Usage:
        """CPU, memory and disk the sandbox uses now, read by its host. Raises SandboxError
        (unreadable there), WorkerTimeout."""
        return commands.Usage.from_json(
            self._call(commands.SandboxUsage(**self._ids(sandbox)), sandbox)
        )

    def list_dir(self, sandbox: Sandbox, path: str) -> list[dict[str, Any]]:
        value = self._call(commands.FsList(**self._ids(sandbox), path=path), sandbox)
        return commands.Listing.from_json(value).to_json()

    def make_dir(self, sandbox: Sandbox, path: str) -> None:
        self._call(commands.FsMkdir(**self._ids(sandbox), path=path), sandbox)

    def remove(self, sandbox: Sandbox, path: str) -> None:
        self._call(commands.FsRemove(**self._ids(sandbox), path=path), sandbox)

    def read_file(self, sandbox: Sandbox, path: str) -> bytes:
        value = self._call(commands.FsRead(**self._ids(sandbox), path=path), sandbox)
        return commands.FileData.from_json(value).data

    def write_file(self, sandbox: Sandbox, path: str, data: bytes) -> None:
        self._call(commands.FsWrite.of(sandbox.sandbox_id, sandbox.tenant_id, path, data), sandbox)

    # The envd protocol's (web/api/envd): whole entries and moves.
    def owner(self, sandbox_id: str) -> str | None:
        """The tenant a sandbox belongs to (None: no such sandbox), for a caller that proved
        it may act on the sandbox by other means (its envd access token)."""
        return self.store.raw_sandbox(sandbox_id).get("tenant") or None

    def stat(self, sandbox: Sandbox, path: str) -> commands.FsEntry:
        """Raises PathNotFound, PermissionDenied, BackendUnsupported, WorkerTimeout."""
        value = self._call(commands.FsStat(**self._ids(sandbox), path=path), sandbox)
        return commands.EntryReply.from_json(value).entry

    def move(self, sandbox: Sandbox, path: str, dst: str) -> commands.FsEntry:
        """The moved entry. Raises PathNotFound, PermissionDenied, BackendUnsupported."""
        value = self._call(commands.FsMove(**self._ids(sandbox), path=path, dst=dst), sandbox)
        return commands.EntryReply.from_json(value).entry

    def entries(self, sandbox: Sandbox, path: str, depth: int) -> list[commands.FsEntry]:
        """Raises PathNotFound, NotADirectory, FileTooLarge, BackendUnsupported."""
        cmd = commands.FsEntries(**self._ids(sandbox), path=path, depth=depth)
        return commands.Entries.from_json(self._call(cmd, sandbox)).entries

    def watch(self, sandbox: Sandbox, watcher_id: str, path: str, recursive: bool) -> None:
        """Have the host drain directory ``path``'s events into the registered watcher's
        stream (web/api/envd/watching.py). Raises PathNotFound, NotADirectory,
        QuotaExceeded, BackendUnsupported, WorkerTimeout."""
        cmd = commands.FsWatch(
            **self._ids(sandbox), watcher_id=watcher_id, path=path, recursive=recursive
        )
        self._call(cmd, sandbox)

    def start_process(self, sandbox: Sandbox, cmd: str, env: dict[str, str], cwd: str) -> str:
        """Start ``cmd``; its process id. Raises WorkerTimeout only when the process did not
        start (and now never will), whatever happened to the worker's reply."""
        return self.launch(sandbox, cmd, env, cwd)[0]

    def launch(
        self,
        sandbox: Sandbox,
        cmd: str,
        env: dict[str, str],
        cwd: str,
        *,
        argv: list[str] | None = None,
        pty: tuple[int, int] | None = None,
        stdin: bool = True,
        timeout_ms: int = 0,
        envd: str = "",
    ) -> tuple[str, int]:
        """Start ``cmd`` with the envd protocol's options (commands.ProcessStart): its process
        id, and its pid in the sandbox (0 when the backend did not know it at start). Raises
        WorkerTimeout only when the process did not start (and now never will), whatever
        happened to the worker's reply; BackendUnsupported, QuotaExceeded."""
        process_id = ids.process_id()
        pid = 0
        try:
            start = commands.ProcessStart(
                **self._ids(sandbox),
                process_id=process_id,
                cmd=cmd,
                env=env,
                cwd=cwd,
                argv=argv or [],
                pty_cols=pty[0] if pty else 0,
                pty_rows=pty[1] if pty else 0,
                stdin=stdin,
                timeout_ms=timeout_ms,
                envd=envd,
            )
            value = self._call(start, sandbox)
            if value is not None:  # (an older worker answers nothing)
                pid = commands.Started.from_json(value).pid
        except WorkerTimeout:
            # The reply is lost, not necessarily the start: a slow engine, or a worker killed
            # after it spawned the process (its restart closes the process's output, saying
            # what was lost). A process that started is found and answered, never reported as
            # failed; one that did not is given up, so a late delivery cannot run it after its
            # client was told it failed.
            if not self._started_anyway(sandbox, process_id):
                raise
            known = self.plog.info(sandbox.sandbox_id, process_id).get("pid", "")
            pid = int(known) if known.isdigit() else 0
        return process_id, pid

    def _started_anyway(self, sandbox: Sandbox, process_id: str) -> bool:
        deadline = time.monotonic() + _STARTING_GRACE
        ttl = max(600.0, 4 * self.settings.task_timeout)
        while True:
            status = self.plog.give_up(sandbox.sandbox_id, process_id, ttl)
            if status in ("running", "exited"):
                logger.info(
                    "sandbox %s process %s: started, its reply was lost",
                    sandbox.sandbox_id,
                    process_id,
                )
                return True
            if status is None or time.monotonic() > deadline:
                return False
            time.sleep(0.25)  # "starting": a worker has it, the exec is under way

    def process_exists(self, sandbox: Sandbox, process_id: str) -> bool:
        return self.plog.exists(sandbox.sandbox_id, process_id)

    def _hold(
        self, kind: str, tenant_id: str, limit: int, refusal: str, retry_after: int
    ) -> Release:
        """Take one of the tenant's ``limit`` slots of ``kind`` and keep it for as long as the
        request holds it, whatever the request is blocked on (a slow start, a client that
        stops reading): a keeper refreshes it every _SLOT_TTL/3 until the returned function
        releases it. If this web process dies, the slot lapses after _SLOT_TTL.

        Raises QuotaExceeded (``refusal``)."""
        token = self.slots.acquire(kind, tenant_id, limit, _SLOT_TTL)
        if token is None:
            raise QuotaExceeded(refusal, retry_after=retry_after)
        done = threading.Event()

        def keep() -> None:  # a greenlet under gunicorn's gevent workers
            while not done.wait(_SLOT_TTL / 3):
                try:
                    self.slots.refresh(kind, tenant_id, token, _SLOT_TTL)
                except redis.RedisError:
                    logger.warning("%s slot of tenant %s: refresh failed", kind, tenant_id)

        threading.Thread(target=keep, name=f"slot-{kind}", daemon=True).start()

        def release(pipe: redis.client.Pipeline | None = None) -> None:
            done.set()
            self.slots.release(kind, tenant_id, token, pipe)

        return release

    @contextmanager
    def waiting(self, sandbox: Sandbox) -> Iterator[Held]:
        """Hold one of the tenant's concurrent-wait slots for the block (or until the block
        gives it back with the answer's first read: ``snapshot``).

        Raises QuotaExceeded, before the block runs, when the tenant already has
        ``tenant_max_waits`` requests waiting."""
        limit = self.settings.tenant_max_waits
        release = self._hold(
            WAITS,
            sandbox.tenant_id,
            limit,
            f"wait quota reached: {limit} concurrent wait=true requests per tenant "
            "(PADDOCK_TENANT_MAX_WAITS); poll without wait, or retry later",
            retry_after=2,
        )
        held = Held(release)
        try:
            with metrics.OPEN_WAITS.track_inprogress():
                yield held
        finally:
            held.release()

    def wait_done(self, sandbox: Sandbox, process_id: str, still_there: Callable[[], bool]) -> None:
        """Block until the process ends (or the wait limit passes), inside `waiting`; the
        sandbox counts as active meanwhile. Reads no output. Stops early once
        ``still_there()`` says the client went away (checked every few seconds), so a dead
        client keeps no sandbox alive."""

        def tick() -> bool:
            if not still_there():
                return False
            self.store.touch(sandbox.sandbox_id)
            return True

        self.plog.wait_done(sandbox.sandbox_id, process_id, self.settings.wait_timeout, tick)

    def stream_slot(self, sandbox: Sandbox) -> Callable[[], None]:
        """Take one of the tenant's stream slots (``streaming``; the envd protocol's output
        streams); returns the function that releases it. Raises QuotaExceeded."""
        limit = self.settings.tenant_max_streams
        return self._hold(
            STREAMS,
            sandbox.tenant_id,
            limit,
            f"stream quota reached: {limit} process answers being written at once per "
            "tenant (PADDOCK_TENANT_MAX_STREAMS); retry when one has been read",
            retry_after=1,
        )

    def streaming(
        self, sandbox: Sandbox, answer: Iterator[bytes], small: bool = False
    ) -> tuple[Iterator[bytes], Callable[[], None]]:
        """Hold one of the tenant's stream slots while ``answer`` (an output answer's chunks)
        is written, however slowly the client reads. Returns the chunks to write, which let
        other requests run between chunks (encoding a big answer is CPU work that would
        otherwise hold an evented worker's loop), and the function that releases the slot
        (call it when the response closes, written or not). A ``small`` answer (all of it
        read already, a few KiB at most: the socket's buffer takes it whole) needs no slot.

        Raises QuotaExceeded when the tenant already has ``tenant_max_streams`` answers
        being written."""
        release: Callable[[], None] = _nothing if small else self.stream_slot(sandbox)

        def chunks() -> Iterator[bytes]:
            for chunk in answer:
                yield chunk
                time.sleep(0)  # under gevent: other greenlets run between chunks

        return chunks(), release

    def proxying(self, sandbox: Sandbox) -> Callable[[], None]:
        """Hold one of the tenant's proxied-connection slots (web/ports/) while a request or
        WebSocket to one of its sandboxes' ports is open; call the returned function when it
        closes. Raises QuotaExceeded when the tenant has ``tenant_max_proxied`` open."""
        limit = self.settings.tenant_max_proxied
        return self._hold(
            PROXIES,
            sandbox.tenant_id,
            limit,
            f"proxy quota reached: {limit} open connections to sandbox ports per tenant "
            "(PADDOCK_TENANT_MAX_PROXIED); retry when one has closed",
            retry_after=1,
        )

    def snapshot(self, sandbox: Sandbox, process_id: str, held: Held | None = None) -> Snapshot:
        """The process's output as it is now (ProcessLog.snapshot), for ``output``; ``held``
        (a wait's slot) is given back in the same round trip."""
        pipe = None
        if held is not None:
            pipe = self.r.pipeline(transaction=False)
            held.release(pipe)
        return self.plog.snapshot(sandbox.sandbox_id, process_id, pipe)

    def output(
        self, sandbox: Sandbox, process_id: str, snap: Snapshot | None = None
    ) -> EntryReader:
        """The process's output (as it is now, or as ``snap`` saw it) as lines, read entry
        by entry (never all at once); the function may be called more than once, for one
        stream each (the E2B answer lists stdout, then stderr)."""
        sid = sandbox.sandbox_id
        # (A short output is read whole, once.)
        taken = snap if snap is not None else self.plog.snapshot(sid, process_id)

        def read(kind: str | None = None) -> Iterator[Entry]:
            return self.plog.entries(sid, process_id, taken, kind)

        return read

    def write_stdin(self, sandbox: Sandbox, process_id: str, data: str) -> None:
        self._call(
            commands.ProcessStdin(**self._ids(sandbox), process_id=process_id, data=data), sandbox
        )

    # The envd protocol's (web/api/envd/process.py): bytes in, and output and end kept.
    def send_input(self, sandbox: Sandbox, process_id: str, data: bytes) -> bool:
        """False when the process is not running or its stdin is not open."""
        cmd = commands.ProcessStdin.of(sandbox.sandbox_id, sandbox.tenant_id, process_id, data)
        return commands.Written.from_json(self._call(cmd, sandbox)).written

    def close_stdin(self, sandbox: Sandbox, process_id: str) -> bool:
        """False when the process is not running or its stdin is not open."""
        cmd = commands.ProcessCloseStdin(**self._ids(sandbox), process_id=process_id)
        return commands.Written.from_json(self._call(cmd, sandbox)).written

    def resize(self, sandbox: Sandbox, process_id: str, cols: int, rows: int) -> bool:
        """False when the process is not running. Raises BadRequest (no terminal),
        BackendUnsupported."""
        cmd = commands.ProcessResize(
            **self._ids(sandbox), process_id=process_id, cols=cols, rows=rows
        )
        return commands.Resized.from_json(self._call(cmd, sandbox)).resized

    def signal(self, sandbox: Sandbox, process_id: str, name: str) -> bool:
        """Send ``name`` (commands.SIGNALS) to the process group; False when it is not
        running."""
        cmd = commands.ProcessSignal(**self._ids(sandbox), process_id=process_id, signal=name)
        return commands.Killed.from_json(self._call(cmd, sandbox)).killed

    def stop_process(self, sandbox: Sandbox, process_id: str) -> None:
        """Kill the process group; its output stays until `forget_process`."""
        self._call(commands.ProcessKill(**self._ids(sandbox), process_id=process_id), sandbox)

    def forget_process(self, sandbox: Sandbox, process_id: str) -> None:
        self.plog.forget(sandbox.sandbox_id, process_id)

    def _call(
        self, command: commands.HostCommand, sandbox: Sandbox, timeout: float | None = None
    ) -> Any:
        """Run ``command`` on the sandbox's host; the JSON of its result (the command's result
        class reads it). Raises WorkerTimeout or the host's PaddockError."""
        reply = rpc.call(
            self.celery,
            self.r,
            sandbox.host_id,
            command.name,
            command.to_kwargs(),
            timeout or self.settings.task_timeout,
        )
        return reply["value"]

    @staticmethod
    def _ids(sandbox: Sandbox) -> dict[str, str]:
        return {"sandbox_id": sandbox.sandbox_id, "tenant_id": sandbox.tenant_id}
