"""The resident supervisor: a small static Go binary (source in ``supervisor/`` at the top of
the repository) that runs inside a sandbox and serves processes and files over its stdio.

``build.py`` builds it (cached by a hash of its source); ``frames.py`` is the wire framing;
``channel.py`` the typed client. Not yet a backend: nothing in the product uses it today."""
