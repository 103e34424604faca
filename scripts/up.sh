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
while read -r line; do
    key=${line%%=*}
    # (not `IFS== read key value`: read drops a trailing "=", and Fernet keys end with one)
    [[ -n "$key" && -z "${!key:-}" ]] && export "$key=${line#*=}"
done <"$SECRETS"

# `make up` is the one-machine, single-user runner: API keys are off unless asked for, and then
# it listens on loopback only. With PADDOCK_AUTH=on it listens on every interface.
export PADDOCK_AUTH="${PADDOCK_AUTH:-off}"
if [[ "$PADDOCK_AUTH" == "off" ]]; then BIND="127.0.0.1"; else BIND="${PADDOCK_BIND:-0.0.0.0}"; fi
export PADDOCK_REDIS_URL="${PADDOCK_REDIS_URL:-redis://127.0.0.1:6379/0}"
export PADDOCK_HOST_ID="${PADDOCK_HOST_ID:-$(hostname)}"

pids=()
start() {  # start NAME CMD...: run in the background, log to .paddock/log/NAME.log
    local name=$1; shift
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
start flower "$BIN/celery" --broker="$PADDOCK_REDIS_URL" flower --port="$FLOWER_PORT" --address=127.0.0.1
start web "$BIN/gunicorn" --bind "$BIND:$PORT" --worker-class gthread --workers 2 \
    --threads 64 --timeout 120 --graceful-timeout 10 'web.app:create_app()'

for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break
    sleep 0.2
done
for _ in $(seq 1 100); do
    [[ "$("$BIN/python" - <<PY 2>/dev/null
import redis; r = redis.Redis.from_url("$PADDOCK_REDIS_URL")
print(r.exists("pdk:host:$PADDOCK_HOST_ID"))
PY
)" == "1" ]] && break
    sleep 0.2
done

cat <<MSG

Paddock is running at http://localhost:$PORT  (host $PADDOCK_HOST_ID; Flower at http://localhost:$FLOWER_PORT)
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
