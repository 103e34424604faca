"""Every Redis key and channel name Paddock uses, built in one place."""

from __future__ import annotations

PREFIX = "pdk"


def host(host_id: str) -> str:
    """Hash: a host's heartbeat (capacity, templates, catalog JSON, updated). Expires when the
    host dies."""
    return f"{PREFIX}:host:{host_id}"


def hosts() -> str:
    """Set of host ids that have ever heartbeated; dead ones are pruned by readers."""
    return f"{PREFIX}:hosts"


def hosts_seen() -> str:
    """Hash: host id -> time of its last heartbeat. Outlives the heartbeat's own key, so the
    reaper can tell how long a host has been silent (workers/control/reaper.py lose_dead_hosts)."""
    return f"{PREFIX}:hosts:seen"


def hosts_group() -> str:
    """Hash: host id -> the placement group it was last indexed in (shared/placement.py).
    Outlives the heartbeat's own key, so a dead host can still be taken out of its group."""
    return f"{PREFIX}:hosts:group"


def place_group(group_id: str) -> str:
    """Sorted set: the live hosts of one placement group (same templates, same egress state),
    scored by free slots (shared/placement.py). No TTL: dead hosts are pruned by placement
    and by every re-index of them."""
    return f"{PREFIX}:place:group:{group_id}"


def place_template(template: str) -> str:
    """Set: the placement groups whose hosts offer ``template`` (shared/placement.py); an
    empty group is pruned by placement."""
    return f"{PREFIX}:place:tpl:{template}"


def place_warm(kind: str) -> str:
    """Set: hosts with ready warm sandboxes of one ``template:mode`` kind (shared/placement.py);
    written with ``warm_kind`` in the same scripts."""
    return f"{PREFIX}:place:warm:{kind}"


def host_sandboxes(host_id: str) -> str:
    """Set of sandbox ids placed on a host (its used capacity)."""
    return f"{PREFIX}:host:{host_id}:sandboxes"


def sandbox(sandbox_id: str) -> str:
    """Hash: one sandbox (tenant, host, template, status, created_at)."""
    return f"{PREFIX}:sbx:{sandbox_id}"


def e2b_sandbox(sandbox_id: str) -> str:
    """Hash: what the E2B control API keeps of a sandbox (metadata, sealed env vars and access
    token, its digest, paused, the timeout asked). Expires on its own after the sandbox's
    maximum lifetime (web/api/e2b_control/state.py)."""
    return f"{PREFIX}:e2b:{sandbox_id}"


def sandbox_processes(sandbox_id: str) -> str:
    """Set of process ids started in a sandbox."""
    return f"{PREFIX}:sbx:{sandbox_id}:procs"


def tenant_sandboxes(tenant_id: str) -> str:
    """Set of a tenant's sandbox ids."""
    return f"{PREFIX}:tenant:{tenant_id}:sandboxes"


def idle_index() -> str:
    """Sorted set: sandbox id scored by the time of the last request that named it."""
    return f"{PREFIX}:idle"


def expiry_index() -> str:
    """Sorted set: sandbox id scored by the end of its maximum lifetime."""
    return f"{PREFIX}:expiry"


def process(sandbox_id: str, process_id: str) -> str:
    """Hash: one process (cmd, status, exit_code, pid inside the sandbox)."""
    return f"{PREFIX}:proc:{sandbox_id}:{process_id}"


def envd_processes(sandbox_id: str) -> str:
    """Hash: the envd protocol's processes of a sandbox by pid (``p:<pid>`` -> JSON with the
    process id and tag, ``d:<pid>`` -> when a stream delivered its end, ``i:<process id>`` and
    ``t:<tag>`` -> a pid, ``seq`` -> the pid counter, ``c`` -> the sweep's cursor). Deleted
    with the sandbox; expires a while after its maximum lifetime (web/api/envd/table.py)."""
    return f"{PREFIX}:envd:{sandbox_id}:procs"


def process_given_up(sandbox_id: str, process_id: str) -> str:
    """String (expires): the web stopped waiting for this process's start and told its client
    so; a start delivered later must not run it."""
    return f"{PREFIX}:gaveup:{sandbox_id}:{process_id}"


def output(sandbox_id: str, process_id: str) -> str:
    """Stream: a process's output lines, then one end entry."""
    return f"{PREFIX}:out:{sandbox_id}:{process_id}"


def reply(task_id: str) -> str:
    """List: the one reply of a task the web side waits for (BLPOP)."""
    return f"{PREFIX}:reply:{task_id}"


def task_log(sandbox_id: str) -> str:
    """List: which host ran each task of a sandbox (audit; capped)."""
    return f"{PREFIX}:sbx:{sandbox_id}:tasklog"


def api_key(digest: str) -> str:
    """Hash: the API key with this SHA-256 digest (tenant, revoked)."""
    return f"{PREFIX}:apikey:{digest}"


def api_key_id(key_id: str) -> str:
    """String: the digest of the API key with this public id."""
    return f"{PREFIX}:apikeyid:{key_id}"


def tenant_api_keys(tenant_id: str) -> str:
    """Set: the key ids of a tenant's API keys (revoked ones included)."""
    return f"{PREFIX}:tenant:{tenant_id}:apikeys"


def user(user_id: str) -> str:
    """Hash: one account (email, created_at). One user is one tenant."""
    return f"{PREFIX}:user:{user_id}"


def user_by_email(email: str) -> str:
    """String: the user id of the account with this (lower-cased) email."""
    return f"{PREFIX}:email:{email}"


def otp(email: str) -> str:
    """Hash: the pending login code of an email (HMAC, tries); expires with the code."""
    return f"{PREFIX}:otp:{email}"


def rate(bucket: str, subject: str, window: int) -> str:
    """Counter for one rate-limit window; expires with the window."""
    return f"{PREFIX}:rl:{bucket}:{subject}:{window}"


def secret_bundle(tenant_id: str, name: str) -> str:
    """Hash: a secret bundle (keys, version, dates, encrypted values)."""
    return f"{PREFIX}:secret:{tenant_id}:{name}"


def tenant_secrets(tenant_id: str) -> str:
    """Set: the names of a tenant's secret bundles."""
    return f"{PREFIX}:tenant:{tenant_id}:secrets"


def secret_users(tenant_id: str, name: str) -> str:
    """Set: the ids of running agent sessions that use a bundle."""
    return f"{PREFIX}:secret:{tenant_id}:{name}:sessions"


def session(session_id: str) -> str:
    """Hash: an agent session (tenant, sandbox, agent, llm, secrets, state, expires_at)."""
    return f"{PREFIX}:ses:{session_id}"


def session_events(session_id: str) -> str:
    """Stream: the session's events; entry id ``<seq>-0``, field ``e`` the JSON frame."""
    return f"{PREFIX}:ses:{session_id}:events"


def session_seq(session_id: str) -> str:
    """Counter: the last seq given to an event of the session."""
    return f"{PREFIX}:ses:{session_id}:seq"


def session_jobs(session_id: str) -> str:
    """List: jobs (prompts) waiting to run, in order (JSON {task_id, prompt}; the key keeps
    the wire's word "tasks" so queued data stays valid)."""
    return f"{PREFIX}:ses:{session_id}:tasks"


def session_conversation(session_id: str) -> str:
    """String: the deictic agent's conversation so far (JSON), continued by the next task."""
    return f"{PREFIX}:ses:{session_id}:conversation"


def session_runner(session_id: str) -> str:
    """String with TTL: held by the one worker thread running the session's tasks."""
    return f"{PREFIX}:ses:{session_id}:runner"


def session_cancel(session_id: str) -> str:
    """String: the id of the task asked to stop (set by cancel, cleared by the runner)."""
    return f"{PREFIX}:ses:{session_id}:cancel"


def session_sockets(session_id: str) -> str:
    """Sorted set: open WebSocket connections of a session, scored by their last beat."""
    return f"{PREFIX}:ses:{session_id}:sockets"


def tenant_sessions(tenant_id: str) -> str:
    """Set: a tenant's agent session ids."""
    return f"{PREFIX}:tenant:{tenant_id}:sessions"


def session_expiry() -> str:
    """Sorted set: session id scored by its expires_at."""
    return f"{PREFIX}:ses-expiry"


def sandbox_output_bytes(sandbox_id: str) -> str:
    """Counter: bytes of output kept in Redis for all processes of a sandbox."""
    return f"{PREFIX}:sbx:{sandbox_id}:outbytes"


def tenant_output_bytes(tenant_id: str) -> str:
    """Counter: bytes of output kept in Redis for all sandboxes of a tenant."""
    return f"{PREFIX}:tenant:{tenant_id}:outbytes"


def sandbox_running(sandbox_id: str) -> str:
    """Set: ids of a sandbox's processes that are running (the concurrent-process quota)."""
    return f"{PREFIX}:sbx:{sandbox_id}:running"


def slots(kind: str, tenant_id: str) -> str:
    """Sorted set: a tenant's held slots of one kind (waits, sockets, session-creates), scored
    by expiry."""
    return f"{PREFIX}:slots:{kind}:{tenant_id}"


def process_done(sandbox_id: str, process_id: str) -> str:
    """Stream: one entry once the process has ended; waiters block on it (no output read)."""
    return f"{PREFIX}:done:{sandbox_id}:{process_id}"


def session_output_bytes(session_id: str) -> str:
    """Counter: bytes of command output an agent session has streamed into its history."""
    return f"{PREFIX}:ses:{session_id}:outbytes"


def tenant_stream_bytes(tenant_id: str, hour: int) -> str:
    """Counter: bytes of agent-session output a tenant streamed in one hour (expires)."""
    return f"{PREFIX}:tenant:{tenant_id}:streambytes:{hour}"


def tick(name: str, slot: int) -> str:
    """String (expires): which control worker claimed tick ``slot`` of periodic task ``name``
    (SET NX: one claim per tick across every control worker)."""
    return f"{PREFIX}:tick:{name}:{slot}"


def ticks() -> str:
    """Hash: per periodic task, how many ticks ran (``<name>``) and when the last did
    (``<name>:at``)."""
    return f"{PREFIX}:ticks"


def warm(host_id: str) -> str:
    """Set: the ids of a host's warm sandboxes ready to be claimed, of every template
    (workers/host/pool.py). Each is also in ``warm_kind`` and ``host_sandboxes`` (a warm
    sandbox holds one of its host's slots)."""
    return f"{PREFIX}:warm:{host_id}"


def warm_kind(host_id: str, template: str, mode: str) -> str:
    """Set: a host's ready warm sandboxes of one template and network mode (what placement
    pops a claim from, shared/placement.py PLACE)."""
    return f"{warm(host_id)}:{template}:{mode}"


def watch(watcher_id: str) -> str:
    """Hash: one directory watch (sandbox, tenant, host, path, recursive, state, reason, its
    host's last sign of life, what its reader consumed). Expires when nobody reads it for a
    while (shared/watches.py)."""
    return f"{PREFIX}:watch:{watcher_id}"


def watch_events(watcher_id: str) -> str:
    """Stream: a watch's events (capped in length), then one end entry. Expires with
    ``watch``."""
    return f"{PREFIX}:watch:{watcher_id}:events"


def sandbox_watches(sandbox_id: str) -> str:
    """Sorted set: a sandbox's watcher ids scored by when each expires unread (ms)."""
    return f"{PREFIX}:sbx:{sandbox_id}:watches"


def tenant_watches(tenant_id: str) -> str:
    """Sorted set: a tenant's watcher ids scored by when each expires unread (ms)."""
    return f"{PREFIX}:tenant:{tenant_id}:watches"


def terminal_ticket(digest: str) -> str:
    """String: a terminal socket's one-use ticket (by its sha256), the tenant and sandbox it
    opens (web/terminal.py). Expires within a minute; taken with GETDEL."""
    return f"{PREFIX}:term-ticket:{digest}"
