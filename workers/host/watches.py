"""The host's directory watches: one thread per watch drains the sandbox's events (the
backend's WatchHandle: the supervisor's ``fs.watch``) into the watcher's Redis stream
(shared/watches.py), which the web reads.

What the sandbox says is untrusted: an event's path must lie under the watched directory
(its name is the rest, at most MAX_NAME bytes of UTF-8), its kind one of EVENT_KINDS; anything
else is dropped and counted. At most WatchLimits.rate events a second (a stream's worth at
once) per watch are written; the rest are dropped and then reported by one ``overflow`` entry
with their count. At most WatchLimits.host_max watches (threads) run on a host.
The thread reads the supervisor as fast as it writes (never waiting on a reader), so a
flooding sandbox costs the host one thread's CPU and Redis a bounded stream.

A watch ends when:
- its record is gone (RemoveWatcher, expired unread, its sandbox deleted): the thread's next
  write says so, within about a second, and the watch is closed;
- the directory goes away: an ``end`` entry;
- the watch breaks (the sandbox failed, a subdirectory past the supervisor's limit): ``fail``.
  A broken channel (the supervisor backend attaches again) is watched again, at most
  _REWATCH times, with an ``overflow`` entry for the events between;
- the sandbox is deleted or lost (``forget_sandbox``, from ops.destroy_sandbox and
  reconcile.lose): its watches stop and their records go.

After a worker restart, ``resume`` (reconcile's start pass) watches again every running
watcher of a live sandbox of this host, its stream going on after an ``overflow`` entry (the
events while nobody watched are lost). One that cannot be watched again gets ``fail`` and its
reader an error; if the worker does not come back, readers see its beat go stale
(shared/watches.py STALE) and answer the watcher gone."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from shared.errors import NotADirectory, PathNotFound, QuotaExceeded, SandboxError
from shared.watches import END, EVENT_KINDS, FAIL, MAX_NAME, OVERFLOW, Entry, Watches
from workers.backends.base import FsEvent, SandboxBackend, WatchBroken, WatchHandle

logger = logging.getLogger(__name__)

_TICK = 1.0  # seconds without an event between beats (and checks that the record is there)
_BATCH = 256  # events written at once
_BATCH_TIME = 0.05  # seconds an event waits for others before it is written
_REWATCH = 3
_GONE_WORDS = "the directory was removed or moved"


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` kept."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.at = now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


def relative_name(root: str, path: str) -> str | None:
    """``path`` relative to the watched directory ``root`` (both absolute), as envd names
    events; None for a path not under it, empty, or longer than MAX_NAME bytes. Text that is
    not UTF-8 comes out with U+FFFD in its place."""
    prefix = root.rstrip("/") + "/"
    if not path.startswith(prefix):
        return None
    name = path[len(prefix) :].encode("utf-8", "replace").decode("utf-8", "replace")
    if not name or "\x00" in name or len(name.encode()) > MAX_NAME:
        return None
    return name


@dataclass(eq=False)
class _Run:
    watcher_id: str
    sandbox_id: str
    path: str
    recursive: bool
    handle: WatchHandle
    seq: int = 0
    lost: int = 0  # events dropped since the last overflow entry
    lost_unknown: bool = False  # ... and some of them not counted
    stop: threading.Event = field(default_factory=threading.Event)

    def entry(self, kind: str, name: str = "", is_dir: bool = False) -> Entry:
        self.seq += 1
        return Entry(self.seq, kind, name, is_dir)


class WatchRegistry:
    """This host's running watches (see the module docstring)."""

    def __init__(self, backend: SandboxBackend, log: Watches, host_id: str) -> None:
        self.backend = backend
        self.log = log  # its limits are the watches' (WatchLimits)
        self.host_id = host_id
        self._lock = threading.Lock()
        self._runs: dict[str, _Run | None] = {}  # None: being started

    def count(self) -> int:
        with self._lock:
            return len(self._runs)

    def start(self, sandbox_id: str, watcher_id: str, path: str, recursive: bool) -> None:
        """Watch ``path`` for the watcher the web registered; returns once the watch is in
        place (again for one already running: a redelivered command). Raises SandboxError
        (the record is gone: the web gave up), QuotaExceeded (this host runs its most
        watches), the backend's errors (PathNotFound, NotADirectory, ...)."""
        record = self.log.record(watcher_id)
        if record is None or record.sandbox_id != sandbox_id:
            raise SandboxError("the watcher is gone")
        with self._lock:
            if watcher_id in self._runs:
                return
            most = self.log.limits.host_max
            if len(self._runs) >= most:
                raise QuotaExceeded(
                    f"this sandbox host runs its most directory watches ({most}, "
                    "PADDOCK_HOST_MAX_WATCHERS)"
                )
            self._runs[watcher_id] = None
        try:
            handle = self.backend.watch(sandbox_id, path, recursive)
        except BaseException:
            self._forget(watcher_id, None)
            raise
        run = _Run(watcher_id, sandbox_id, path, recursive, handle)
        if not self.log.write(watcher_id):  # the web gave up meanwhile
            handle.close()
            self._forget(watcher_id, None)
            raise SandboxError("the watcher is gone")
        self._launch(run)

    def resume(self, sandbox_id: str) -> None:
        """At worker start: watch again the sandbox's running watchers of this host (see the
        module docstring)."""
        for watcher_id in self.log.of_sandbox(sandbox_id):
            record = self.log.record(watcher_id)
            if (
                record is None
                or record.state != "running"
                or record.host_id != self.host_id
                or record.sandbox_id != sandbox_id
            ):
                continue
            with self._lock:
                if watcher_id in self._runs:
                    continue
                self._runs[watcher_id] = None
            run = _Run(watcher_id, sandbox_id, record.path, record.recursive, _Closed())
            run.seq, run.lost_unknown = record.wseq, True
            try:
                run.handle = self.backend.watch(sandbox_id, record.path, record.recursive)
            except (PathNotFound, NotADirectory):
                self._end(run, END, _GONE_WORDS)
                self._forget(watcher_id, None)
                continue
            except Exception as exc:
                self._end(run, FAIL, f"not watched again after a worker restart: {_why(exc)}")
                self._forget(watcher_id, None)
                continue
            logger.info("sandbox %s watcher %s: watched again", sandbox_id, watcher_id)
            self._launch(run)

    def stop(self, watcher_id: str) -> None:
        with self._lock:
            run = self._runs.get(watcher_id)
        if run is not None:
            run.stop.set()
            run.handle.close()

    def forget_sandbox(self, sandbox_id: str) -> None:
        """The sandbox is deleted or lost: stop its watches and forget their records."""
        with self._lock:
            runs = [r for r in self._runs.values() if r is not None and r.sandbox_id == sandbox_id]
        for run in runs:
            self.stop(run.watcher_id)
        self.log.forget_sandbox(sandbox_id)

    # -- the thread ------------------------------------------------------------------------------
    def _launch(self, run: _Run) -> None:
        with self._lock:
            self._runs[run.watcher_id] = run
        threading.Thread(
            target=self._drain, args=(run,), name=f"watch-{run.watcher_id}", daemon=True
        ).start()

    def _drain(self, run: _Run) -> None:
        try:
            self._pump(run)
        except Exception:
            logger.exception("sandbox %s watcher %s: failed", run.sandbox_id, run.watcher_id)
            self._end(run, FAIL, "the watch failed on its host")
        finally:
            run.handle.close()
            self._forget(run.watcher_id, run)

    def _pump(self, run: _Run) -> None:
        limits = self.log.limits
        bucket = TokenBucket(limits.rate, limits.max_events, time.monotonic())
        rewatched = 0
        beat = time.monotonic()
        while not run.stop.is_set():
            events: list[FsEvent] = []
            broken: SandboxError | None = None
            try:
                self._collect(run.handle, events)
            except SandboxError as exc:  # WatchBroken included
                broken = exc
            batch: list[Entry] = []
            self._mark(run, bucket, batch)  # losses before these events
            for event in events:
                self._take(run, event, bucket, batch)
            if isinstance(broken, WatchBroken) and rewatched < _REWATCH:
                rewatched += 1
                logger.warning(
                    "sandbox %s watcher %s: %s; watching again",
                    run.sandbox_id,
                    run.watcher_id,
                    broken.message,
                )
                run.lost_unknown = True  # the events in between
                run.handle.close()
                try:
                    run.handle = self.backend.watch(run.sandbox_id, run.path, run.recursive)
                except (PathNotFound, NotADirectory):
                    self._end(run, END, _GONE_WORDS, batch)
                    return
                except Exception as exc:
                    self._end(run, FAIL, _why(exc), batch)
                    return
            elif broken is not None:
                self._end(run, FAIL, broken.message, batch)
                return
            self._mark(run, bucket, batch)
            now = time.monotonic()
            if run.stop.is_set():
                return
            if run.handle.ended:
                self._end(run, END, _GONE_WORDS, batch)
                return
            if batch or now - beat >= _TICK:
                beat = now
                if not self.log.write(run.watcher_id, batch):
                    return  # removed, expired or its sandbox gone: stop quietly

    @staticmethod
    def _collect(handle: WatchHandle, got: list[FsEvent]) -> None:
        """The next events into ``got`` (those that came before an error too): waits up to
        _TICK for one, then up to _BATCH_TIME for more."""
        timeout, deadline = _TICK, 0.0
        while len(got) < _BATCH:
            event = next(iter(handle.events(timeout)), None)
            if event is None:
                return
            got.append(event)
            if not deadline:
                deadline = time.monotonic() + _BATCH_TIME
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                return

    @staticmethod
    def _mark(run: _Run, bucket: TokenBucket, batch: list[Entry]) -> None:
        """One OVERFLOW entry for the events lost since the last (when the rate allows)."""
        if (run.lost or run.lost_unknown) and bucket.take(time.monotonic()):
            batch.append(run.entry(OVERFLOW, "" if run.lost_unknown else str(run.lost)))
            run.lost, run.lost_unknown = 0, False

    @staticmethod
    def _take(run: _Run, event: FsEvent, bucket: TokenBucket, batch: list[Entry]) -> None:
        if event.kind == OVERFLOW:  # the sandbox's kernel dropped events: how many, unknown
            run.lost_unknown = True
            return
        name = relative_name(run.path, event.path) if event.kind in EVENT_KINDS else None
        if name is None or not bucket.take(time.monotonic()):
            run.lost += 1
            return
        batch.append(run.entry(event.kind, name, event.is_dir))

    def _end(self, run: _Run, kind: str, reason: str, batch: list[Entry] | None = None) -> None:
        """Write the watch's last entries and its end (nothing when its record is gone)."""
        entries = list(batch or [])
        if run.lost or run.lost_unknown:
            entries.append(run.entry(OVERFLOW, "" if run.lost_unknown else str(run.lost)))
        entries.append(run.entry(kind, reason[:MAX_NAME]))
        # (The reason goes to the watcher's reader only: it may quote a path.)
        log = logger.info if kind == END else logger.warning
        log("sandbox %s watcher %s: ended (%s)", run.sandbox_id, run.watcher_id, kind)
        try:
            self.log.write(run.watcher_id, entries, reason[:MAX_NAME])
        except Exception:
            logger.exception("sandbox %s watcher %s: end unwritten", run.sandbox_id, run.watcher_id)

    def _forget(self, watcher_id: str, run: _Run | None) -> None:
        with self._lock:
            if self._runs.get(watcher_id, run) is run:
                self._runs.pop(watcher_id, None)


class _Closed:
    """The handle of a watch not (yet) in place."""

    ended = True

    def events(self, timeout: float) -> Iterator[FsEvent]:
        return iter(())

    def close(self) -> None:
        pass


def _why(exc: Exception) -> str:
    return exc.message if isinstance(exc, SandboxError | QuotaExceeded) else type(exc).__name__
