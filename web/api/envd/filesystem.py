"""The ``filesystem.Filesystem`` Connect service: each call authorised (access.py), its paths
resolved, and done by the sandbox's host through the supervisor (web/sandboxes.py host
commands). Errors become Connect errors (errors.py).

Watching (``WatchDir``, ``CreateWatcher``/``GetWatcherEvents``/``RemoveWatcher``): watching.py,
over the events the sandbox's host drains into Redis (workers/host/watches.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from connectrpc.request import RequestContext

from shared.errors import PaddockError, PathExists, PathNotFound, ValidationFailed
from shared.store import Sandbox
from web.api.envd import access, errors
from web.api.envd.entries import entry_info
from web.api.envd.gen.filesystem_connect import FilesystemSync
from web.api.envd.gen.filesystem_pb import (
    CreateWatcherRequest,
    CreateWatcherResponse,
    GetWatcherEventsRequest,
    GetWatcherEventsResponse,
    ListDirRequest,
    ListDirResponse,
    MakeDirRequest,
    MakeDirResponse,
    MoveRequest,
    MoveResponse,
    RemoveRequest,
    RemoveResponse,
    RemoveWatcherRequest,
    RemoveWatcherResponse,
    StatRequest,
    StatResponse,
    WatchDirRequest,
    WatchDirResponse,
)
from web.api.envd.watching import Watching, keepalive_interval, to_proto
from web.services import Services

T = TypeVar("T")
MAX_DEPTH = 64  # the supervisor's bound on fs.list


class FilesystemService(FilesystemSync):
    """The generated ``FilesystemSync`` protocol's methods, each through ``_run``."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.watching = Watching(services)

    def _run(self, ctx: RequestContext[Any, Any], fn: Callable[[Sandbox], T]) -> T:
        """Authorise the call, then ``fn(sandbox)``; Paddock's errors as Connect's."""
        try:
            headers = ctx.request_headers
            sandbox = access.authorise(self.services, headers)
            access.check_user(headers)
            return fn(sandbox)
        except PaddockError as exc:
            raise errors.to_connect(exc) from None

    def stat(self, request: StatRequest, ctx: RequestContext[Any, Any], /) -> StatResponse:
        def stat(sb: Sandbox) -> StatResponse:
            path = access.resolve(request.path)
            return StatResponse(entry=entry_info(self.services.sandboxes.stat(sb, path)))

        return self._run(ctx, stat)

    def make_dir(
        self, request: MakeDirRequest, ctx: RequestContext[Any, Any], /
    ) -> MakeDirResponse:
        """``already_exists`` when something is at the path (the SDK answers False then)."""
        sandboxes = self.services.sandboxes

        def make(sb: Sandbox) -> MakeDirResponse:
            path = access.resolve(request.path)
            try:
                sandboxes.stat(sb, path)
            except PathNotFound:
                sandboxes.make_dir(sb, path)
                return MakeDirResponse(entry=entry_info(sandboxes.stat(sb, path)))
            raise PathExists(f"directory already exists: {path}")

        return self._run(ctx, make)

    def move(self, request: MoveRequest, ctx: RequestContext[Any, Any], /) -> MoveResponse:
        def move(sb: Sandbox) -> MoveResponse:
            source = access.resolve(request.source, "source")
            destination = access.resolve(request.destination, "destination")
            return MoveResponse(
                entry=entry_info(self.services.sandboxes.move(sb, source, destination))
            )

        return self._run(ctx, move)

    def list_dir(
        self, request: ListDirRequest, ctx: RequestContext[Any, Any], /
    ) -> ListDirResponse:
        """Depth 0 reads as 1 (as envd); past MAX_DEPTH: invalid_argument."""

        def listing(sb: Sandbox) -> ListDirResponse:
            path = access.resolve(request.path)
            depth = request.depth or 1
            if depth > MAX_DEPTH:
                raise ValidationFailed({"depth": f"at most {MAX_DEPTH}"})
            found = self.services.sandboxes.entries(sb, path, depth)
            return ListDirResponse(entries=[entry_info(e) for e in found])

        return self._run(ctx, listing)

    def remove(self, request: RemoveRequest, ctx: RequestContext[Any, Any], /) -> RemoveResponse:
        sandboxes = self.services.sandboxes

        def remove(sb: Sandbox) -> RemoveResponse:
            path = access.resolve(request.path)
            sandboxes.stat(sb, path)  # a missing path is not_found, as envd answers
            sandboxes.remove(sb, path)
            return RemoveResponse()

        return self._run(ctx, remove)

    # -- watching (watching.py) -------------------------------------------------------------------
    def _stream(
        self, ctx: RequestContext[Any, Any], fn: Callable[[Sandbox], Iterator[T]]
    ) -> Iterator[T]:
        """``_run`` for a server stream: Paddock's errors as Connect's, before its first
        message (an error answer) or after (the stream's end)."""
        try:
            headers = ctx.request_headers
            sandbox = access.authorise(self.services, headers)
            access.check_user(headers)
            yield from fn(sandbox)
        except PaddockError as exc:
            raise errors.to_connect(exc) from None

    def watch_dir(
        self, request: WatchDirRequest, ctx: RequestContext[Any, Any], /
    ) -> Iterator[WatchDirResponse]:
        keepalive = keepalive_interval(ctx.request_headers)

        def watch(sb: Sandbox) -> Iterator[WatchDirResponse]:
            path = access.resolve(request.path)
            return self.watching.stream(sb, path, request.recursive, keepalive)

        return self._stream(ctx, watch)

    def create_watcher(
        self, request: CreateWatcherRequest, ctx: RequestContext[Any, Any], /
    ) -> CreateWatcherResponse:
        def create(sb: Sandbox) -> CreateWatcherResponse:
            path = access.resolve(request.path)
            return CreateWatcherResponse(
                watcher_id=self.watching.create(sb, path, request.recursive)
            )

        return self._run(ctx, create)

    def get_watcher_events(
        self, request: GetWatcherEventsRequest, ctx: RequestContext[Any, Any], /
    ) -> GetWatcherEventsResponse:
        def events(sb: Sandbox) -> GetWatcherEventsResponse:
            found = self.watching.events(sb, request.watcher_id)
            return GetWatcherEventsResponse(events=[to_proto(e) for e in found])

        return self._run(ctx, events)

    def remove_watcher(
        self, request: RemoveWatcherRequest, ctx: RequestContext[Any, Any], /
    ) -> RemoveWatcherResponse:
        def remove(sb: Sandbox) -> RemoveWatcherResponse:
            self.watching.remove(sb, request.watcher_id)
            return RemoveWatcherResponse()

        return self._run(ctx, remove)
