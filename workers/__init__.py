"""Paddock's workers: everything that runs beside the sandboxes. Never imported by web/.

``python -m workers host`` runs a host worker, ``python -m workers control`` a control worker
(``__main__.py``: settings are read there, once); ``python -m workers.images build|list``
builds the sandbox images.

What lives where, and where a change of each kind goes:

- ``host/``: a sandbox host's worker. A new host command: its dataclass in shared/commands.py,
  its function in ``host/ops.py``, one line in ``host/tasks.py`` HOST_TASKS, and the web's
  method in web/sandboxes.py. How processes run and their output reaches Redis:
  ``host/runner.py``. Capacity, heartbeat, reconcile (Redis and the backend agree): their own
  modules. Nothing in host/ knows how a sandbox is made.
- ``backends/``: how sandboxes are made. ``base.py`` is the SandboxBackend protocol (lifecycle,
  files, ``spawn`` with its ProcessHandle, OOM kills, the host's network and templates);
  ``docker/`` implements it with containers (hardening, exec, storage, egress firewall). A new
  operation on a sandbox: the protocol first, then each backend. A new backend: a package
  here and a name in ``backends/__init__.py`` make_backend (``PADDOCK_SANDBOX_BACKEND``).
  ``supervisor/``: the resident supervisor's build (``make supervisor``) and typed client.
- ``control/``: work that belongs to no host: the reaper, dead hosts, expired agent sessions,
  the one scheduler of periodic tasks, the login-code mail.
- ``agent/``: the LLM agent that works inside a sandbox. ``agent/jobs.py`` runs a session's
  jobs (one prompt each; the v1 wire calls them tasks) one at a time, from the ``agent_drain``
  Celery task in ``host/tasks.py``; ``llm.py`` and its adapters talk to the LLM vendors.
- ``images/``: the image builder (base from a Debian mirror, one image per template; its
  options default to Settings' templates_dir, image_prefix, build_args, debian_mirror); at
  runtime only ``images/templates.py`` is used, through the Docker backend.

Only ``backends/docker/`` and ``images/`` import the Docker SDK.
"""
