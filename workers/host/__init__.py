"""A sandbox host's worker (``python -m workers host``): it consumes ``host.<id>`` and drives
its sandboxes through the sandbox backend (workers/backends/), never a backend library itself.

- ``app``: the Celery app and what starts with it; ``tasks``: the task registration (thin: it
  parses the typed command of shared/commands.py and calls ``ops``).
- ``ops``: what the host does for each command, plain functions over the ``context``.
- ``runner``: running processes and the pump threads that move their output into Redis.
- ``heartbeat``: announces capacity and templates; ``reconcile``: Redis and the backend agree.
- ``relay``: the port relay, the web tier's way into its sandboxes' ports (web/ports/).
- ``context``: what a worker builds once at start; ``capacity``: how many sandboxes it takes;
  ``shares``: a sandbox's and a tenant's share of the worker's threads; ``metrics``: /metrics.
"""
