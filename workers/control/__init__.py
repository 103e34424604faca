"""The control worker: work that belongs to no host (``python -m workers control``).

- ``app``: its Celery app and tasks (thin: they call the functions below).
- ``reaper``: idle, expired, lost and undeleted sandboxes; expired agent sessions; dead hosts.
- ``scheduler``: the periodic tasks, one tick claimed in Redis across all control workers.
- ``mailer``: the login-code mail.
"""
