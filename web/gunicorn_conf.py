"""How gunicorn serves the web app, in one place for every runner (make web, make up, compose,
the image, the test stack): ``gunicorn -c python:web.gunicorn_conf --bind HOST:PORT
'web.app:create_app()'``. Operators override any of it with GUNICORN_CMD_ARGS.

Waiting must cost no OS thread: long-polls (``wait=true``) and session WebSockets spend their
life blocked on Redis (XREAD BLOCK, BLPOP) or on the client's socket. gevent's worker
monkey-patches sockets, threads and locks at worker start, so each of them is a greenlet of a
few KiB parked in the event loop, and one worker holds thousands (flask-sock's pump thread and
simple-websocket's reader thread become greenlets too).
"""

from __future__ import annotations

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
