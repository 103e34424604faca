"""Fair shares of a host worker's threads: how many tasks one sandbox, and one tenant, may run
at once on this host.

A host worker has ``worker_concurrency`` threads. Without a cap, one tenant could hold all of
them with slow operations on its own sandboxes (a FIFO, a stopped process, a huge listing) and
every other tenant's request would wait behind it. The counters live in this process: the
threads being shared are this process's own, so nothing needs to be coordinated elsewhere,
and a worker that dies takes its counts with it.

Taking a share never waits, since waiting would itself hold a thread: over the share it
raises ShareUsedUp at once. The task wrapper (workers/host/tasks.py) then puts the task back in the
queue for a moment, a few times, and after that answers 429.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from shared.errors import QuotaExceeded


class ShareUsedUp(QuotaExceeded):
    """The sandbox or tenant already runs its share of this host's tasks (a 429 on the wire,
    like any QuotaExceeded; its own class so the wrapper can tell it from an operation's own
    quota)."""


class WorkerShares:
    """Per-sandbox and per-tenant counts of running tasks, each with its limit."""

    def __init__(self, per_sandbox: int, per_tenant: int) -> None:
        self.per_sandbox = per_sandbox
        self.per_tenant = per_tenant
        self._lock = threading.Lock()
        self._sandboxes: Counter[str] = Counter()
        self._tenants: Counter[str] = Counter()

    @contextmanager
    def hold(self, sandbox_id: str, tenant_id: str) -> Iterator[None]:
        """Count one running task of ``sandbox_id`` (and of ``tenant_id``, when known) for the
        duration of the block. Raises ShareUsedUp, taking nothing, when either is at its
        share."""
        self._take(sandbox_id, tenant_id)
        try:
            yield
        finally:
            self._give(sandbox_id, tenant_id)

    def running(self, sandbox_id: str = "", tenant_id: str = "") -> tuple[int, int]:
        """Tasks now counted for the sandbox and for the tenant."""
        with self._lock:
            return self._sandboxes[sandbox_id], self._tenants[tenant_id]

    def _take(self, sandbox_id: str, tenant_id: str) -> None:
        with self._lock:
            if self._sandboxes[sandbox_id] >= self.per_sandbox:
                raise ShareUsedUp(
                    f"this sandbox already has {self.per_sandbox} operations running on its "
                    "host, its share of the host's worker threads (PADDOCK_SANDBOX_WORKER_SHARE);"
                    " retry when one has finished"
                )
            if tenant_id and self._tenants[tenant_id] >= self.per_tenant:
                raise ShareUsedUp(
                    f"this tenant already has {self.per_tenant} operations running on this "
                    "host, its share of the host's worker threads (PADDOCK_TENANT_WORKER_SHARE);"
                    " retry when one has finished"
                )
            self._sandboxes[sandbox_id] += 1
            if tenant_id:
                self._tenants[tenant_id] += 1

    def _give(self, sandbox_id: str, tenant_id: str) -> None:
        with self._lock:
            # Counter keeps zero entries; drop them so ids of gone sandboxes do not pile up.
            self._sandboxes[sandbox_id] -= 1
            if self._sandboxes[sandbox_id] <= 0:
                del self._sandboxes[sandbox_id]
            if tenant_id:
                self._tenants[tenant_id] -= 1
                if self._tenants[tenant_id] <= 0:
                    del self._tenants[tenant_id]
