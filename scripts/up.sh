#!/usr/bin/env bash
# Run the whole stack in the foreground (called by `make up` after bootstrap and images).
# Ctrl-C stops everything this script started — and the Docker engine and Redis only if
# bootstrap started them (their pid files in .paddock/run) — and nothing else.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BIN="$ROOT/.venv/bin"
LOG="$ROOT/.paddock/log"
RUN="$ROOT/.paddock/run"
mkdir -p "$LOG" "$RUN"

PORT="${PADDOCK_PORT:-3000}"

# Secrets made once for this checkout (0600), unless the environment already has them.
SECRETS="$ROOT/.paddock/secrets.env"
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
    "$@" >>"$LOG/$name.log" 2>&1 &
    pids+=($!)
    echo "up: $name started (pid $!, log .paddock/log/$name.log)"
}

stopping=0
stop_all() {
    [[ $stopping -eq 1 ]] && return
    stopping=1
    echo
    echo "up: stopping..."
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
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
interrupted=0
trap 'interrupted=1; stop_all; exit 0' INT TERM
trap stop_all EXIT

start worker-"$PADDOCK_HOST_ID" "$BIN/python" -m workers host
start control "$BIN/python" -m workers control
start flower "$BIN/celery" --broker="$PADDOCK_REDIS_URL" flower --port=5555 --address=127.0.0.1
start web "$BIN/gunicorn" --bind "$BIND:$PORT" --worker-class gthread --workers 2 \
    --threads 64 --timeout 0 'web.app:create_app()'

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

Paddock is running at http://localhost:$PORT  (host $PADDOCK_HOST_ID; Flower at http://localhost:5555)
Auth: $( [[ "$PADDOCK_AUTH" == "off" ]] && echo "off — /sessions acts as the local tenant; listening on 127.0.0.1 only (PADDOCK_AUTH=on to require API keys)" || echo "on — API keys required on /sessions and /v1" )
Mail: $( [[ -z "${PADDOCK_SMTP_URL:-}" ]] && echo "LOG MAILER (dev mode): login codes are written to .paddock/log/control.log — set PADDOCK_SMTP_URL to send real mail" || echo "SMTP via PADDOCK_SMTP_URL" )

Try it:
  curl -s -X POST http://localhost:$PORT/sessions -H 'Content-Type: application/json' -d '{"envID": "Nodejs"}'
  curl -s -X POST 'http://localhost:$PORT/sessions/<id>/processes?wait=true' \\
       -H 'Content-Type: application/json' -d '{"cmd": "echo 22", "rootdir": "/"}'

Logs in .paddock/log/. Press Ctrl-C to stop.
MSG

# Exit (and stop the rest) as soon as any component dies.
wait -n "${pids[@]}" || true
sleep 0.3  # a Ctrl-C reaches the children too; let our own trap win the race
[[ $interrupted -eq 0 ]] && echo "up: a component exited; see .paddock/log/"
