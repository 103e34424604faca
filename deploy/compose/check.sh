#!/usr/bin/env bash
# `make compose-check`: prove compose.yaml runs on this machine, with no registry, end to end.
# Installs Debian's docker-compose if no Compose is here, builds the images (FROM the local
# paddock/base, which `make images` made), starts the stack as a project of its own with
# throwaway secrets on free loopback ports and auth on, then deploy/compose/smoke.py logs in,
# makes an API key, creates a sandbox and runs a process in it through the API. Whatever
# happens, it then removes the containers, networks and volumes it created (the images stay, as
# a cache) and the storage mount it made.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
PY="${PY:-$ROOT/.venv/bin/python}"
# A project name of its own: never touches a compose stack the operator runs from this file.
PROJECT="paddockcheck$$"
HOST_ID="compose-check-$$"
say() { echo "compose-check: $*"; }

if command -v docker-compose >/dev/null 2>&1; then
    COMPOSE=(docker-compose)
elif docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
else
    say "installing docker-compose (Debian)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -qq update
    apt-get -qq install -y --no-install-recommends docker-compose >/dev/null
    COMPOSE=(docker-compose)
fi
docker image inspect "${PADDOCK_BASE_IMAGE:-paddock/base:latest}" >/dev/null 2>&1 \
    || { say "no ${PADDOCK_BASE_IMAGE:-paddock/base:latest}: run make images first" >&2; exit 1; }

free_port() {
    "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Everything compose.yaml reads, for this run only (no .env file is read or written).
PADDOCK_PORT="$(free_port)"
PADDOCK_REDIS_PORT="$(free_port)"
export PADDOCK_PORT PADDOCK_REDIS_PORT
export PADDOCK_FLOWER_PORT="$(free_port)"
export PADDOCK_RELAY_PORT="$(free_port)"
export PADDOCK_BIND=127.0.0.1
export PADDOCK_AUTH=on
export PADDOCK_HOST_ID="$HOST_ID"
export PADDOCK_WORKER_REDIS_URL="redis://127.0.0.1:$PADDOCK_REDIS_PORT/0"
export PADDOCK_REDIS_MAXMEMORY=256mb
# Containers cannot get more open files than the engine's hard limit where it may not raise it.
engine_nofile="$(awk '/^Max open files/ {print $5}' "/proc/$(cat /var/run/docker.pid 2>/dev/null || echo self)/limits" 2>/dev/null || true)"
if [[ "$engine_nofile" =~ ^[0-9]+$ && "$engine_nofile" -lt 65536 ]]; then
    export PADDOCK_NOFILE="$engine_nofile"
fi
export PADDOCK_JWT_SECRET="$("$PY" -c 'import secrets; print(secrets.token_hex(32))')"
export PADDOCK_SECRET_KEY="$("$PY" -m shared.crypto)"
export PADDOCK_FLOWER_USER=check
export PADDOCK_FLOWER_PASSWORD="$("$PY" -c 'import secrets; print(secrets.token_urlsafe(24))')"
# A network that inspects TLS: the builds and the sandboxes trust what this host trusts.
if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
    PADDOCK_BUILD_CA_CERTS="$(cat /usr/local/share/ca-certificates/*.crt)"
    export PADDOCK_BUILD_CA_CERTS
fi
if [[ -r /etc/ssl/certs/ca-certificates.crt ]]; then
    export PADDOCK_SANDBOX_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
fi
# The sandbox storage directory: the same path inside the worker and out, with shared mount
# propagation (a bind mount of itself made shared, where / is not, as without systemd).
STORAGE="$ROOT/.paddock/compose-check/$PROJECT"
mkdir -p "$STORAGE"
export PADDOCK_STORAGE_DIR="$STORAGE"
mounted=0

compose() { "${COMPOSE[@]}" -p "$PROJECT" -f "$ROOT/compose.yaml" "$@"; }

cleanup() {
    local rc=$?
    set +e
    if [[ "$rc" -ne 0 ]]; then
        say "failed; the services' last log lines:"
        compose logs --no-color --tail=40 2>&1 | tail -n 120
    fi
    # Sandboxes left running (a failed smoke) first, each marked with the host id: a worker
    # that stops with none left removes its egress network and iptables rules itself, but
    # keeps both while sandboxes run behind them.
    docker ps -aq --filter "label=paddock.host=$HOST_ID" | xargs -r docker rm -f >/dev/null 2>&1
    compose down --volumes --remove-orphans --timeout 30 >/dev/null 2>&1
    docker ps -aq --filter "label=paddock.host=$HOST_ID" | xargs -r docker rm -f >/dev/null 2>&1
    docker network ls -q --filter "label=paddock.host=$HOST_ID" \
        | xargs -r docker network rm >/dev/null 2>&1
    grep -F " $STORAGE/" /proc/self/mounts | cut -d' ' -f2 | sort -r | xargs -r -n1 umount -l
    if [[ "$mounted" -eq 1 ]]; then umount -l "$STORAGE"; fi
    rm -rf "$STORAGE"
    rmdir "$ROOT/.paddock/compose-check" 2>/dev/null
    say "cleaned up (project $PROJECT)"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if ! grep -q ' shared:' <(awk -v d="$STORAGE" '$5 == d' /proc/self/mountinfo); then
    mount --bind "$STORAGE" "$STORAGE"
    mounted=1
    mount --make-rshared "$STORAGE"
fi

start=$SECONDS
say "building and starting project $PROJECT (web on 127.0.0.1:$PADDOCK_PORT)"
compose build --quiet >/dev/null
compose up -d
say "up after $((SECONDS - start)) s; waiting for the web's health check"
healthy=0
for _ in $(seq 1 90); do
    if curl -fsS "http://127.0.0.1:$PADDOCK_PORT/health" >/dev/null 2>&1; then
        healthy=1
        break
    fi
    sleep 1
done
[[ "$healthy" -eq 1 ]] || { say "the web did not answer /health within 90 s" >&2; exit 1; }
"$PY" "$ROOT/deploy/compose/smoke.py" "http://127.0.0.1:$PADDOCK_PORT" \
    "${COMPOSE[@]}" -p "$PROJECT" -f "$ROOT/compose.yaml" logs --no-color control
say "passed in $((SECONDS - start)) s"
