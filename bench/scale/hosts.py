"""``python -m bench.scale.hosts``: many simulated sandbox hosts in one OS process, each a real
Celery host worker (workers/host/app.py create_host_app: its own app, queue ``host.<id>``,
thread pool, heartbeat, reconcile, relay) over the fake backend.

Why threads in one process and not a process per host: a host worker process costs ~100 MB
and a second of CPU to start, so a few hundred would not fit this machine, and the GIL caps a
process at one core anyway, so two such processes use a 2-core machine as well as two hundred.
Why not one worker consuming many queues: then the hosts would share one consumer, one pool
and one prefetch, and the broker would see one client instead of N.

Celery runs one worker per process as a program (``worker_main``: signal handlers, the
kombu event-loop hub, which is one per process); here each worker is a plain
``WorkController`` in its own thread, with two changes, both about process-wide state:

- ``should_use_eventloop`` is False: each worker polls its own broker connection (Celery's
  blocking loop, the same Redis commands: BRPOP on its queue) instead of sharing the one hub;
- its thread pool's threads make their worker's app the current one, because Celery runs a
  task through ``current_app`` when the worker did not set up its process-wide fast path.

Worker signals are process-wide too; create_host_app's handlers act only on their own worker.

Commands, one a line on stdin: ``add HOST_ID`` starts a host (``ready HOST_ID`` on stdout once
it consumes), ``stop`` (or the end of stdin) stops them all, warm, and exits.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from celery import Celery, signals
from celery.concurrency.thread import TaskPool
from celery.worker import WorkController, state

from shared.settings import Settings
from shared.tasks import host_queue
from workers.host.app import create_host_app

logger = logging.getLogger(__name__)
_print_lock = threading.Lock()


def say(line: str) -> None:
    with _print_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


class AppThreadPool(TaskPool):
    """Celery's thread pool whose threads run tasks with their own worker's app current."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        app: Celery = self.options["initargs"][0]
        # Replaces the parent's executor, which has started no thread yet.
        self.executor = ThreadPoolExecutor(max_workers=self.limit, initializer=app.set_current)


class HostWorker(WorkController):
    """A host's worker as a thread of a process that holds several."""

    def should_use_eventloop(self) -> bool:
        return False

    def on_consumer_ready(self, consumer: Any) -> None:
        # What celery.apps.worker.Worker does: create_host_app's on_ready starts the host.
        signals.worker_ready.send(sender=consumer)
        say(f"ready {self.app.conf.paddock_host_id}")


class Hosts:
    def __init__(self, base: Settings) -> None:
        self.base = base
        self.workers: list[tuple[str, HostWorker, threading.Thread]] = []

    def add(self, host_id: str) -> None:
        """Start host ``host_id``'s worker in a thread (returns before it consumes)."""
        settings = dataclasses.replace(self.base, host_id=host_id)
        app, _ctx = create_host_app(settings)
        app.conf.paddock_host_id = host_id
        worker = HostWorker(
            app=app,
            hostname=f"host-{host_id}@{socket.gethostname()}",
            queues=[host_queue(host_id)],
            pool_cls=AppThreadPool,
            concurrency=settings.worker_concurrency,
            without_mingle=True,
            without_gossip=True,
            loglevel=settings.log_level,
        )

        def run() -> None:
            app.set_current()
            worker.start()

        thread = threading.Thread(target=run, name=f"worker-{host_id}", daemon=True)
        thread.start()
        self.workers.append((host_id, worker, thread))

    def stop(self, timeout: float = 30.0) -> None:
        """Warm shutdown of every host, as SIGTERM gives one worker: shutting-down first (an
        agent job gives its slot back), then each worker's loop ends, its shutdown signal
        stops heartbeat and relay and marks the host down."""
        for _, worker, _thread in self.workers:
            signals.worker_shutting_down.send(
                sender=worker.hostname, sig="SIGTERM", how="Warm", exitcode=0
            )
        state.should_stop = 0  # every worker loop of this process raises WorkerShutdown
        for host_id, _worker, thread in self.workers:
            thread.join(timeout)
            if thread.is_alive():
                logger.warning("host %s: worker did not stop in %.0f s", host_id, timeout)


def main() -> int:
    base = Settings.from_env()
    logging.basicConfig(
        level=base.log_level,
        format="%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s",
    )
    hosts = Hosts(base)
    for line in sys.stdin:
        words = line.split()
        if words[:1] == ["add"] and len(words) == 2:
            try:
                hosts.add(words[1])
            except Exception:
                logger.exception("host %s: not started", words[1])
                say(f"failed {words[1]}")
        elif words[:1] == ["stop"]:
            break
    hosts.stop()
    say("stopped")
    sys.stdout.flush()
    os._exit(0)  # daemon threads (pumps, relays) need not be waited for


if __name__ == "__main__":
    sys.exit(main())
