"""A supervisor's ``fs.watch`` (channel.py ``Watch``) as the backend protocol's WatchHandle
(workers/backends/base.py): its events as FsEvent, its failures as Paddock's errors."""

from __future__ import annotations

from collections.abc import Iterator

from shared.errors import SandboxError
from workers.backends.base import FsEvent, WatchBroken
from workers.backends.supervisor.channel import ChannelClosed, SupervisorError, Watch


class SupervisorWatch:
    """Raises from ``events``: WatchBroken when the channel ended or the watch's events were
    not read in time (``overflow``: the channel's per-request bound), SandboxError for the
    supervisor's other refusals (``busy``: a new subdirectory past its limit)."""

    def __init__(self, watch: Watch) -> None:
        self._watch = watch
        self.dirs = watch.dirs

    @property
    def ended(self) -> bool:
        return self._watch.ended

    def events(self, timeout: float) -> Iterator[FsEvent]:
        try:
            for event in self._watch.events(timeout):
                yield FsEvent(event.kind, event.path, event.is_dir)
        except ChannelClosed as exc:
            raise WatchBroken(f"the channel to the sandbox ended: {exc.message}") from None
        except SupervisorError as exc:
            if exc.code == "overflow":  # the supervisor was told to stop (channel.py)
                raise WatchBroken("the watch's events were not read in time") from None
            raise SandboxError(f"the watch failed inside the sandbox: {exc.code}") from None

    def close(self) -> None:
        self._watch.close()
