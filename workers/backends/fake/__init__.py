"""The fake sandbox backend (backend.py): sandboxes in memory and processes that play a small
script, for the scale harness only (bench/scale, README.md there). Never a production choice:
Settings refuses PADDOCK_SANDBOX_BACKEND=fake without PADDOCK_ALLOW_FAKE_BACKEND=1."""
