#!/usr/bin/env bash
# Run the whole stack in the foreground (called by `make up` after bootstrap and images), under
# supervisord: a component that dies is restarted, and nothing else is touched.
# Ctrl-C (or SIGTERM) stops everything this script started — and the Docker engine and Redis
# (and the broker's Redis) only if bootstrap started them (their pid files in .paddock/run) —
# and nothing else.
# `scripts/up.sh --secrets-only` makes the secrets file and exits (for the systemd units).
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
# `make install-service` only needs the secrets file the systemd units read.
if [[ "${1:-}" == "--secrets-only" ]]; then
    echo "up: secrets in $SECRETS"
    exit 0
fi
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

# --- the supervisor ------------------------------------------------------------------------------
# supervisord (from the venv) runs the components: one that dies is logged and started again,
# at once and then with a growing back-off (1 s, 2 s, 3 s, ...) while it keeps failing within
# STARTSECS; Redis and dockerd are not its programs, so nothing a component does stops them.
# Its files live in a private dir: the config, its pid, its control socket and Flower's login.
SUP="$DATA/supervisor"
mkdir -p "$SUP"
chmod 700 "$SUP"
CONF="$SUP/supervisord.conf"
SOCK="$SUP/supervisor.sock"
USER_UMASK="$(umask)"

ini() {  # a value for the config: supervisord expands %(...)s, so a literal % is doubled
    local v=$1
    printf '%s' "${v//%/%%}"
}
cmd() {  # a command line for the config: each word quoted for supervisord's shlex split
    local out="" w
    for w in "$@"; do out+="$(ini "$(printf '%q' "$w")") "; done
    printf '%s' "${out% }"
}
private_log() {  # private_log FILE: create it 0600 before a process appends to it
    (umask 077 && : >>"$1")
    chmod 600 "$1"
}
program() {  # program NAME CMD...: a supervised component logging to .paddock/log/NAME.log
    local name=$1; shift
    private_log "$LOG/$name.log"
    cat <<INI

[program:$name]
command=$(cmd "$@")
directory=$(ini "$ROOT")
umask=$USER_UMASK
autostart=true
autorestart=true
startsecs=5
startretries=100
stopsignal=TERM
stopwaitsecs=15
stopasgroup=true
killasgroup=true
redirect_stderr=true
stdout_logfile=$(ini "$LOG/$name.log")
stdout_logfile_maxbytes=100MB
stdout_logfile_backups=3
INI
}

# Flower's login reaches Flower alone, through its environment (FLOWER_BASIC_AUTH), never an
# argv that `ps` shows: a private file its launcher reads (the secrets file is no more private).
FLOWER_AUTH="$SUP/flower.auth"
(umask 077 && printf '%s:%s\n' "${PADDOCK_FLOWER_USER:-paddock}" "$PADDOCK_FLOWER_PASSWORD" \
    >"$FLOWER_AUTH")
WORKER="worker-$PADDOCK_HOST_ID"
NAMES=("$WORKER" control flower web)
(umask 077 && : >"$CONF")
chmod 600 "$CONF"
(
    # The socket path must fit a sockaddr_un (108 bytes); a deeper data dir goes without
    # `supervisorctl`, which is a convenience.
    if [[ ${#SOCK} -lt 100 ]]; then
        printf '[unix_http_server]\nfile=%s\nchmod=0700\n\n' "$(ini "$SOCK")"
        printf '[supervisorctl]\nserverurl=unix://%s\n\n' "$(ini "$SOCK")"
        printf '[rpcinterface:supervisor]\n'
        printf 'supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n'
    fi
    cat <<INI
[supervisord]
nodaemon=true
logfile=$(ini "$LOG/supervisord.log")
logfile_maxbytes=50MB
logfile_backups=3
pidfile=$(ini "$SUP/supervisord.pid")
childlogdir=$(ini "$LOG")
directory=$(ini "$ROOT")
minfds=$(ulimit -n)
INI
    program "$WORKER" "$BIN/python" -m workers host
    program control "$BIN/python" -m workers control
    # shared.broker is `celery` with Paddock's app (Redis password, TLS options from the env).
    program flower /bin/bash -c \
        'IFS= read -r FLOWER_BASIC_AUTH <"$0" && export FLOWER_BASIC_AUTH && exec "$@"' \
        "$FLOWER_AUTH" "$BIN/python" -m shared.broker flower --port="$FLOWER_PORT" \
        --address=127.0.0.1
    # Everything but the address is in web/gunicorn_conf.py (gevent workers: a waiting client
    # costs a greenlet, not a thread).
    program web "$BIN/gunicorn" -c python:web.gunicorn_conf --bind "$BIND:$PORT"
    # A component killed from outside leaves its children (gunicorn's workers, say):
    # this listener kills the rest of its process group before it runs twice.
    private_log "$LOG/reap-group.log"
    cat <<INI

[eventlistener:reap-group]
command=$(cmd /bin/bash "$ROOT/deploy/supervisor/reap-group.sh")
events=PROCESS_STATE_EXITED
autorestart=true
stdout_logfile=NONE
stderr_logfile=$(ini "$LOG/reap-group.log")
stderr_logfile_maxbytes=10MB
stderr_logfile_backups=1
INI
) >"$CONF"

stopping=0
stop_all() {
    [[ $stopping -eq 1 ]] && return
    stopping=1
    echo
    echo "up: stopping..."
    # supervisord stops each component's whole process group (TERM, then KILL after 15 s).
    if kill -0 "$sup" 2>/dev/null; then
        kill -TERM "$sup" 2>/dev/null || true
        for _ in $(seq 1 700); do kill -0 "$sup" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$sup" 2>/dev/null || true
    fi
    wait "$sup" 2>/dev/null || true
    rm -f "$FLOWER_AUTH"
    for daemon in redis broker-redis dockerd; do
        if [[ -f "$RUN/$daemon.pid" ]]; then
            pid=$(cat "$RUN/$daemon.pid")
            if kill -0 "$pid" 2>/dev/null; then
                echo "up: stopping $daemon (pid $pid, started by bootstrap)"
                kill -TERM "$pid" 2>/dev/null || true
                for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            fi
            rm -f "$RUN/$daemon.pid"
        fi
    done
    echo "up: stopped"
}

# Made with umask 077, so supervisord's own files (log, pid, socket, rotated logs) are private;
# each component gets the user's umask back (umask= above: sandbox files stay usable by uid 1000).
umask 077
"$BIN/supervisord" -c "$CONF" </dev/null &
sup=$!
umask "$USER_UMASK"
trap 'stop_all; exit 0' INT TERM
trap stop_all EXIT
for name in "${NAMES[@]}"; do
    echo "up: $name under supervisord (log $LOG/$name.log)"
done

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

Components restart when they die (supervisord; log $LOG/supervisord.log$( [[ ${#SOCK} -lt 100 ]] && printf '%s' "; $BIN/supervisorctl -c $CONF status" )).
Logs in $LOG/. Press Ctrl-C to stop.
MSG

# supervisord runs until Ctrl-C/SIGTERM (the traps above); should it die itself, the EXIT trap
# still stops what bootstrap started.
wait "$sup" || true
echo "up: supervisord exited (log: $LOG/supervisord.log)"
