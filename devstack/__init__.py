"""Developer tooling shared by the tests, the benchmark (bench/) and the fuzzer (tests/fuzz):
``devstack.stack`` starts a private Paddock stack (redis-server, Celery workers, gunicorn) on
loopback. Not shipped, and not a test package: nothing here is collected by pytest."""
