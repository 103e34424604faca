# Paddock's front door. `make up` runs the whole stack on this machine; `make test` tests it.
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: up test lint bench images bootstrap worker control web flower unit integration clean \
	rotate-secrets install-service

up: bootstrap images            ## install what is missing, build images, run everything
	@bash scripts/up.sh

# systemd instead of `make up`: the units in deploy/systemd/ (paths filled in for this checkout)
# into /etc/systemd/system, enabled and started as paddock.target. Settings (PADDOCK_AUTH,
# PADDOCK_REDIS_URL, PADDOCK_PORT, ...) go in /etc/paddock/paddock.env.
SYSTEMD_DIR ?= /etc/systemd/system
install-service: bootstrap images   ## run Paddock as systemd services (paddock.target)
	@command -v systemctl >/dev/null || { echo "install-service: no systemctl here" >&2; exit 1; }
	@bash scripts/up.sh --secrets-only
	@for unit in deploy/systemd/*; do \
		sed 's|@ROOT@|$(CURDIR)|g' "$$unit" >"$(SYSTEMD_DIR)/$$(basename "$$unit")" || exit 1; \
		echo "install-service: $(SYSTEMD_DIR)/$$(basename "$$unit")"; \
	done
	systemctl daemon-reload
	systemctl enable --now paddock.target
	@echo "install-service: running; systemctl status 'paddock-*'; journalctl -u paddock-web -f"

# Two test modules at a time (pytest-xdist, whole files per worker so a module's stack is
# started once): most of an integration test's time is waiting on containers and timers.
PYTEST_PAR ?= -n 2 --dist loadfile --durations=15
E2B_TESTS = tests/integration/test_e2b_sandboxes.py tests/integration/test_processes.py \
	tests/integration/test_filesystem.py tests/integration/test_e2b_sdk_control.py
# The browser tests (tests/integration/test_console_*.py, test_docs_browser.py) drive Debian's
# headless chromium, and test_e2b_js_sdk.py runs the official E2B JS SDK (tests/js) with Node:
# the test targets have bootstrap install them when missing.
test integration: BOOTSTRAP_ARGS := --browser --js
test: bootstrap images lint     ## the whole test suite against real Redis and Docker
	$(PY) -m pytest -ra -p no:cacheprovider $(PYTEST_PAR) tests
	# The E2B API's tests again on the other sandbox backend (docker exec per operation).
	PADDOCK_TEST_BACKEND=docker $(PY) -m pytest -ra -p no:cacheprovider $(PYTEST_PAR) $(E2B_TESTS)

unit: bootstrap
	$(PY) -m pytest -ra -p no:cacheprovider tests/unit

integration: bootstrap images
	$(PY) -m pytest -ra -p no:cacheprovider $(PYTEST_PAR) tests/integration

lint: bootstrap
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: bootstrap images         ## latency and throughput against raw docker, same run
	$(PY) -m bench

.PHONY: fuzz
fuzz: bootstrap images          ## schemathesis on both OpenAPI documents, private stack (tests/fuzz)
	$(PY) -m tests.fuzz $(FUZZ_ARGS)

.PHONY: load
load: bootstrap images          ## the load scenario: create ramp, exec throughput, 1,000 long-polls
	$(PY) -m bench.load

# Where each tier saturates as hosts grow: N simulated hosts (real Celery host workers, many per
# process, over the fake backend: no container) against one private Redis, web and control;
# Redis commands per operation first. SCALE_ARGS=--quick for ~1.5 min (bench/scale/README.md).
.PHONY: scale
scale: bootstrap                ## tiers' throughput and p99 vs simulated hosts (bench/scale)
	$(PY) -m bench.scale $(SCALE_ARGS)

images: bootstrap               ## build the base and template images that changed, the supervisor, the console's files
	$(PY) -m workers.images build
	$(PY) -m workers.backends.supervisor.build
	$(PY) -c "import sys; from web.console.vendor import main; sys.exit(main())"

bootstrap:
	@bash scripts/bootstrap.sh $(BOOTSTRAP_ARGS)

# requirements.lock: every dependency pinned with its files' hashes (scripts/lock.py, uv in
# .paddock/tools); bootstrap installs from it and refuses a pyproject.toml edited since.
# Existing pins are kept; `make lock UPGRADE=1` moves everything to the newest allowed.
.PHONY: lock compose-check
lock:                           ## regenerate requirements.lock after editing dependencies
	python3 scripts/lock.py compile

# compose.yaml end to end (docker-compose from Debian if missing): build, up, a sandbox and a
# process through the API, down. Images stay cached (their first build takes ~2 min here).
compose-check: bootstrap images ## prove compose.yaml runs here, then remove what it started
	@bash deploy/compose/check.sh

worker:                         ## only this host's worker (PADDOCK_HOST_ID)
	$(PY) -m workers host

control:                        ## only the control worker (scheduler thread inside)
	$(PY) -m workers control

web:                            ## only the web API (everything but the address: web/gunicorn_conf.py)
	ulimit -n 65536 2>/dev/null || ulimit -n "$$(ulimit -Hn)"; \
	$(VENV)/bin/gunicorn -c python:web.gunicorn_conf --bind 0.0.0.0:$${PADDOCK_PORT:-3000}

flower:                         ## only Flower, behind the login `make up` put in the secrets file
	@secrets="$${PADDOCK_DATA_DIR:-.paddock}/secrets.env"; \
	user=$$(sed -n 's/^PADDOCK_FLOWER_USER=//p' "$$secrets" 2>/dev/null); \
	pass=$$(sed -n 's/^PADDOCK_FLOWER_PASSWORD=//p' "$$secrets" 2>/dev/null); \
	if [[ -z "$$pass" ]]; then echo "flower: no login in $$secrets; run make up once" >&2; exit 1; fi; \
	FLOWER_BASIC_AUTH="$$user:$$pass" $(PY) -m shared.broker flower --port=5555 --address=127.0.0.1

rotate-secrets:                 ## re-encrypt secret bundles with the first PADDOCK_SECRET_KEY
	$(PY) -m shared.rotate_secrets

clean:
	rm -rf .paddock/build .mypy_cache .ruff_cache

# The resident supervisor (supervisor/, issue 12): built in the Go template image, cached by a
# hash of its source under .paddock/build/supervisor/; prints the binary's path.
.PHONY: supervisor
supervisor: bootstrap
	$(PY) -m workers.backends.supervisor.build
