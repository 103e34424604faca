"""The one gunicorn configuration: how gunicorn serves the web app, for every runner (``make
web``, ``make up``'s supervisord, compose.yaml, the Dockerfile, deploy/systemd, devstack/stack.py):
``gunicorn -c python:web.gunicorn_conf --bind HOST:PORT``. The app, the worker class and every
limit are here; only the address is given by the runner. Operators override any of it with
GUNICORN_CMD_ARGS. A change of how the web tier is served goes here, never into a runner.

Waiting must cost no OS thread: long-polls (``wait=true``) and session WebSockets spend their
life blocked on Redis (XREAD BLOCK, BLPOP) or on the client's socket. gevent's worker
monkey-patches sockets, threads and locks at worker start, so each of them is a greenlet of a
few KiB parked in the event loop, and one worker holds thousands (flask-sock's pump thread and
simple-websocket's reader thread become greenlets too).
"""

from __future__ import annotations

from typing import Any

wsgi_app = "web.app:create_app()"
worker_class = "gevent"
# One per core; every worker is one event loop.
workers = 2
# Open connections per worker, long-polls and WebSockets included (gevent's Pool size; past it a
# worker stops accepting until one closes). The target is 1,000 long-polls plus 1,000 sockets
# on a 2-core machine; accept() is not balanced evenly between workers, so each alone can hold
# all of them with room to spare. Each holds one client socket and, while waiting, one Redis
# connection: web/app.py sizes the Redis pool from this, the runners raise the open-file limit
# (ulimit -n / RLIMIT_NOFILE) and Redis's maxclients (20000) to match.
worker_connections = 4000
# With gevent this is a heartbeat: a worker whose event loop is stuck this long is restarted
# (a long request is not "stuck": it yields while it waits).
timeout = 120
graceful_timeout = 10
# gunicorn 24+ opens a control socket at one fixed path per user: several stacks on one machine
# (tests, bench) would fight over it, and nothing here uses it.
control_socket_disable = True
# Idle keep-alive connections stay open this long (gunicorn's default is 2 s). An idle
# connection costs a greenlet; closing it sooner makes a client that reuses it at that moment
# see a reset (a race every HTTP client library meets with short server keep-alives).
keepalive = 75


# -- Prometheus multiprocess mode (web/metrics.py) -------------------------------------------
# Each worker writes its metrics to files in one directory per web instance, which /metrics
# reads whichever worker answers. Set up in the master before any worker starts (the workers
# inherit the variable; prometheus_client decides its mode when first imported), and emptied
# then, so counters start from zero with the instance. prometheus_client is imported only
# inside the hooks, never by the master before the variable is set.


def on_starting(server: Any) -> None:
    import os
    import re
    import tempfile
    from pathlib import Path

    from shared.settings import Settings

    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        # One directory per bind address: two gunicorns of one machine never share one.
        bind = re.sub(r"[^A-Za-z0-9.-]+", "_", "-".join(server.cfg.bind))
        path = str(Path(Settings.from_env().data_dir) / "metrics" / f"web-{bind}")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    try:
        Path(path).mkdir(parents=True, exist_ok=True, mode=0o700)
        for old in Path(path).glob("*.db"):  # only prometheus_client's files
            old.unlink()
    except OSError as exc:
        # A read-only data dir (a container) must not keep the API down for want of metrics.
        path = tempfile.mkdtemp(prefix="paddock-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
        server.log.warning("metrics files in %s: the data dir is not writable (%s)", path, exc)


def child_exit(server: Any, worker: Any) -> None:
    # A dead worker's gauges (open long-polls and sockets) stop counting; its counters stay.
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
