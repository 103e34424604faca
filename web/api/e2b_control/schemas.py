"""Marshmallow schemas of the E2B control API: request bodies (``load``) and responses
(``dump``), with the field names of E2B's OpenAPI document (what the official SDKs send and
read). The OpenAPI paths (web/api/e2b_control/openapi.py) are generated from these classes.

Request bodies ignore keys they do not know (as E2B's own API does): a newer SDK adds optional
fields, and refusing them would break every create. Fields Paddock cannot honour are refused
with a 400 by the route when they ask for something (``autoPause: true``, volume mounts...).
"""

from __future__ import annotations

from marshmallow import EXCLUDE, Schema, fields, validate

from shared.egress import MAX_ENTRIES

# E2B's limits where it has them, Paddock's where it has none: every request is bounded.
MAX_TIMEOUT = 10**7  # seconds; the sandbox's maximum lifetime caps it anyway
MAX_METADATA = 64
MAX_ENV = 256
MAX_REFRESH = 3600

_NO_NUL = validate.Regexp(r"^[^\x00]*$", error="must not contain NUL characters")
_ENV_NAME = validate.Regexp(r"^[A-Za-z_][A-Za-z0-9_]{0,255}$", error="not a variable name")
_TIMEOUT = validate.Range(min=0, max=MAX_TIMEOUT)


class _Request(Schema):
    class Meta:
        unknown = EXCLUDE


# -- requests -----------------------------------------------------------------------------------
class SandboxNetworkConfig(_Request):
    allowPublicTraffic = fields.Boolean(
        allow_none=True,
        load_default=None,
        metadata={"description": "false: the sandbox's ports need its trafficAccessToken"},
    )
    # Bounded here, as in the v1 schema: a list of a million entries is refused before it is
    # parsed into a policy.
    allowOut = fields.List(
        fields.String(validate=validate.Length(max=64)),
        load_default=list,
        validate=validate.Length(max=MAX_ENTRIES),
        metadata={"description": "IPv4 CIDRs or addresses let through (wins over denyOut)"},
    )
    denyOut = fields.List(
        fields.String(validate=validate.Length(max=64)),
        load_default=list,
        validate=validate.Length(max=MAX_ENTRIES),
        metadata={"description": "IPv4 CIDRs refused"},
    )
    # E2B options Paddock has no counterpart for: refused when they ask for anything.
    dnsServers = fields.List(fields.Raw(), load_default=None, allow_none=True)
    egressProxy = fields.Raw(load_default=None, allow_none=True)
    maskRequestHost = fields.Raw(load_default=None, allow_none=True)
    httpsPorts = fields.List(fields.Raw(), load_default=None, allow_none=True)
    rules = fields.Raw(load_default=None, allow_none=True)


class NewSandbox(_Request):
    """``POST /sandboxes`` and ``POST /v2/sandboxes``."""

    templateID = fields.String(
        required=True,
        validate=validate.Length(min=1, max=128),
        metadata={"description": "A Paddock template; `base` (the SDK's default) is `standard`"},
    )
    timeout = fields.Integer(
        load_default=None,
        allow_none=True,
        validate=_TIMEOUT,
        metadata={"description": "Seconds until the sandbox is removed (default 300)"},
    )
    metadata = fields.Dict(
        keys=fields.String(validate=[validate.Length(min=1, max=256), _NO_NUL]),
        values=fields.String(validate=[validate.Length(max=4096), _NO_NUL]),
        load_default=dict,
        allow_none=True,
        validate=validate.Length(max=MAX_METADATA),
    )
    envVars = fields.Dict(
        keys=fields.String(validate=_ENV_NAME),
        values=fields.String(validate=[validate.Length(max=1 << 16), _NO_NUL]),
        load_default=dict,
        allow_none=True,
        validate=validate.Length(max=MAX_ENV),
    )
    allow_internet_access = fields.Boolean(load_default=None, allow_none=True)
    network = fields.Nested(SandboxNetworkConfig, load_default=None, allow_none=True)
    secure = fields.Boolean(
        load_default=None, allow_none=True, metadata={"description": "Ignored: always secured"}
    )
    autoPause = fields.Boolean(
        load_default=False, metadata={"description": "true is refused: not supported yet"}
    )
    autoPauseMemory = fields.Boolean(load_default=None, allow_none=True)
    autoResume = fields.Raw(load_default=None, allow_none=True)
    mcp = fields.Raw(load_default=None, allow_none=True)
    iam = fields.Raw(load_default=None, allow_none=True)
    volumeMounts = fields.List(fields.Raw(), load_default=None, allow_none=True)


class SandboxTimeoutRequest(_Request):
    timeout = fields.Integer(required=True, validate=_TIMEOUT)


class SandboxRefreshRequest(_Request):
    duration = fields.Integer(
        load_default=None, allow_none=True, validate=validate.Range(min=0, max=MAX_REFRESH)
    )


class ConnectSandbox(_Request):
    """``POST /sandboxes/{id}/connect`` (and ``/v2/...``): ``timeout`` from now."""

    timeout = fields.Integer(load_default=None, allow_none=True, validate=_TIMEOUT)
    memory = fields.Boolean(load_default=None, allow_none=True)


class ResumedSandbox(_Request):
    timeout = fields.Integer(load_default=None, allow_none=True, validate=_TIMEOUT)
    autoPause = fields.Boolean(load_default=False)
    memory = fields.Boolean(load_default=None, allow_none=True)


class SandboxPauseRequest(_Request):
    memory = fields.Boolean(load_default=None, allow_none=True)
    requireHealthyGuest = fields.Boolean(load_default=None, allow_none=True)


# -- responses ----------------------------------------------------------------------------------
class Sandbox(Schema):
    """What create and connect answer: what the SDK needs to reach the sandbox later."""

    templateID = fields.String(required=True)
    sandboxID = fields.String(required=True)
    alias = fields.String(required=True)
    clientID = fields.String(required=True)
    envdVersion = fields.String(required=True)
    envdAccessToken = fields.String(
        required=True, metadata={"description": "Send as X-Access-Token to the sandbox"}
    )
    trafficAccessToken = fields.String(required=True, allow_none=True)
    domain = fields.String(required=True, allow_none=True)


class _Listed(Schema):
    templateID = fields.String(required=True)
    alias = fields.String(required=True)
    sandboxID = fields.String(required=True)
    clientID = fields.String(required=True)
    startedAt = fields.String(required=True, metadata={"format": "date-time"})
    endAt = fields.String(required=True, metadata={"format": "date-time"})
    cpuCount = fields.Integer(required=True)
    memoryMB = fields.Integer(required=True)
    diskSizeMB = fields.Integer(required=True)
    metadata = fields.Dict(keys=fields.String(), values=fields.String(), required=True)
    state = fields.String(required=True, metadata={"enum": ["running", "paused"]})
    envdVersion = fields.String(required=True)


class ListedSandbox(_Listed):
    pass


class NetworkInfo(Schema):
    allowPublicTraffic = fields.Boolean(required=True)
    allowOut = fields.List(fields.String(), required=True)
    denyOut = fields.List(fields.String(), required=True)


class SandboxDetail(_Listed):
    allowInternetAccess = fields.Boolean(required=True, allow_none=True)
    domain = fields.String(required=True, allow_none=True)
    network = fields.Nested(NetworkInfo, required=True)


class SandboxMetric(Schema):
    timestamp = fields.String(required=True, metadata={"format": "date-time"})
    timestampUnix = fields.Integer(required=True)
    cpuCount = fields.Integer(required=True)
    cpuUsedPct = fields.Float(required=True)
    memUsed = fields.Integer(required=True)
    memTotal = fields.Integer(required=True)
    memCache = fields.Integer(required=True)
    diskUsed = fields.Integer(required=True)
    diskTotal = fields.Integer(required=True)


class ControlError(Schema):
    """E2B's error body: the SDK reads ``message`` and requires ``code`` (the HTTP status)."""

    code = fields.Integer(required=True)
    message = fields.String(required=True)
