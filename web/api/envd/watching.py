"""Directory watches for the envd protocol (filesystem.py's WatchDir and the polled
CreateWatcher/GetWatcherEvents/RemoveWatcher), over the watcher records and event streams
that the sandbox's host writes (shared/watches.py, workers/host/watches.py).

- A watcher is registered for the sandbox and its tenant (at most
  PADDOCK_SANDBOX_MAX_WATCHERS per sandbox and PADDOCK_TENANT_MAX_WATCHERS per tenant:
  ``resource_exhausted``), then its host starts the watch; the answer (the watcher id, or
  WatchDir's start event) comes once the watch is in place, so every change after it is
  reported. A path that is not there: ``not_found``; not a directory (a symlink included:
  not followed): ``invalid_argument``, as envd answers.
- A watcher id is reachable only through its own sandbox (``E2b-Sandbox-Id``, authorised as
  every call is) and tenant; any other, like an unknown one, is ``not_found``.
- GetWatcherEvents answers the events since the last call (at most
  PADDOCK_WATCH_MAX_EVENTS; the rest on the next call) and drops them. RemoveWatcher forgets
  the watcher; its host stops the watch within about a second. A watcher nobody asks for
  IDLE seconds expires.
- WatchDir streams the same events as they come (XREAD with a short block), with a keepalive
  message every ``Keepalive-Ping-Interval`` seconds (the SDK's header) or _KEEPALIVE_MAX
  when that is sooner, and holds one of the tenant's stream slots (PADDOCK_TENANT_MAX_STREAMS,
  as process streams do) while it is open; the sandbox counts as active meanwhile. It ends
  when the client goes (noticed at the next write, a keepalive at the latest), cleanly when
  the directory goes away, with an error when the watch breaks.
- A watcher that ended (the directory went away, the watch broke, its sandbox was deleted,
  its host stopped following it: shared/watches.py STALE) answers ``not_found`` saying why
  (GetWatcherEvents first hands out the events it still has); a stream ends with an error.
- Events lost (a flood past the host's rate, or a stream trimmed before it was read) come as
  one event of type UNSPECIFIED with an empty name, which the SDKs skip.

Not kept: ``include_entry`` (events carry no entry, which the SDK allows: "may be None"),
``allow_network_mounts`` (a sandbox has no network mounts).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from typing import Any, Literal, overload

from protobuf import Oneof

from shared.errors import NotFound, QuotaExceeded, SandboxError, SandboxNotFound
from shared.slots import STREAMS
from shared.store import Sandbox
from shared.watches import (
    END,
    MAX_NAME,
    Batch,
    Watches,
    WatchEvent,
    WatchLimits,
    WatchRecord,
    valid_id,
    watcher_id,
)
from web.api.envd.gen.filesystem_pb import EventType, FilesystemEvent, WatchDirResponse
from web.services import Services

logger = logging.getLogger(__name__)

_TYPES = {
    "create": EventType.CREATE,
    "write": EventType.WRITE,
    "remove": EventType.REMOVE,
    "rename": EventType.RENAME,
    "chmod": EventType.CHMOD,
}
_BLOCK_MS = 1000  # one XREAD's wait
_CHECK_EVERY = 5.0  # seconds between checks of the watcher (and refreshes of slot and sandbox)
# Keepalives at least this often, whatever the client asks (the SDK: 50 s): a client that went
# away is noticed at the second write after it left, and its slot and watcher freed.
_KEEPALIVE_MAX = 5.0
_SLOT_TTL = 60.0  # a stream slot's life without a refresh (its web worker died)


def to_proto(event: WatchEvent) -> FilesystemEvent:
    """An event on the envd wire; OVERFLOW (events lost) as type UNSPECIFIED, name ""."""
    kind = _TYPES.get(event.kind)
    if kind is None:
        return FilesystemEvent(name="", type=EventType.UNSPECIFIED)
    return FilesystemEvent(name=event.name, type=kind)


@overload
def _message(kind: Literal["start"], value: WatchDirResponse.StartEvent) -> WatchDirResponse: ...
@overload
def _message(kind: Literal["filesystem"], value: FilesystemEvent) -> WatchDirResponse: ...
@overload
def _message(kind: Literal["keepalive"], value: WatchDirResponse.KeepAlive) -> WatchDirResponse: ...
def _message(kind: Any, value: Any) -> WatchDirResponse:
    return WatchDirResponse(event=Oneof(kind, value))


def keepalive_interval(headers: Mapping[str, str]) -> float:
    """The ``Keepalive-Ping-Interval`` the client asked for (seconds), within 1 and
    _KEEPALIVE_MAX; that maximum when absent or not a number."""
    raw = headers.get("keepalive-ping-interval", "")
    try:
        asked = float(raw)
    except ValueError:
        return _KEEPALIVE_MAX
    if asked != asked:  # NaN
        return _KEEPALIVE_MAX
    return min(max(asked, 1.0), _KEEPALIVE_MAX)


class Watching:
    """The watchers of the envd protocol (see the module docstring)."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.log = Watches(services.redis, WatchLimits.of(services.settings))

    def create(self, sandbox: Sandbox, path: str, recursive: bool) -> str:
        """A new watcher of ``path`` (absolute), in place when this returns: its id. Raises
        QuotaExceeded, PathNotFound, NotADirectory, BackendUnsupported, WorkerTimeout;
        nothing of it is left on failure."""
        new = watcher_id()
        self.log.register(
            new, sandbox.sandbox_id, sandbox.tenant_id, sandbox.host_id, path, recursive
        )
        try:
            self.services.sandboxes.watch(sandbox, new, path, recursive)
        except BaseException:
            # The host may still start it (a late delivery): its first write then finds no
            # record, and it stops.
            self.log.remove(new)
            raise
        logger.info("sandbox %s: watcher %s started", sandbox.sandbox_id, new)
        return new

    def events(self, sandbox: Sandbox, watcher: str) -> list[WatchEvent]:
        """The events since the last call, consumed. Raises NotFound (unknown, another
        sandbox's or tenant's, or ended: then it is forgotten), SandboxNotFound."""
        record = self._own(sandbox, watcher)
        batch = self.log.consume(watcher)
        if batch is None:
            raise self._gone(sandbox, watcher)
        if batch.events:
            return batch.events  # an end among them is answered by the next call
        if batch.ended is not None or record.state == "ended" or record.stale:
            reason = batch.ended.name if batch.ended else record.reason
            self.log.remove(watcher)
            raise NotFound(f"the watcher {watcher} ended: {self._why(record, reason)}")
        return []

    def remove(self, sandbox: Sandbox, watcher: str) -> None:
        """Raises NotFound (unknown, another sandbox's or tenant's)."""
        self._own(sandbox, watcher)
        self.log.remove(watcher)
        logger.info("sandbox %s: watcher %s removed", sandbox.sandbox_id, watcher)

    def stream(
        self, sandbox: Sandbox, path: str, recursive: bool, keepalive: float
    ) -> Iterator[WatchDirResponse]:
        """WatchDir's messages: the start once the watch is in place, then events and
        keepalives until the directory goes away. Raises (before the start) QuotaExceeded and
        ``create``'s errors; (after) NotFound, SandboxNotFound, SandboxError (the watch
        broke). Closing it (the client went away) forgets the watcher and frees the slot."""
        slots = self.services.sandboxes.slots
        limit = self.services.settings.tenant_max_streams
        token = slots.acquire(STREAMS, sandbox.tenant_id, limit, _SLOT_TTL)
        if token is None:
            raise QuotaExceeded(
                f"stream quota reached: {limit} streams open at once per tenant "
                "(PADDOCK_TENANT_MAX_STREAMS); retry when one has ended",
                retry_after=1,
            )
        watcher = ""
        try:
            watcher = self.create(sandbox, path, recursive)
            yield _message("start", WatchDirResponse.StartEvent())
            after, seq = "0-0", 0
            checked = next_keepalive = time.monotonic()
            next_keepalive += keepalive
            while True:
                now = time.monotonic()
                if now - checked >= _CHECK_EVERY:
                    checked = now
                    self._check(sandbox, watcher)
                    slots.refresh(STREAMS, sandbox.tenant_id, token, _SLOT_TTL)
                    self.services.sandboxes.store.touch(sandbox.sandbox_id)
                after, batch = self.log.read(watcher, after, seq, _BLOCK_MS)
                seq = batch.seq
                for event in batch.events:
                    yield _message("filesystem", to_proto(event))
                if batch.ended is not None:
                    self._finish(sandbox, watcher, batch)
                    return
                if time.monotonic() >= next_keepalive:
                    next_keepalive = time.monotonic() + keepalive
                    yield _message("keepalive", WatchDirResponse.KeepAlive())
        finally:
            if watcher:
                self.log.remove(watcher)
                logger.info("sandbox %s: watch stream %s closed", sandbox.sandbox_id, watcher)
            slots.release(STREAMS, sandbox.tenant_id, token)

    # -- helpers ---------------------------------------------------------------------------------
    def _own(self, sandbox: Sandbox, watcher: str) -> WatchRecord:
        """The watcher's record (its expiry pushed back) if it is this sandbox's and
        tenant's. Raises NotFound, SandboxNotFound (the sandbox ended meanwhile)."""
        if valid_id(watcher):
            record = self.log.touch(watcher, sandbox.sandbox_id, sandbox.tenant_id)
            if record is not None:
                return record
        raise NotFound(f"no watcher {watcher[:64]!r} in this sandbox")

    def _check(self, sandbox: Sandbox, watcher: str) -> None:
        """A streamed watcher is still followed. Raises NotFound, SandboxNotFound."""
        record = self.log.touch(watcher, sandbox.sandbox_id, sandbox.tenant_id)
        if record is None:
            raise self._gone(sandbox, watcher)
        if record.stale:
            raise NotFound(f"the watcher {watcher} ended: {self._why(record, '')}")

    def _finish(self, sandbox: Sandbox, watcher: str, batch: Batch) -> None:
        """The stream's end: clean when the directory went away. Raises SandboxError."""
        assert batch.ended is not None
        reason = batch.ended.name[:MAX_NAME]
        if batch.ended.kind == END:
            logger.info("sandbox %s: watcher %s ended: %s", sandbox.sandbox_id, watcher, reason)
            return
        raise SandboxError(f"the watch broke: {reason}")

    def _gone(self, sandbox: Sandbox, watcher: str) -> Exception:
        """Why a watcher's record is gone: its sandbox ended (SandboxNotFound), or it was
        removed or expired (NotFound)."""
        try:
            self.services.sandboxes.store.get_sandbox(sandbox.tenant_id, sandbox.sandbox_id)
        except NotFound:
            return SandboxNotFound(f"The sandbox {sandbox.sandbox_id} was not found")
        return NotFound(f"the watcher {watcher} was removed or expired")

    @staticmethod
    def _why(record: WatchRecord, reason: str) -> str:
        if record.stale:
            return "its sandbox host stopped following it"
        return reason or record.reason or "it ended"
