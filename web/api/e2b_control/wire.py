"""Between E2B's words and Paddock's: a create request as a template and a network policy,
list queries and their page tokens, and the answers' dictionaries (dumped by schemas.py)."""

from __future__ import annotations

import base64
import math
import urllib.parse
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from werkzeug.datastructures import MultiDict

from shared.egress import NetworkPolicy
from shared.errors import ValidationFailed
from shared.settings import Settings
from shared.store import Sandbox
from web.api.e2b_control.state import Record, Tokens
from web.sandboxes import Sandboxes

# The envd protocol version Paddock's answers claim: the SDK turns features on by it
# (e2b/envd/versions.py: 0.6.4 is the newest gate, recursive watch on network mounts), and
# refuses a sandbox below 0.1.0.
ENVD_VERSION = "0.6.4"
# E2B's template names that are Paddock templates under another name.
TEMPLATE_ALIASES = {"base": "standard"}
DEFAULT_TIMEOUT = 300  # seconds: the SDKs' default
DEFAULT_REFRESH = 60
STATES = ("running", "paused")
MAX_PAGE = 100
_MAX_TOKEN = 256


@dataclass(frozen=True)
class CreateSpec:
    template: str
    network: NetworkPolicy
    metadata: dict[str, str]
    env: dict[str, str]
    timeout: int
    public: bool
    internet: bool | None


def create_spec(body: dict[str, Any], sandboxes: Sandboxes) -> CreateSpec:
    """A validated ``NewSandbox`` body as what Paddock makes. Raises ValidationFailed for
    what Paddock cannot honour (auto-pause, volumes, MCP, IAM, DNS and proxy options, host
    names in allowOut) or a bad network."""
    unsupported = {
        "autoPause": body.get("autoPause") is True,
        "autoResume": _asks(body.get("autoResume")),
        "mcp": _asks(body.get("mcp")),
        "iam": _asks(body.get("iam")),
        "volumeMounts": bool(body.get("volumeMounts")),
    }
    network = body.get("network") or {}
    for name in ("dnsServers", "egressProxy", "maskRequestHost", "httpsPorts", "rules"):
        unsupported[f"network.{name}"] = _asks(network.get(name))
    refused = [name for name, asked in unsupported.items() if asked]
    if refused:
        raise ValidationFailed({refused[0]: "not supported by Paddock (yet)"})
    template = TEMPLATE_ALIASES.get(body["templateID"], body["templateID"])
    internet = body.get("allow_internet_access")
    policy = network_policy(internet, network, sandboxes)
    timeout = body.get("timeout")
    return CreateSpec(
        template=template,
        network=policy,
        metadata=dict(body.get("metadata") or {}),
        env=dict(body.get("envVars") or {}),
        timeout=DEFAULT_TIMEOUT if timeout is None else int(timeout),
        public=network.get("allowPublicTraffic") is not False,
        internet=internet,
    )


def network_policy(
    internet: bool | None, network: dict[str, Any], sandboxes: Sandboxes
) -> NetworkPolicy:
    """E2B's network options as Paddock's policy (shared.egress):

    - ``allow_internet_access: false`` is E2B's ``denyOut: ["0.0.0.0/0"]``: no network at all,
      or only ``allowOut`` when it lists something (allowing wins over denying in both);
    - ``allowOut``/``denyOut`` need the internet mode; without them and without
      ``allow_internet_access`` the operator's default mode applies.

    Raises ValidationFailed naming the E2B field (host names in allowOut are refused: the
    policy is IPv4 CIDRs)."""
    allow = list(network.get("allowOut") or [])
    deny = list(network.get("denyOut") or [])
    if internet is False:
        if not allow:
            return NetworkPolicy(mode="none")
        deny = ["0.0.0.0/0"]
    raw: dict[str, Any] | None = None
    if allow or deny or internet is not None:
        raw = {"mode": "internet", "allow_out": allow, "deny_out": deny}
    try:
        return sandboxes.network(raw, "network")
    except ValidationFailed as exc:
        renamed = {
            k.replace("network.allow_out", "network.allowOut").replace(
                "network.deny_out", "network.denyOut"
            ): v
            for k, v in exc.fields.items()
        }
        raise ValidationFailed(renamed) from None


def _asks(value: Any) -> bool:
    """Whether an optional E2B option asks for something (not absent, null, false or
    empty, nor an object whose values all are)."""
    if isinstance(value, dict):
        return any(_asks(v) for v in value.values())
    return bool(value)


# -- answers ------------------------------------------------------------------------------------
def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def created(
    sandbox: Sandbox, tokens: Tokens, domain: str, alias: str | None = None
) -> dict[str, Any]:
    return {
        "templateID": sandbox.template,
        "sandboxID": sandbox.sandbox_id,
        "alias": alias or sandbox.template,
        "clientID": sandbox.host_id,
        "envdVersion": ENVD_VERSION,
        "envdAccessToken": tokens.access,
        "trafficAccessToken": tokens.traffic,
        "domain": domain,
    }


def cpu_count(settings: Settings) -> int:
    return max(1, math.ceil(settings.sandbox_cpus))


def listed(
    settings: Settings, sandbox: Sandbox, record: Record, end: float | None
) -> dict[str, Any]:
    return {
        "templateID": sandbox.template,
        "alias": sandbox.template,
        "sandboxID": sandbox.sandbox_id,
        "clientID": sandbox.host_id,
        "startedAt": iso(sandbox.created_at),
        "endAt": iso(end if end is not None else sandbox.created_at),
        "cpuCount": cpu_count(settings),
        "memoryMB": settings.sandbox_memory >> 20,
        "diskSizeMB": settings.sandbox_disk >> 20,
        "metadata": record.metadata,
        "state": "paused" if record.paused else "running",
        "envdVersion": ENVD_VERSION,
    }


def detail(
    settings: Settings, sandbox: Sandbox, record: Record, end: float | None, domain: str
) -> dict[str, Any]:
    policy = sandbox.network
    return {
        **listed(settings, sandbox, record, end),
        "allowInternetAccess": policy.internet,
        "domain": domain,
        "network": {
            "allowPublicTraffic": record.public,
            "allowOut": list(policy.allow_out),
            "denyOut": list(policy.deny_out),
        },
    }


# -- listing ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ListQuery:
    states: tuple[str, ...]
    metadata: dict[str, str]
    started_after: float | None
    template: str | None
    descending: bool
    limit: int
    after: tuple[float, str] | None


def list_query(args: MultiDict[str, str], paged: bool) -> ListQuery:
    """``GET /v2/sandboxes`` (``paged``) or ``GET /sandboxes`` query parameters, as the SDK
    sends them: ``state=running,paused``, ``metadata`` an urlencoded ``k=v&...`` of quoted
    keys and values, ``startedAfter`` ISO 8601, ``order`` asc|desc, ``limit``, ``nextToken``.
    Raises ValidationFailed."""
    states: tuple[str, ...] = STATES
    raw_state = args.get("state")
    if paged and raw_state:
        states = tuple(s for s in raw_state.split(",") if s)
        bad = [s for s in states if s not in STATES]
        if bad or len(states) > len(STATES):
            raise ValidationFailed({"state": f"each must be one of {', '.join(STATES)}"})
    elif not paged:
        states = ("running",)
    metadata = _metadata_filter(args.get("metadata") or "")
    started_after = None
    if paged and args.get("startedAfter"):
        try:
            started_after = datetime.fromisoformat(args["startedAfter"]).timestamp()
        except ValueError:
            raise ValidationFailed({"startedAfter": "not an ISO 8601 date-time"}) from None
    order = args.get("order") or "desc"
    if order not in ("asc", "desc"):
        raise ValidationFailed({"order": "must be asc or desc"})
    limit = MAX_PAGE
    if paged and args.get("limit") is not None:
        try:
            limit = int(args["limit"])
        except ValueError:
            raise ValidationFailed({"limit": "not an integer"}) from None
        if not 1 <= limit <= MAX_PAGE:
            raise ValidationFailed({"limit": f"must be between 1 and {MAX_PAGE}"})
    after = _read_token(args.get("nextToken")) if paged else None
    template = args.get("template") if paged else None
    if template is not None:
        template = TEMPLATE_ALIASES.get(template, template)
    return ListQuery(states, metadata, started_after, template, order == "desc", limit, after)


def _metadata_filter(raw: str) -> dict[str, str]:
    if len(raw) > 16384:
        raise ValidationFailed({"metadata": "too long"})
    pairs = urllib.parse.parse_qsl(raw, keep_blank_values=True)
    if len(pairs) > 64:
        raise ValidationFailed({"metadata": "at most 64 pairs"})
    return {urllib.parse.unquote(k): urllib.parse.unquote(v) for k, v in pairs}


def matches(q: ListQuery, sandbox: Sandbox, record: Record) -> bool:
    state = "paused" if record.paused else "running"
    if state not in q.states:
        return False
    if q.template is not None and sandbox.template != q.template:
        return False
    if q.started_after is not None and sandbox.created_at < q.started_after:
        return False
    return all(record.metadata.get(k) == v for k, v in q.metadata.items())


def page(q: ListQuery, items: list[tuple[Sandbox, Any]]) -> tuple[list[Any], str | None]:
    """One page of ``(sandbox, answer)`` items in start order, after the token's place, and
    the token of the next page (None: this is the last)."""
    items = sorted(items, key=lambda i: (i[0].created_at, i[0].sandbox_id), reverse=q.descending)
    if q.after is not None:
        after = q.after
        if q.descending:
            items = [i for i in items if (i[0].created_at, i[0].sandbox_id) < after]
        else:
            items = [i for i in items if (i[0].created_at, i[0].sandbox_id) > after]
    chosen = items[: q.limit]
    if len(items) <= q.limit:
        return [i[1] for i in chosen], None
    last = chosen[-1][0]
    token = f"{last.created_at!r}:{last.sandbox_id}".encode()
    return [i[1] for i in chosen], base64.urlsafe_b64encode(token).decode().rstrip("=")


def _read_token(raw: str | None) -> tuple[float, str] | None:
    if not raw:
        return None
    if len(raw) > _MAX_TOKEN:
        raise ValidationFailed({"nextToken": "not a token this API gave"})
    try:
        text = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode("ascii")
        at, _, sandbox_id = text.partition(":")
        when = float(at)
    except ValueError:
        raise ValidationFailed({"nextToken": "not a token this API gave"}) from None
    if not sandbox_id or not math.isfinite(when):
        raise ValidationFailed({"nextToken": "not a token this API gave"})
    return when, sandbox_id
