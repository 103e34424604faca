#!/usr/bin/env bash
# Bring a fresh Debian machine (run as root, from the repo root) to the point where Paddock can
# run: system packages, the Python virtualenv, a Docker engine and a Redis server.
# Idempotent: every step is skipped quickly when it is already satisfied.
#
# Usage: scripts/bootstrap.sh [--no-venv] [--quiet] [--browser] [--js]
# (--browser: also Debian's chromium and chromium-driver, for the browser tests; `make test`)
# (--js: also tests/js's pinned npm packages (the official E2B JS SDK), for
#  tests/integration/test_e2b_js_sdk.py; `make test`. Node.js and npm are always installed:
#  `make images` fetches the console's xterm.js with npm)
#
# Daemons this script starts itself get their pid recorded in .paddock/run/<name>.pid, so that
# `make up` (scripts/up.sh, on Ctrl-C or SIGTERM) stops exactly what was started here and
# nothing that pre-existed.
set -euo pipefail

NO_VENV=0
QUIET=0
BROWSER=0
JS=0
for arg in "$@"; do
    case "$arg" in
        --no-venv) NO_VENV=1 ;;
        --quiet) QUIET=1 ;;
        --browser) BROWSER=1 ;;
        --js) JS=1 ;;
        -h|--help)
            sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "bootstrap: unknown argument: $arg" >&2
            exit 2
            ;;
    esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

STATE="$ROOT/.paddock"
LOG_DIR="$STATE/log"
RUN_DIR="$STATE/run"
mkdir -p "$LOG_DIR" "$RUN_DIR"
# Logs name tenants, sandboxes and hosts: only their owner reads them (0600 files in a 0700
# dir), including logs an older version left world-readable.
chmod 700 "$LOG_DIR"
find "$LOG_DIR" -maxdepth 1 -type f -exec chmod 600 {} +
private_log() {  # private_log FILE: create it 0600 before a daemon appends to it
    (umask 077 && : >>"$1")
    chmod 600 "$1"
}

PYTHON="${PYTHON:-python3}"
REDIS_URL="${PADDOCK_REDIS_URL:-redis://127.0.0.1:6379/0}"
# Redis holds state and every process's kept output: cap its memory (a quarter of the machine's
# by default) and never evict, since evicting would silently lose state. Output budgets per
# process, sandbox and tenant keep Paddock well below it; the cap is the last line.
if [[ -z "${PADDOCK_REDIS_MAXMEMORY:-}" ]]; then
    mem_kb="$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)"
    PADDOCK_REDIS_MAXMEMORY="$((mem_kb / 4 / 1024))mb"
fi

say() {
    if [[ "$QUIET" -eq 0 ]]; then
        echo "bootstrap: $*"
    fi
}

die() {
    echo "bootstrap: error: $*" >&2
    exit 1
}

# A pid file of ours whose process is gone (or whose pid now belongs to something else) would
# make `make up`'s stop (scripts/up.sh) signal an unrelated process; forget it.
forget_stale_pid() {
    local file="$RUN_DIR/$1.pid" comm="$2" pid
    [[ -f "$file" ]] || return 0
    pid="$(cat "$file" 2>/dev/null || true)"
    if [[ ! "$pid" =~ ^[0-9]+$ || "$(cat "/proc/$pid/comm" 2>/dev/null || true)" != "$comm" ]]; then
        rm -f "$file"
    fi
}

if [[ "$(id -u)" -ne 0 ]]; then
    die "must run as root (installs packages and starts dockerd)"
fi

# --- apt ---------------------------------------------------------------------------------------
# dpkg-query is local and instant; apt-get update only runs when something is actually missing.
missing=()
apt_wanted=(docker.io redis-server debootstrap e2fsprogs mount)
if [[ "$BROWSER" -eq 1 ]]; then
    # Headless Chromium and its WebDriver for tests/browser (Selenium drives them); only the
    # test targets ask for them, a server running Paddock does not need a browser.
    apt_wanted+=(chromium chromium-driver)
fi
for pkg in "${apt_wanted[@]}"; do
    status="$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)"
    if [[ "$status" != "installed" ]]; then
        missing+=("$pkg")
    fi
done
# Node.js and npm: `make images` fetches the console's pinned xterm.js with `npm pack`
# (web/console/vendor.py), and the JS SDK's tests run on Node (--js). Any `node` on PATH will
# do (a machine may have a newer one than Debian's, with npm bundled in), else Debian's.
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
if [[ "${#missing[@]}" -gt 0 ]]; then
    say "apt: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt_quiet=()
    if [[ "$QUIET" -eq 1 ]]; then
        apt_quiet=(-qq)
    fi
    apt-get "${apt_quiet[@]}" update
    apt-get "${apt_quiet[@]}" install -y --no-install-recommends "${missing[@]}"
    say "apt: installed ${missing[*]}"
else
    say "apt: ${apt_wanted[*]} already installed"
fi

# --- Python virtualenv -------------------------------------------------------------------------
# Every dependency comes from requirements.lock (pinned, each file's hash checked: `make lock`
# regenerates it), then Paddock itself without dependencies. The venv records the lock's sha256
# and is reinstalled only when the lock's content changes; a pyproject.toml whose dependencies
# changed without a new lock fails here, before anything is installed.
LOCK=requirements.lock
if [[ "$NO_VENV" -eq 1 ]]; then
    say "venv: skipped (--no-venv)"
else
    "$PYTHON" scripts/lock.py check || die "$LOCK cannot be used (the reason is above)"
    lock_sum="$(sha256sum "$LOCK" | cut -d' ' -f1)"
    if [[ -x .venv/bin/python && "$(cat .venv/.installed 2>/dev/null || true)" == "$lock_sum" ]]; then
        say "venv: up to date"
    else
        say "venv: installing $LOCK into .venv"
        if [[ ! -x .venv/bin/python ]]; then
            "$PYTHON" -m venv .venv
        fi
        pip_quiet=()
        if [[ "$QUIET" -eq 1 ]]; then
            pip_quiet=(-q)
        fi
        # --no-compile: modules are compiled when first imported (a third of the install time).
        .venv/bin/pip install "${pip_quiet[@]}" --no-compile --require-hashes -r "$LOCK"
        # The build backend (setuptools) is in the lock: no isolated build env fetching its own.
        .venv/bin/pip install "${pip_quiet[@]}" --no-deps --no-build-isolation -e .
        echo "$lock_sum" >.venv/.installed
        say "venv: installed"
    fi
fi

# --- Docker engine -----------------------------------------------------------------------------
docker_ok() {
    timeout 5 docker info >/dev/null 2>&1
}

# The engine behind the default socket is the one whose pid is in its pid file: dockerd writes it
# first thing and removes it last, so this also sees one that is starting or stopping (and not a
# second engine with a pid file of its own). /proc, not pgrep: a minimal machine may lack procps.
DOCKERD_PIDFILE=/var/run/docker.pid
dockerd_alive() {
    local pid
    pid="$(cat "$DOCKERD_PIDFILE" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ && "$(cat "/proc/$pid/comm" 2>/dev/null || true)" == "dockerd" ]]
}

# live-restore keeps containers running while the engine restarts, so a dockerd restart does not
# kill every sandbox. Given as a flag, unless the engine's config file sets it (dockerd refuses
# an option given both ways; the operator's value wins).
DOCKERD_CONFIG=/etc/docker/daemon.json
dockerd_args=()
if ! grep -qs '"live-restore"' "$DOCKERD_CONFIG"; then
    dockerd_args+=(--live-restore)
fi
live_restore_note() {  # an engine someone else started keeps its settings; say what it lacks
    if [[ "$(timeout 5 docker info --format '{{.LiveRestoreEnabled}}' 2>/dev/null)" == "false" ]]; then
        say "docker: live-restore is off: sandboxes die when the engine restarts" \
            "(a dockerd bootstrap starts has it; else set \"live-restore\": true in $DOCKERD_CONFIG)"
    fi
}

forget_stale_pid dockerd dockerd
if docker_ok; then
    if [[ -f "$RUN_DIR/dockerd.pid" ]]; then
        say "docker: running (started by us, pid $(cat "$RUN_DIR/dockerd.pid"))"
    else
        say "docker: running"
    fi
    live_restore_note
else
    # A dockerd that is alive but does not answer is starting or stopping, and from outside the
    # two look alike: wait until it answers (a starting one) or exits (a stopping one, which can
    # take a while: it stops containers first), and start ours only once none is left. The pid
    # file a dead dockerd leaves behind makes a new one refuse to start: removed only then.
    started_pid=""
    waited=0
    deadline=$((SECONDS + 90))
    while [[ $SECONDS -lt $deadline ]]; do
        if docker_ok; then
            break
        fi
        if [[ -n "$started_pid" ]]; then
            kill -0 "$started_pid" 2>/dev/null || break
        elif ! dockerd_alive; then
            rm -f "$DOCKERD_PIDFILE"
            private_log "$LOG_DIR/dockerd.log"
            nohup setsid dockerd "${dockerd_args[@]}" >>"$LOG_DIR/dockerd.log" 2>&1 </dev/null &
            started_pid=$!
            continue
        elif [[ "$waited" -eq 0 ]]; then
            say "docker: a dockerd is alive but not answering (starting or stopping), waiting"
            waited=1
        fi
        sleep 1
    done
    if ! docker_ok; then
        echo "bootstrap: docker did not come up; last lines of $LOG_DIR/dockerd.log:" >&2
        tail -n 30 "$LOG_DIR/dockerd.log" >&2 || true
        exit 1
    fi
    if [[ -n "$started_pid" ]]; then
        echo "$started_pid" >"$RUN_DIR/dockerd.pid"
        say "docker: running (started by us, pid $started_pid)"
    else
        say "docker: running"
        live_restore_note
    fi
fi

# --- Redis ---------------------------------------------------------------------------------------
# Through shared.redisconn, which reads PADDOCK_REDIS_URL as every component does (password, ACL
# user, rediss:// with its CA): `redis-cli -u` would put the password in `ps`. Messages show the
# URL with the password masked. With PADDOCK_BROKER_URL (Celery's queues on a Redis of their
# own), that one is checked, or started here, the same way as "broker-redis".
REDIS_PY=.venv/bin/python
[[ -x "$REDIS_PY" ]] || REDIS_PY="$PYTHON"
REDIS_WHICH=()  # empty: PADDOCK_REDIS_URL; (--broker): PADDOCK_BROKER_URL
redisconn() {
    PADDOCK_REDIS_URL="$REDIS_URL" timeout 15 "$REDIS_PY" -m shared.redisconn "${REDIS_WHICH[@]}" "$@"
}
redis_ok() {
    redisconn ping >/dev/null 2>&1
}

ensure_redis() {  # ensure_redis NAME: NAME's Redis answers, started here if it is local
    local name=$1 shown capped why redis_conf redis_pid
    shown="$(redisconn redacted 2>/dev/null || echo "the $name URL")"
    forget_stale_pid "$name" redis-server
    if redis_ok; then
        # A Redis that was running already (ours from an earlier run, or the operator's)
        # without a memory cap gets one; a cap someone set is left alone.
        capped="$(redisconn maxmemory "$PADDOCK_REDIS_MAXMEMORY" 2>/dev/null || true)"
        if [[ -n "$capped" ]]; then
            say "$name: $capped"
        fi
        if [[ -f "$RUN_DIR/$name.pid" ]]; then
            say "$name: running at $shown (started by us, pid $(cat "$RUN_DIR/$name.pid"))"
        else
            say "$name: running at $shown"
        fi
        return 0
    fi
    why="$(redisconn ping 2>&1 >/dev/null || true)"
    # port, bind and the URL's password (requirepass, or its ACL user with `default` off), fed
    # on stdin so the password is in no file and no argv. Refused for a remote or TLS URL.
    if ! redis_conf="$(redisconn server-config 2>&1)"; then
        die "$name does not answer (${why:-no reply}); $redis_conf"
    fi
    mkdir -p "$STATE/$name"
    private_log "$LOG_DIR/$name.log"
    # Every waiting client (long-poll, WebSocket) holds a Redis connection, up to 4000 per web
    # worker (web/gunicorn_conf.py): maxclients 20000, and the open files that takes even where
    # the soft limit is 1024.
    ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    # AOF on, RDB snapshots off: the session store (and queued commands) survive a restart
    # without periodic fork+dump.
    nohup setsid redis-server --appendonly yes \
        --dir "$STATE/$name" --daemonize no --save '' --maxclients 20000 \
        --maxmemory "$PADDOCK_REDIS_MAXMEMORY" --maxmemory-policy noeviction - \
        >>"$LOG_DIR/$name.log" 2>&1 <<<"$redis_conf" &
    redis_pid=$!
    for _ in $(seq 1 40); do
        if redis_ok || ! kill -0 "$redis_pid" 2>/dev/null; then
            break
        fi
        sleep 0.5
    done
    if ! redis_ok; then
        echo "bootstrap: $name did not come up (${why:-no reply before}); last lines of $LOG_DIR/$name.log:" >&2
        tail -n 30 "$LOG_DIR/$name.log" >&2 || true
        exit 1
    fi
    echo "$redis_pid" >"$RUN_DIR/$name.pid"
    say "$name: running at $shown (started by us, pid $redis_pid)"
}

ensure_redis redis
if [[ -n "${PADDOCK_BROKER_URL:-}" ]]; then
    REDIS_WHICH=(--broker)
    ensure_redis broker-redis
    REDIS_WHICH=()
fi

# --- JS test packages (--js) -------------------------------------------------------------------
# tests/js/package-lock.json pins the official E2B JS SDK and everything it needs (with hashes);
# `npm ci` installs exactly that into tests/js/node_modules, again only when the lock's sha256
# differs from the one recorded there. No install scripts run.
if [[ "$JS" -eq 1 ]]; then
    JS_DIR=tests/js
    js_sum="$(sha256sum "$JS_DIR/package-lock.json" | cut -d' ' -f1)"
    if [[ "$(cat "$JS_DIR/node_modules/.paddock-installed" 2>/dev/null || true)" == "$js_sum" ]]; then
        say "js: $JS_DIR/node_modules up to date"
    else
        say "js: npm ci in $JS_DIR (node $(node --version))"
        npm_quiet=()
        if [[ "$QUIET" -eq 1 ]]; then
            npm_quiet=(--silent)
        fi
        (cd "$JS_DIR" && timeout 600 npm ci "${npm_quiet[@]}" --ignore-scripts --no-audit --no-fund) \
            || die "npm ci in $JS_DIR failed (the reason is above)"
        echo "$js_sum" >"$JS_DIR/node_modules/.paddock-installed"
        say "js: installed"
    fi
fi
