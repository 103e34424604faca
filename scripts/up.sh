#!/usr/bin/env bash
# Run the whole stack in the foreground (called by `make up` after bootstrap and images).
# Ctrl-C stops everything this script started — and the Docker engine and Redis only if
# bootstrap started them (their pid files in .paddock/run) — and nothing else.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BIN="$ROOT/.venv/bin"
DATA="${PADDOCK_DATA_DIR:-$ROOT/.paddock}"
LOG="$DATA/log"
RUN="${PADDOCK_RUN_DIR:-$ROOT/.paddock/run}"  # bootstrap's pid files: what it started, we stop
mkdir -p "$LOG" "$RUN"
export PADDOCK_DATA_DIR="$DATA"
# Logs name tenants, sandboxes and hosts: 0600 files in a 0700 dir (also those an older
# version left readable). Each is created private before its component appends to it; the
# components themselves keep the usual umask (a sandbox's files must stay usable by uid 1000).
chmod 700 "$LOG"
find "$LOG" -maxdepth 1 -type f -exec chmod 600 {} +
# Every long-poll and WebSocket holds a client socket and a Redis connection in the web
# (web/gunicorn_conf.py): far more descriptors than the usual 1024.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

PORT="${PADDOCK_PORT:-3000}"
FLOWER_PORT="${PADDOCK_FLOWER_PORT:-5555}"

# Secrets made once for this checkout (0600), unless the environment already has them.
SECRETS="$DATA/secrets.env"
if [[ ! -f "$SECRETS" ]]; then
    (umask 077; "$BIN/python" - >"$SECRETS" <<'PY'
import secrets
from cryptography.fernet import Fernet
print(f"PADDOCK_JWT_SECRET={secrets.token_hex(32)}")
print(f"PADDOCK_SECRET_KEY={Fernet.generate_key().decode()}")
PY
    )
fi
# Flower shows every tenant's commands, env and files: it gets a login, added to a secrets
# file made before it had one. (token_urlsafe: no ":" or ",", which Flower's list would split.)
if ! grep -q '^PADDOCK_FLOWER_PASSWORD=' "$SECRETS"; then
    (umask 077; "$BIN/python" - >>"$SECRETS" <<'PY'
import secrets
print("PADDOCK_FLOWER_USER=paddock")
print(f"PADDOCK_FLOWER_PASSWORD={secrets.token_urlsafe(24)}")
PY
    )
fi
chmod 600 "$SECRETS"
while read -r line; do
    key=${line%%=*}
    # (not `IFS== read key value`: read drops a trailing "=", and Fernet keys end with one)
    [[ -n "$key" && -z "${!key:-}" ]] || continue
    case "$key" in
        # Flower's login is for Flower alone: kept in this shell, not in every component's env.
        PADDOCK_FLOWER_*) printf -v "$key" '%s' "${line#*=}" ;;
        *) export "$key=${line#*=}" ;;
    esac
done <"$SECRETS"
export -n PADDOCK_FLOWER_USER PADDOCK_FLOWER_PASSWORD

# `make up` is the one-machine, single-user runner: API keys are off unless asked for, and then
# it listens on loopback only. With PADDOCK_AUTH=on it listens on every interface.
export PADDOCK_AUTH="${PADDOCK_AUTH:-off}"
if [[ "$PADDOCK_AUTH" == "off" ]]; then BIND="127.0.0.1"; else BIND="${PADDOCK_BIND:-0.0.0.0}"; fi
export PADDOCK_REDIS_URL="${PADDOCK_REDIS_URL:-redis://127.0.0.1:6379/0}"
export PADDOCK_HOST_ID="${PADDOCK_HOST_ID:-$(hostname)}"
# Sandboxes trust what this host trusts (a network that inspects TLS has its CA there).
if [[ -z "${PADDOCK_SANDBOX_CA_BUNDLE:-}" && -r /etc/ssl/certs/ca-certificates.crt ]]; then
    export PADDOCK_SANDBOX_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
fi

pids=()
start() {  # start NAME CMD...: run in the background, log to .paddock/log/NAME.log (0600)
    local name=$1; shift
    (umask 077 && : >>"$LOG/$name.log")
    chmod 600 "$LOG/$name.log"
    # Each in its own process group (setsid), so stopping it reaches its children too
    # (gunicorn's workers, Celery's pool); the trap below does the stopping.
    setsid "$@" >>"$LOG/$name.log" 2>&1 &
    pids+=($!)
    echo "up: $name started (pid $!, log $LOG/$name.log)"
}

stopping=0
stop_all() {
    [[ $stopping -eq 1 ]] && return
    stopping=1
    echo
    echo "up: stopping..."
    for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do
        for _ in $(seq 1 150); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL -- "-$pid" 2>/dev/null || true
    done
    for svc in redis dockerd; do
        if [[ -f "$RUN/$svc.pid" ]]; then
            pid=$(cat "$RUN/$svc.pid")
            if kill -0 "$pid" 2>/dev/null; then
                echo "up: stopping $svc (pid $pid, started by bootstrap)"
                kill -TERM "$pid" 2>/dev/null || true
                for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            fi
            rm -f "$RUN/$svc.pid"
        fi
    done
    echo "up: stopped"
}
trap 'stop_all; exit 0' INT TERM
trap stop_all EXIT

start worker-"$PADDOCK_HOST_ID" "$BIN/python" -m workers host
start control "$BIN/python" -m workers control
# The login goes in Flower's environment (FLOWER_BASIC_AUTH), not its argv, which `ps` shows;
# so does the Redis URL: shared.broker is `celery` with Paddock's app (password, TLS options).
FLOWER_BASIC_AUTH="${PADDOCK_FLOWER_USER:-paddock}:$PADDOCK_FLOWER_PASSWORD" \
    start flower "$BIN/python" -m shared.broker flower --port="$FLOWER_PORT" --address=127.0.0.1
# gevent workers (web/gunicorn_conf.py): a waiting client costs a greenlet, not a thread.
start web "$BIN/gunicorn" -c python:web.gunicorn_conf --bind "$BIND:$PORT" 'web.app:create_app()'

for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break
    sleep 0.2
done
for _ in $(seq 1 100); do
    [[ "$("$BIN/python" - <<'PY' 2>/dev/null
import os
from shared import keys
from shared.redisconn import redis_client
r = redis_client(os.environ["PADDOCK_REDIS_URL"], socket_timeout=5)
print(r.exists(keys.host(os.environ["PADDOCK_HOST_ID"])))
PY
)" == "1" ]] && break
    sleep 0.2
done

cat <<MSG

Paddock is running at http://localhost:$PORT  (host $PADDOCK_HOST_ID)
Flower: http://localhost:$FLOWER_PORT — login PADDOCK_FLOWER_USER / PADDOCK_FLOWER_PASSWORD in $SECRETS
Auth: $( [[ "$PADDOCK_AUTH" == "off" ]] && echo "off — /sessions acts as the local tenant; listening on 127.0.0.1 only (PADDOCK_AUTH=on to require API keys)" || echo "on — API keys required on /sessions and /v1" )
Mail: $( [[ -z "${PADDOCK_SMTP_URL:-}" ]] && echo "LOG MAILER (dev mode): login codes are written to $LOG/control.log — set PADDOCK_SMTP_URL to send real mail" || echo "SMTP via PADDOCK_SMTP_URL" )

Try it:
  curl -s -X POST http://localhost:$PORT/sessions -H 'Content-Type: application/json' -d '{"envID": "Nodejs"}'
  curl -s -X POST 'http://localhost:$PORT/sessions/<id>/processes?wait=true' \\
       -H 'Content-Type: application/json' -d '{"cmd": "echo 22", "rootdir": "/"}'

Logs in $LOG/. Press Ctrl-C to stop.
MSG

# Stop everything as soon as any component stops (Ctrl-C reaches them too, so after a Ctrl-C
# this names the first one that finished shutting down).
declare -A names=()
i=0
for n in "worker-$PADDOCK_HOST_ID" control flower web; do names[${pids[$i]}]=$n; i=$((i + 1)); done
exited=""
wait -n -p exited "${pids[@]}" || true
echo "up: ${names[$exited]:-a component} stopped (log: $LOG/${names[$exited]:-}.log)"
