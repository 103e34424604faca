"""Running processes: one pump thread per process moves its output into Redis.

A pump is a plain thread, not a Celery slot: a process that runs for hours costs one mostly
idle thread blocked on its exec socket, and no worker slot or web thread.

A pump survives Redis going away: what it reads meanwhile waits in a buffer bounded per
process and across the worker (the process keeps running; past either cap it waits on its
pipe), is written once Redis is back, each write carrying a seq so a write whose reply was lost
is not stored twice, and the end marker follows. Only after WRITER_BACKOFF.give_up_after
seconds without Redis does it drop the output, and say so in the log.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import redis

from shared.errors import BadRequest, SandboxError
from shared.output import (
    ENTRY_BYTES,
    PTY,
    STDERR,
    STDOUT,
    Budgets,
    End,
    Piece,
    ProcessLog,
    paddock_line,
)
from shared.redisconn import REDIS_DOWN, WRITER_BACKOFF, persist
from shared.settings import Settings
from workers.backends.base import ProcessHandle, SandboxBackend, SpawnOptions
from workers.host import metrics

logger = logging.getLogger(__name__)

# Output read while Redis is down, held for it per process; past this the pump stops reading
# (the process waits on its pipe) until Redis is back.
MAX_PENDING = 4 << 20
# The same across every pump of this worker: without it a tenant's (or all tenants') 32 x 32
# processes could pin 4 GiB of the host during an outage. A pump whose write finds no room
# stops reading until that write is stored, as one past MAX_PENDING does.
HOST_MAX_PENDING = 64 << 20
# What a kept write costs in memory besides its bytes (its objects), counted against both caps:
# a process printing a byte at a time must not keep millions of writes within 4 MiB.
WRITE_OVERHEAD = 1 << 10
# While output waits for Redis, the pump wakes this often to try again although the process
# is quiet (otherwise it sleeps on the exec socket).
_PENDING_POLL = 1.0
_IDLE_POLL = 30.0


class HostPending:
    """The bytes all pumps of the worker hold for Redis, at most ``cap``: room is taken for
    each write kept and given back once it is stored or dropped. Thread-safe."""

    def __init__(self, cap: int = HOST_MAX_PENDING) -> None:
        self.cap = cap
        self.size = 0
        self._lock = threading.Lock()

    def take(self, n: int) -> bool:
        with self._lock:
            if self.size + n > self.cap:
                return False
            self.size += n
            return True

    def give(self, n: int) -> None:
        with self._lock:
            self.size -= n


class Resume:
    """Where a restarted worker takes a process's output up again, exactly: kept in the
    process's record with each write (ProcessLog.append_budgeted ``resume``).

    A backend that can follow a process again (the supervisor's ``proc.attach``) numbers its
    output chunks 1, 2, ...; each chunk is stored whole by one write (or cut there, when the
    output is truncated and the rest discarded), so the point is the number of the last
    chunk taken: replay the chunks after it."""

    def __init__(self, seq: int = 0) -> None:
        self.seq = seq

    def point(self) -> str:
        return str(self.seq)


def parse_resume(text: str) -> tuple[int, dict[str, int]] | None:
    """A resume point as (after, bytes of each stream to skip there); None when malformed.
    Besides ``after`` (Resume.point) it reads ``after:skip_out:skip_err``, written by a
    worker from before output was stored as it came (it held unfinished lines back): the
    chunks after ``after`` hold the first bytes not stored once the skipped ones are
    dropped."""
    parts = text.split(":")
    if len(parts) not in (1, 3) or not all(p.isdigit() for p in parts):
        return None
    if len(parts) == 1:
        return int(parts[0]), {}
    return int(parts[0]), {STDOUT: int(parts[1]), STDERR: int(parts[2])}


@dataclass(frozen=True)
class Write:
    """One write of a pump, kept until Redis took it. ``seq`` (and seq + 1, seq + 2 for the
    writes a refusal adds) makes a retried write land once."""

    seq: int
    pieces: list[Piece]
    size: int
    budgeted: bool  # the process's output; else Paddock's notice (outside the budgets)
    unless_cut: bool = False  # a notice that a budget refusal, already noted, makes moot
    held: bool = True  # its bytes count in the HostPending (False: it had no room)
    resume: str = ""  # Resume.point after these pieces ("" none)


@dataclass
class Pending:
    """The writes a pump has not stored yet, in order, with their size and when to try
    again (back-off while Redis is down)."""

    host: HostPending = field(default_factory=HostPending)
    writes: deque[Write] = field(default_factory=deque)
    size: int = 0
    unheld: int = 0  # writes the host had no room for
    next_seq: int = 4
    retry_at: float = 0.0
    delays: Iterator[float] = field(default_factory=WRITER_BACKOFF.delays)
    down_since: float | None = None

    def add(
        self,
        pieces: list[Piece],
        size: int,
        budgeted: bool,
        unless_cut: bool = False,
        resume: str = "",
    ) -> None:
        held = self.host.take(size + WRITE_OVERHEAD)
        self.writes.append(Write(self.next_seq, pieces, size, budgeted, unless_cut, held, resume))
        self.next_seq += 4
        self.size += size
        if not held:
            self.unheld += 1

    @property
    def full(self) -> bool:
        """Past its own cap or the host's: the pump stores before it reads on."""
        return (
            self.size > MAX_PENDING
            or len(self.writes) > MAX_PENDING // WRITE_OVERHEAD
            or self.unheld > 0
        )

    def done(self) -> None:
        """The oldest write is stored: Redis answers again."""
        self._release(self.writes.popleft())
        self.retry_at = 0.0
        self.delays = WRITER_BACKOFF.delays()

    def failed(self, now: float) -> float:
        """A write failed because Redis is down: wait before the next try. Returns how long
        Redis has been down."""
        if self.down_since is None:
            self.down_since = now
        self.retry_at = now + next(self.delays)
        return now - self.down_since

    def drop(self) -> int:
        """Give up on every write; returns the bytes dropped."""
        dropped = self.size
        while self.writes:
            self._release(self.writes.popleft())
        return dropped

    def _release(self, write: Write) -> None:
        self.size -= write.size
        if write.held:
            self.host.give(write.size + WRITE_OVERHEAD)
        else:
            self.unheld -= 1


@dataclass
class Spawned:
    """A process ProcessManager.spawn started, not yet recorded as running nor read: the
    caller adds ``record`` (its "running" fields) to a pipeline of its own (the start's reply:
    one round trip), or calls it with None to write it now; then calls ``follow``, which
    starts storing its output. ``follow`` must be called once whatever happened to the
    record: until then nobody reads the process's output. ``start`` does both at once."""

    pid: int | None
    record: Callable[[redis.client.Pipeline | None], None]
    follow: Callable[[], None]

    def start(self) -> int | None:
        """Record the process as running now and follow its output; its pid (group) in the
        sandbox when the backend knows it yet."""
        try:
            self.record(None)
        finally:
            self.follow()
        return self.pid


@dataclass
class Running:
    sandbox_id: str
    process_id: str
    tenant_id: str
    handle: ProcessHandle
    oom_base: int | None = None  # the sandbox's OOM-kill count when the process started
    done: threading.Event = field(default_factory=threading.Event)
    forgotten: bool = False
    stdin_lock: threading.Lock = field(default_factory=threading.Lock)
    pending: Pending = field(default_factory=Pending)
    cut: bool = False  # a budget refused output: the rest is discarded (a marker says so)
    resume: Resume | None = None  # for a handle a restarted worker can follow again
    skip: dict[str, int] = field(default_factory=dict)  # bytes already stored (adopted)
    stored: int = 0  # output bytes stored before this worker (adopted)
    pty: bool | None = None  # on a terminal (None: not known, e.g. adopted)


class ProcessManager:
    """Starts processes, feeds their stdin, kills them; owns the pump threads of this host."""

    def __init__(
        self,
        backend: SandboxBackend,
        plog: ProcessLog,
        settings: Settings,
    ) -> None:
        self.backend = backend
        self.plog = plog
        self.settings = settings
        self._running: dict[tuple[str, str], Running] = {}
        self._lock = threading.Lock()
        self.pending = HostPending()
        self.budgets = Budgets(
            settings.max_output_bytes, settings.sandbox_output_bytes, settings.tenant_output_bytes
        )

    def spawn(
        self,
        sandbox_id: str,
        process_id: str,
        cmd: str,
        env: dict[str, str],
        cwd: str,
        tenant_id: str,
        options: SpawnOptions | None = None,
        envd: str = "",
    ) -> Spawned:
        """Start ``cmd`` (as ``options`` say: SandboxBackend.spawn) and return once it runs,
        its record and output left to the caller (Spawned: ``record``, then ``follow``, which
        the caller must call whatever happens; Spawned.start for both now). ``envd`` is kept
        in the process's record as it is. Raises QuotaExceeded when the sandbox already runs
        its most processes, SandboxGone if the sandbox is gone, BackendUnsupported."""
        with metrics.process_start(self.settings.host_id):
            self.plog.register(
                sandbox_id,
                process_id,
                cmd,
                tenant_id,
                self.settings.sandbox_max_processes,
                self.budgets,
                extra=len(envd),  # kept in the record below, paid for with it
            )
            try:
                oom_base = self.backend.oom_kills(sandbox_id)
                if options is None:
                    handle = self.backend.spawn(sandbox_id, cmd, env, cwd)
                else:
                    handle = self.backend.spawn(sandbox_id, cmd, env, cwd, options)
            except Exception:
                self.plog.forget(sandbox_id, process_id)
                raise
            run = Running(
                sandbox_id,
                process_id,
                tenant_id,
                handle,
                oom_base=oom_base,
                pending=Pending(self.pending),
                resume=Resume() if handle.ref else None,
                pty=options is not None and options.pty is not None,
            )
            pid = handle.pgid if handle.pgid is not None and handle.pgid > 0 else None
            fields: dict[str, str | int] = {
                "status": "running",
                "ref": handle.ref,
                "pid": pid or "",
            }
            if envd:
                fields["envd"] = envd

        def record(pipe: redis.client.Pipeline | None) -> None:
            self.plog.set_fields(sandbox_id, process_id, pipe, **fields)

        def follow() -> None:
            # After the record: the end's script would be overwritten by a late "running".
            self._run(run)
            # Ids and sizes only: a command can carry a secret.
            logger.info(
                "sandbox %s process %s: started (%d bytes)", sandbox_id, process_id, len(cmd)
            )

        return Spawned(pid, record, follow)

    def adopt(self, sandbox_id: str, process_id: str) -> bool:
        """Follow again a process a previous worker of this host started (its record says
        ``ref``, and ``resume`` where its stored output ends), storing each byte once. False
        when the backend cannot (the record is then closed by the caller)."""
        info = self.plog.info(sandbox_id, process_id)
        ref, tenant_id = info.get("ref", ""), info.get("tenant", "")
        point = parse_resume(info.get("resume") or "0")
        if not ref or not tenant_id or point is None:
            return False
        after, skip = point
        try:
            handle = self.backend.adopt(sandbox_id, ref, after)
        except (SandboxError, NotImplementedError) as exc:
            logger.warning(
                "sandbox %s process %s: not followed again: %s", sandbox_id, process_id, exc
            )
            return False
        pending = Pending(self.pending)
        pending.next_seq = int(info.get("wseq") or 0) + 4
        run = Running(
            sandbox_id,
            process_id,
            tenant_id,
            handle,
            oom_base=self.backend.oom_kills(sandbox_id),
            pending=pending,
            resume=Resume(after),
            skip=skip,
            stored=int(info.get("bytes") or 0),
        )
        logger.info(
            "sandbox %s process %s: followed again after chunk %d", sandbox_id, process_id, after
        )
        self._run(run)
        return True

    def _run(self, run: Running) -> None:
        with self._lock:
            self._running[(run.sandbox_id, run.process_id)] = run
        threading.Thread(
            target=self._pump, args=(run,), name=f"pump-{run.process_id}", daemon=True
        ).start()

    def count(self) -> int:
        """Processes whose output is pumped now (metrics)."""
        return len(self._running)

    def held(self) -> int:
        """Output bytes held for Redis now (metrics)."""
        return self.pending.size

    def write_stdin(self, sandbox_id: str, process_id: str, data: bytes) -> bool:
        run = self._get(sandbox_id, process_id)
        if run is None or run.done.is_set():
            return False
        with run.stdin_lock:
            try:
                run.handle.write_stdin(data)
            except OSError:
                return False
        return True

    def kill(self, sandbox_id: str, process_id: str, timeout: float = 5.0) -> bool:
        """Kill the process group, let the pump store the last output, then stop storing."""
        run = self._get(sandbox_id, process_id)
        if run is None:
            return False
        if not run.done.is_set():
            run.handle.kill(timeout)
            run.done.wait(timeout)
        run.forgotten = True
        self._close(run)
        return True

    # -- the envd protocol's (web/api/envd/process.py) ---------------------------------------
    def signal(self, sandbox_id: str, process_id: str, name: str, timeout: float = 5.0) -> bool:
        """Send ``name`` (SIGTERM, SIGKILL) to the process group. Unlike ``kill`` the pump
        stores the output and the end as for any exit. False when it is not running here.
        Raises SandboxError, BackendUnsupported."""
        run = self._get(sandbox_id, process_id)
        if run is None or run.done.is_set():
            return False
        if name == "SIGKILL":
            run.handle.kill(timeout)  # from the host where the backend can
        else:
            run.handle.signal(name)
        return True

    def resize(self, sandbox_id: str, process_id: str, cols: int, rows: int) -> bool:
        """Give the process's terminal a new size. False when it is not running here. Raises
        BadRequest (it has no terminal), SandboxError, BackendUnsupported."""
        run = self._get(sandbox_id, process_id)
        if run is None or run.done.is_set():
            return False
        if run.pty is False:
            raise BadRequest("the process was not started on a terminal")
        run.handle.resize(cols, rows)
        return True

    def close_stdin(self, sandbox_id: str, process_id: str) -> bool:
        """End the process's input. False when it is not running here or its stdin is not
        open (closed already, or never opened)."""
        run = self._get(sandbox_id, process_id)
        if run is None or run.done.is_set():
            return False
        with run.stdin_lock:
            try:
                run.handle.close_stdin()
            except OSError:
                return False
        return True

    def forget_sandbox(self, sandbox_id: str) -> None:
        """Stop storing output of every process of a sandbox that is going away."""
        with self._lock:
            runs = [r for (sid, _), r in self._running.items() if sid == sandbox_id]
        for run in runs:
            run.forgotten = True
            self._close(run)

    # -- internals ---------------------------------------------------------------------------
    def _get(self, sandbox_id: str, process_id: str) -> Running | None:
        with self._lock:
            return self._running.get((sandbox_id, process_id))

    def _close(self, run: Running) -> None:
        run.handle.close()

    def _pump(self, run: Running) -> None:
        sid, pid = run.sandbox_id, run.process_id
        s = self.settings
        limit = s.max_output_bytes
        stored = run.stored
        truncated = False
        printed = metrics.output_counters(s.host_id)

        def stop() -> bool:
            # The exec socket was quiet for a while: a chance to store what waits for Redis.
            self._flush(run)
            return run.forgotten

        try:
            # Chunks are stored as they come, one entry each: no per-line work here (readers
            # split lines, shared/output.py LineReader).
            for kind, data in run.handle.frames(stop):
                printed.get(kind, printed[STDOUT]).inc(len(data))
                if run.resume is not None:
                    run.resume.seq = run.handle.seq
                if run.skip.get(kind):  # stored by the worker before this one
                    dropped = min(run.skip[kind], len(data))
                    run.skip[kind] -= dropped
                    data = data[dropped:]
                if run.cut:
                    truncated = True
                if truncated or not data:
                    continue  # keep draining so the process never blocks on a full pipe
                # Counted as the budgets count it: an entry costs Redis more than its bytes.
                if stored + len(data) + ENTRY_BYTES > limit:
                    # Keep what fits, up to the last whole line (a terminal's output as it
                    # is), then say so once.
                    keep = data[: max(0, limit - stored - ENTRY_BYTES)]
                    if kind != PTY:
                        keep = keep[: keep.rfind(b"\n") + 1]
                    self._store_budgeted(run, kind, keep)
                    self._truncated(
                        run,
                        f"this process's kept output reached {limit} bytes "
                        "(PADDOCK_MAX_OUTPUT_BYTES)",
                    )
                    truncated = True
                    continue
                stored += len(data) + ENTRY_BYTES
                # Held when more (or the end) is already here: stored with it, in one trip.
                self._store_budgeted(run, kind, data, flush=not run.handle.ready())
            if not run.forgotten:
                code = run.handle.exit_code()
                oom = self._oom_killed(run, code)
                if oom:
                    self._store(
                        run,
                        paddock_line(
                            "[paddock] the process was killed: the sandbox ran out of "
                            f"memory (limit {s.sandbox_memory >> 20} MiB, "
                            "PADDOCK_SANDBOX_MEMORY)"
                        ),
                    )
                self._end(run, code, oom)
                logger.info(
                    "sandbox %s process %s: exited with %s%s (%d bytes of output kept)",
                    sid,
                    pid,
                    code,
                    " (out of memory)" if oom else "",
                    stored,
                )
        except Exception:
            logger.exception("sandbox %s process %s: output pump failed", sid, pid)
            if not run.forgotten:
                try:
                    self._store(run, paddock_line("[paddock] lost the process's output stream"))
                    self._end(run, None, False)
                except Exception:
                    logger.exception("sandbox %s process %s: not marked ended", sid, pid)
        finally:
            run.pending.drop()  # what a forgotten process left: its room goes back to the host
            self._close(run)  # a kill waiting for the pgid stops waiting
            run.done.set()
            with self._lock:
                self._running.pop((sid, pid), None)

    def _end(self, run: Running, code: int | None, oom: bool) -> None:
        """Store what still waits, then the end marker, waiting for Redis if it is down (up to
        WRITER_BACKOFF.give_up_after). Raises REDIS_DOWN errors past that."""
        if self._end_with_last_write(run, code, oom):
            return
        self._flush(run, wait=True)
        if not run.forgotten:
            sid, pid = run.sandbox_id, run.process_id
            persist(
                lambda: self.plog.finish(sid, pid, code, oom_killed=oom),
                f"end of process {pid}",
            )

    def _end_with_last_write(self, run: Running, code: int | None, oom: bool) -> bool:
        """The common end: one write of output waits and Redis is up. Stores it and the end
        marker in one round trip; False when that did not happen (nothing stored that the
        slow way would store twice: the write's seq makes a repeat a no-op)."""
        pending = run.pending
        if run.forgotten or run.cut or len(pending.writes) != 1 or pending.down_since is not None:
            return False
        write = pending.writes[0]
        if not write.budgeted:
            return False
        try:
            refused = self.plog.append_budgeted(
                run.sandbox_id,
                run.process_id,
                run.tenant_id,
                write.pieces,
                write.size,
                self.budgets,
                write.seq,
                write.resume,
                end=End(code, oom),
            )
        except REDIS_DOWN:
            return False
        if refused is not None:
            return False  # the slow way stores what fits and says why, then the end
        pending.done()
        return True

    def _oom_killed(self, run: Running, code: int | None) -> bool:
        """Whether the kernel's OOM killer ended the process: it died by SIGKILL (137) and the
        sandbox's OOM-kill count grew while it ran (read on the host: the tenant cannot fake
        it)."""
        if code not in (137, None) or run.oom_base is None:
            return False
        now = self.backend.oom_kills(run.sandbox_id)
        return now is not None and now > run.oom_base

    def _store(self, run: Running, line: Piece, unless_cut: bool = False) -> None:
        """Paddock's own notices: outside the budgets (short, one per process at most)."""
        if not run.forgotten:
            run.pending.add([line], 0, budgeted=False, unless_cut=unless_cut)
            self._flush(run)

    def _store_budgeted(self, run: Running, kind: str, data: bytes, flush: bool = True) -> None:
        """Store the process's own output against the sandbox's and the tenant's budgets,
        now or once Redis is back (with the run's Resume point). When a budget runs out, what
        fits is kept, a marker says why, ``run.cut`` is set and later output is discarded."""
        if not data or run.forgotten or run.cut:
            return
        resume = run.resume.point() if run.resume is not None else ""
        piece = Piece(kind, data, time.time_ns())
        run.pending.add([piece], len(data), budgeted=True, resume=resume)
        if flush or run.pending.full:
            self._flush(run)

    def _flush(self, run: Running, wait: bool = False) -> None:
        """Store the pending writes, oldest first. Redis being down leaves them pending (to be
        tried again after a back-off) unless ``wait`` or the buffer is full: then this waits
        for Redis, up to WRITER_BACKOFF.give_up_after, and drops them after that (logged)."""
        pending = run.pending
        while pending.writes and not run.forgotten:
            write = pending.writes[0]
            blocking = wait or pending.full
            if not blocking and time.monotonic() < pending.retry_at:
                return
            try:
                if blocking:
                    persist(
                        functools.partial(self._write, run, write),
                        f"output of process {run.process_id}",
                    )
                else:
                    self._write(run, write)
            except REDIS_DOWN as exc:
                if blocking:
                    dropped = pending.drop()
                    logger.error(
                        "sandbox %s process %s: Redis stayed down, %d bytes of output lost",
                        run.sandbox_id,
                        run.process_id,
                        dropped,
                    )
                    return
                down = pending.failed(time.monotonic())
                run.handle.poll_every(_PENDING_POLL)
                logger.warning(
                    "sandbox %s process %s: Redis down for %.1fs (%s); %d bytes wait for it",
                    run.sandbox_id,
                    run.process_id,
                    down,
                    exc,
                    pending.size,
                )
                return
            if pending.down_since is not None:
                logger.info(
                    "sandbox %s process %s: Redis is back, storing what waited",
                    run.sandbox_id,
                    run.process_id,
                )
                pending.down_since = None
                run.handle.poll_every(_IDLE_POLL)
            pending.done()

    def _write(self, run: Running, write: Write) -> None:
        """One pending write, safe to repeat (its seq). Raises REDIS_DOWN errors."""
        sid, pid = run.sandbox_id, run.process_id
        if not write.budgeted:
            if not (write.unless_cut and run.cut):
                self.plog.notice(sid, pid, run.tenant_id, write.pieces, write.seq)
            return
        if run.cut:
            return
        budgets = self.budgets
        refused = self.plog.append_budgeted(
            sid, pid, run.tenant_id, write.pieces, write.size, budgets, write.seq, write.resume
        )
        if refused is None:
            return
        fitting = _fit(write.pieces, refused.room)
        if fitting:
            self.plog.append_budgeted(
                sid, pid, run.tenant_id, fitting[0], fitting[1], budgets, seq=write.seq + 1
            )
        s = self.settings
        if refused.budget == "tenant":
            why = f"the tenant's kept output reached {s.tenant_output_bytes} bytes "
            why += "(PADDOCK_TENANT_OUTPUT_BYTES)"
        else:
            why = f"the sandbox's kept output reached {s.sandbox_output_bytes} bytes "
            why += "(PADDOCK_SANDBOX_OUTPUT_BYTES)"
        why += "; delete finished processes to free it"
        self.plog.notice(sid, pid, run.tenant_id, [_truncation(why)], write.seq + 2)
        run.cut = True

    def _truncated(self, run: Running, why: str) -> None:
        # Moot when a budget already cut the output (its own marker says so).
        self._store(run, _truncation(why), unless_cut=True)


def _truncation(why: str) -> Piece:
    # A cut notice: readers drop the unfinished lines before it (a cut line would pass for a
    # real one).
    return paddock_line(f"[paddock] output truncated: {why}; the rest was discarded", cut=True)


def _fit(pieces: list[Piece], room: int) -> tuple[list[Piece], int] | None:
    """What of ``pieces`` fits in ``room`` bytes, and its size: the whole pieces that fit,
    then the start of the next one up to its last newline (a terminal's output: as much as
    fits)."""
    out: list[Piece] = []
    size = 0
    for piece in pieces:
        if size + len(piece.data) <= room:
            out.append(piece)
            size += len(piece.data)
            continue
        part = piece.data[: room - size]
        if piece.kind != PTY:
            part = part[: part.rfind(b"\n") + 1]
        if part:
            out.append(piece._replace(data=part))
            size += len(part)
        break
    return (out, size) if out else None
