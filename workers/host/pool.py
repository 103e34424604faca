"""Warm pools: each host keeps PADDOCK_POOL_SIZES started, idle sandboxes per template, so that
a create claims one (one Celery round trip and its network rules) instead of starting a
container. What they are in Redis, and how placement claims one atomically: shared/pools.py.

- **Made like any other.** A warm sandbox is the backend's ``create(warm=True)``: the same
  hardening, capped storage seeded from the image and network mode (PADDOCK_SANDBOX_NETWORK)
  as a cold one, and the supervisor is all that runs in it. With internet, its address's
  rules refuse everything (the host's resolvers too) until the claim installs the claiming
  tenant's policy; nothing of a tenant runs before that. A create asking for another mode
  than the pool's starts cold.
- **Never used twice.** Placement pops a warm id from its pool in the same Lua step that
  gives it to the tenant; the host hands it over (``claim``: the supervisor runs nothing, the
  policy is noted beside its storage for a restart, then installed: by the supervisor backend
  after the claim has answered, before anything runs in the sandbox). One that cannot be
  handed over is removed and the sandbox starts cold under the same id. A claimed sandbox
  was never anyone's before: its files are the image's, no process ever ran in it, and its
  id was never handed out.
- **Background refill.** ``start_pool``'s thread fills the pools one sandbox at a time,
  woken by every claim (never on the create's path), and trims pools larger than asked. A
  claim's refill waits _AFTER_CLAIM first: starting a container takes the engine a good
  share of a small host's CPU, which the claimed sandbox's first commands would pay for.
- **Capacity, not quota.** A warm sandbox holds one of its host's slots from the moment its
  start is reserved, and none of any tenant's. A full host gives one back to a cold create
  of another template (placement's ``evict``), so pools never cost a tenant a sandbox.
- **Restarts.** Warm sandboxes outlive a worker restart like any sandbox: the reconcile at
  start keeps the ready ones whose container runs (their supervisor is attached again on
  first use) and removes those half-made (``warming``) or dead (``reconcile_pool``).
"""

from __future__ import annotations

import logging
import threading

from shared import ids
from shared.egress import NetworkPolicy
from shared.errors import PaddockError, SandboxError
from shared.pools import READY, WARMING, Pools, parse_pool_sizes
from workers.backends.base import SandboxState
from workers.host.context import WorkerContext

logger = logging.getLogger(__name__)

# Seconds between two checks of the pools when no claim wakes the keeper.
_CHECK_EVERY = 5.0
# After a failed start, the keeper waits this long (doubling, up to _MAX_BACKOFF) before the
# next: a host that cannot start sandboxes must not spin on it.
_BACKOFF = 2.0
_MAX_BACKOFF = 60.0
# Seconds the keeper lets pass after a claim (or eviction) woke it before it starts the
# replacement: the claim's answer and the tenant's first commands come first.
_AFTER_CLAIM = 0.5


def claim(ctx: WorkerContext, sandbox_id: str, tenant_id: str, network: NetworkPolicy) -> bool:
    """Hand the warm sandbox placement claimed to ``tenant_id`` with ``network``. False when
    it cannot be (gone, its supervisor does not answer, runs something, another mode): it is
    then removed, and the caller starts the sandbox cold under the same id."""
    try:
        ctx.backend.claim(sandbox_id, tenant_id, network)
        return True
    except PaddockError as exc:
        logger.warning("sandbox %s: warm sandbox not handed over (%s); cold start", sandbox_id, exc)
    try:
        ctx.processes.forget_sandbox(sandbox_id)
        ctx.backend.destroy(sandbox_id)
    except SandboxError:
        logger.exception("sandbox %s: the warm sandbox could not be removed", sandbox_id)
        raise
    return False


def evict(ctx: WorkerContext, sandbox_id: str) -> None:
    """Remove a warm sandbox placement gave back for its slot (shared/placement.py PLACE). Only
    a warm one of this host (no tenant): anything else is left alone. A failed removal is
    logged; the reaper sends the destroy again (its record is ``deleting``)."""
    record = ctx.store.raw_sandbox(sandbox_id)
    if record.get("tenant") or record.get("host") != ctx.settings.host_id:
        logger.error("sandbox %s: not a warm sandbox of this host; not evicted", sandbox_id)
        return
    try:
        ctx.backend.destroy(sandbox_id)
    except SandboxError:
        logger.exception("sandbox %s: evicted warm sandbox not removed; retried", sandbox_id)
        return
    ctx.store.purge_sandbox(sandbox_id)
    logger.info("sandbox %s: warm sandbox given back for a cold start", sandbox_id)


def _remove(ctx: WorkerContext, pools: Pools, record: dict[str, str], sandbox_id: str) -> bool:
    """Take a warm sandbox out of its pool and remove it (unless claimed meanwhile)."""
    if not pools.take(
        ctx.settings.host_id, record.get("template", ""), record.get("pool", ""), sandbox_id
    ):
        return False
    try:
        ctx.backend.destroy(sandbox_id)
    except SandboxError:  # its record stays deleting: the reaper sends the destroy again
        logger.exception("sandbox %s: warm sandbox not removed; retried", sandbox_id)
        return True
    ctx.store.purge_sandbox(sandbox_id)
    return True


def reconcile_pool(
    ctx: WorkerContext, states: dict[str, SandboxState], at_start: bool
) -> list[str]:
    """Part of the host's reconcile (workers/host/reconcile.py check_engine): remove the warm
    sandboxes whose container is gone or dead, and at start those half-made by the previous
    worker (``warming``); keep the ready ones that run (and make sure they are claimable).
    Returns the ids removed."""
    host = ctx.settings.host_id
    pools = Pools(ctx.store.r)
    removed: list[str] = []
    for sandbox_id in ctx.store.host_sandbox_ids(host):
        record = ctx.store.raw_sandbox(sandbox_id)
        status = record.get("status")
        if status not in (WARMING, READY) or record.get("tenant"):
            continue
        seen = states.get(sandbox_id)
        alive = seen is not None and seen.alive
        if status == READY and alive:
            if at_start:  # (a no-op unless the previous worker died between two writes)
                pools.ready(host, record.get("template", ""), record.get("pool", ""), sandbox_id)
            continue
        if status == WARMING and not at_start:
            continue  # being started by this worker's keeper
        logger.warning(
            "sandbox %s: warm sandbox %s, removing", sandbox_id, status if alive else "dead"
        )
        if _remove(ctx, pools, record, sandbox_id):
            removed.append(sandbox_id)
    return removed


class PoolKeeper:
    """Fills this host's pools to their sizes, one sandbox at a time."""

    def __init__(self, ctx: WorkerContext, sizes: dict[str, int]) -> None:
        self.ctx = ctx
        self.sizes = sizes
        self.pools = Pools(ctx.store.r)
        self.mode = ctx.settings.sandbox_network
        self.backoff = 0.0

    def fill_once(self, stop: threading.Event) -> int:
        """Start the warm sandboxes missing now (trim the surplus). Returns how many started.
        Raises what the backend or Redis raise (the loop logs it)."""
        ctx, host = self.ctx, self.ctx.settings.host_id
        if self.mode == "internet" and ctx.backend.network_problem() is not None:
            return 0  # it could not start them: the heartbeat reports why
        images = {t.name: t.image for t in ctx.backend.templates()}
        started = 0
        for template, size in sorted(self.sizes.items()):
            image = images.get(template)
            if image is None:
                continue
            ready = self.pools.ready_ids(host, template, self.mode)
            for sandbox_id in sorted(ready)[size:]:  # the setting was lowered
                _remove(ctx, self.pools, ctx.store.raw_sandbox(sandbox_id), sandbox_id)
            for _ in range(size - len(ready)):
                if stop.is_set() or not self._start(template, image):
                    return started
                started += 1
        return started

    def _start(self, template: str, image: str) -> bool:
        """Start one warm sandbox. False when the host is full or the start failed."""
        ctx, host = self.ctx, self.ctx.settings.host_id
        sandbox_id = ids.sandbox_id()
        if not self.pools.reserve(host, ctx.capacity.sandboxes, template, self.mode, sandbox_id):
            return False  # full: cold creates take what is left
        try:
            ctx.backend.create(sandbox_id, "", image, NetworkPolicy(mode=self.mode), warm=True)
        except Exception as exc:
            logger.error("host %s: warm %s sandbox not started: %s", host, template, exc)
            if self.pools.take(host, template, self.mode, sandbox_id):
                ctx.store.purge_sandbox(sandbox_id)  # (the backend left nothing behind)
            self.backoff = min(_MAX_BACKOFF, max(_BACKOFF, self.backoff * 2))
            return False
        self.backoff = 0.0
        if not self.pools.ready(host, template, self.mode, sandbox_id):
            # Taken meanwhile (a reconcile judged it): remove what was made.
            logger.warning("sandbox %s: warm sandbox taken while starting; removing", sandbox_id)
            try:
                ctx.backend.destroy(sandbox_id)
                ctx.store.purge_sandbox(sandbox_id)
            except SandboxError:
                logger.exception("sandbox %s: not removed; the reconcile retries", sandbox_id)
            return False
        logger.info("sandbox %s: warm %s sandbox ready", sandbox_id, template)
        return True


def start_pool(ctx: WorkerContext, stop: threading.Event) -> threading.Thread | None:
    """Keep this host's pools filled (PADDOCK_POOL_SIZES; None when there are none): every
    _CHECK_EVERY seconds, and as soon as a create claims or evicts a warm sandbox."""
    sizes = parse_pool_sizes(ctx.settings.pool_sizes)
    if not sizes:
        return None
    keeper = PoolKeeper(ctx, sizes)

    def loop() -> None:
        while not stop.is_set():
            ctx.pool_wake.clear()
            try:
                keeper.fill_once(stop)
            except Exception:  # Redis or the engine away for a moment: the next round
                logger.exception("host %s: filling the warm pools failed", ctx.settings.host_id)
                keeper.backoff = min(_MAX_BACKOFF, max(_BACKOFF, keeper.backoff * 2))
            if keeper.backoff:
                stop.wait(keeper.backoff)
            if ctx.pool_wake.wait(_CHECK_EVERY):
                stop.wait(_AFTER_CLAIM)

    t = threading.Thread(target=loop, name="warm-pools", daemon=True)
    t.start()
    return t
