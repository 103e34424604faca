"""Marshmallow schemas of the v1 API: requests are validated with ``load``, responses written
with ``dump``, and the OpenAPI document (web/api/v1/openapi.py) is generated from the same
classes, so the document and the wire cannot drift apart. Wire formatting lives here too
(`Timestamp`: Unix seconds to ISO 8601; `SandboxState`: a record's status to its API state):
routes hand over values, the schema decides how they look."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, pre_load, validate, validates

from shared.egress import MAX_ENTRIES
from shared.secrets import MAX_KEYS, MAX_VALUE_BYTES

BUNDLE_NAME = r"^[a-z0-9][a-z0-9-]{0,62}$"
SECRET_KEY = r"^[A-Z_][A-Z0-9_]*$"


class Strict(Schema):
    class Meta:
        unknown = RAISE


def iso(ts: float | None) -> str | None:
    """Unix seconds as ISO 8601 UTC with ``Z``; None stays None."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


class Timestamp(fields.String):
    """A Unix time (seconds) written as ISO 8601 UTC (`iso`); documented as a date-time."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("metadata", {}).setdefault("format", "date-time")
        super().__init__(**kwargs)

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> str | None:
        return iso(None if value is None else float(value))


# A sandbox record's status → the state the API shows. A lost sandbox (its container stopped
# behind Paddock's back) shows as `lost` until the reaper purges its record (PADDOCK_LOST_KEEP).
SANDBOX_STATES = {
    "creating": "creating",
    "running": "running",
    "deleting": "stopping",
    "lost": "lost",
}


class SandboxState(fields.String):
    """A sandbox record's ``status`` as its API state (`SANDBOX_STATES`); the document's enum
    is exactly the states this sends."""

    def __init__(self, **kwargs: Any) -> None:
        states = list(dict.fromkeys(SANDBOX_STATES.values()))
        kwargs.setdefault("metadata", {}).setdefault("enum", states)
        super().__init__(**kwargs)

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> str | None:
        return None if value is None else SANDBOX_STATES.get(str(value), str(value))


class _EmailSchema(Strict):
    email = fields.Email(required=True, validate=validate.Length(max=254))

    @pre_load
    def _normalise(self, data: Any, **_: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("email"), str):
            data = {**data, "email": data["email"].strip().lower()}
        return data


class LoginRequest(_EmailSchema):
    pass


class LoginResponse(Schema):
    status = fields.String(metadata={"example": "otp_sent"})
    expires_in = fields.Integer(metadata={"example": 600})


class VerifyOtpRequest(_EmailSchema):
    code = fields.String(
        required=True, validate=validate.Regexp(r"^[0-9]{6}$", error="must be 6 digits")
    )


class VerifyOtpResponse(Schema):
    token = fields.String()
    user_id = fields.String()
    email = fields.String()


MAX_KEY_LIFETIME = 366 * 86400


class CreateApiKeyRequest(Strict):
    name = fields.String(load_default="", validate=validate.Length(max=64))
    expires_in = fields.Integer(
        load_default=None,
        allow_none=True,
        strict=True,
        validate=validate.Range(min=1, max=MAX_KEY_LIFETIME),
        metadata={
            "description": "Seconds until the key stops working (401 api_key_expired); "
            "absent or null: until revoked. Expired keys stay listed for 7 days, then go."
        },
    )


_EXPIRES_AT = {"description": "When the key stops working; null: until revoked"}


class ApiKeyCreated(Schema):
    key_id = fields.String()
    key = fields.String(metadata={"description": "Shown only in this response"})
    prefix = fields.String()
    name = fields.String()
    created_at = Timestamp()
    expires_at = Timestamp(allow_none=True, metadata=dict(_EXPIRES_AT))


class ApiKeyInfo(Schema):
    key_id = fields.String()
    prefix = fields.String()
    name = fields.String()
    revoked = fields.Boolean()
    created_at = Timestamp()
    last_used_at = Timestamp(allow_none=True)
    expires_at = Timestamp(allow_none=True, metadata=dict(_EXPIRES_AT))


class ApiKeyList(Schema):
    api_keys = fields.List(fields.Nested(ApiKeyInfo))


class ApiKeyRevoked(Schema):
    key_id = fields.String()
    status = fields.String(metadata={"example": "revoked"})


def _check_values(values: dict[str, Any]) -> None:
    if not values:
        raise ValidationError("at least one key is required")
    if len(values) > MAX_KEYS:
        raise ValidationError(f"at most {MAX_KEYS} keys per bundle")
    for key, value in values.items():
        if len(value.encode()) > MAX_VALUE_BYTES:
            raise ValidationError(f"the value of {key} is over {MAX_VALUE_BYTES} bytes")


_VALUES = {
    "keys": fields.String(
        validate=validate.Regexp(
            SECRET_KEY,
            error="keys must be upper-case letters, digits and _, not starting with a digit",
        )
    ),
    "values": fields.String(),
    "required": True,
    "metadata": {"description": "KEY: value; values are write-only"},
}


class CreateSecretRequest(Strict):
    name = fields.String(
        required=True,
        validate=validate.Regexp(
            BUNDLE_NAME,
            error="must be 1-63 lowercase letters, digits or dashes, not starting with a dash",
        ),
    )
    values = fields.Dict(**_VALUES)  # type: ignore[arg-type]

    @validates("values")
    def _values(self, values: dict[str, Any], **_: Any) -> None:
        _check_values(values)


class ReplaceSecretRequest(Strict):
    values = fields.Dict(**_VALUES)  # type: ignore[arg-type]

    @validates("values")
    def _values(self, values: dict[str, Any], **_: Any) -> None:
        _check_values(values)


class SecretInfo(Schema):
    name = fields.String()
    keys = fields.List(fields.String())
    version = fields.Integer()
    created_at = Timestamp()
    updated_at = Timestamp()


class SecretList(Schema):
    secrets = fields.List(fields.Nested(SecretInfo))


class NetworkInfo(Schema):
    mode = fields.String(metadata={"enum": ["internet", "none"]})
    allow_out = fields.List(fields.String())
    deny_out = fields.List(fields.String())


class SandboxInfo(Schema):
    sandbox_id = fields.String()
    template = fields.String()
    state = SandboxState(attribute="status")
    host = fields.String()
    created_at = Timestamp()
    # null for an agent session's sandbox: it has no idle timer, it ends with its session.
    last_active_at = Timestamp(allow_none=True)
    # null once the record is being removed (its timers are gone before the record).
    expires_at = Timestamp(allow_none=True)
    # When the idle reaper ends it unless a request names it first (last_active_at plus
    # PADDOCK_IDLE_TIMEOUT); null with no idle timer (an agent session's sandbox) or paused.
    idle_expires_at = Timestamp(
        allow_none=True,
        metadata={"description": "last_active_at + the idle timeout; null when none runs"},
    )
    # The metadata given to the E2B control API's create; {} for a sandbox made otherwise.
    metadata = fields.Dict(keys=fields.String(), values=fields.String())
    network = fields.Nested(NetworkInfo)
    # Why the sandbox was lost (state "lost": its host died, its container or supervisor
    # ended, ...); null otherwise.
    lost_reason = fields.String(allow_none=True)


class SandboxList(Schema):
    sandboxes = fields.List(fields.Nested(SandboxInfo))


class TerminalTicket(Schema):
    """What opens a terminal socket (web/terminal.py): one use, within ``expires_in``."""

    ticket = fields.String(
        metadata={"description": "Pass as ?ticket= to the terminal WebSocket, once"}
    )
    expires_in = fields.Integer(metadata={"description": "Seconds the ticket stays valid"})
    url = fields.String(metadata={"description": "The terminal WebSocket's path"})


class TemplateInfo(Schema):
    name = fields.String(metadata={"description": "What `template` and `envID` take"})
    image = fields.String()
    size_bytes = fields.Integer()
    # null when the host did not say when it was built.
    built_at = Timestamp(allow_none=True)
    versions = fields.Dict(
        keys=fields.String(),
        values=fields.String(),
        metadata={"description": "Language and tool versions measured inside the image"},
    )
    hash = fields.String(metadata={"description": "Content hash of the image's build inputs"})
    hosts = fields.List(fields.String(), metadata={"description": "Live hosts that have it"})


class TemplateList(Schema):
    templates = fields.List(fields.Nested(TemplateInfo))


class ErrorBody(Schema):
    type = fields.String()
    code = fields.String()
    message = fields.String()
    param = fields.String()
    details = fields.Dict(
        keys=fields.String(),
        values=fields.String(),
        metadata={"description": "Validation errors: every bad parameter with what is wrong"},
    )
    request_id = fields.String()


class ErrorResponse(Schema):
    error = fields.Nested(ErrorBody)


class AgentSpec(Strict):
    kind = fields.String(required=True, validate=validate.OneOf(["deictic", "shell"]))
    max_turns = fields.Integer(load_default=None, validate=validate.Range(min=1, max=100))


class LlmSpec(Strict):
    vendor = fields.String(required=True, validate=validate.OneOf(["anthropic", "openai"]))
    model = fields.String(
        required=True,
        validate=validate.Regexp(
            r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,127}$", error="not a valid model name"
        ),
    )
    base_url = fields.Url(load_default=None, require_tld=False, schemes={"http", "https"})


class NetworkSpec(Strict):
    mode = fields.String(
        validate=validate.OneOf(["internet", "none"]),
        metadata={
            "description": "internet: outbound internet through the host's egress policy "
            "(never private ranges, the host or other sandboxes); none: no network. Default: "
            "PADDOCK_SANDBOX_NETWORK"
        },
    )
    allow_out = fields.List(
        fields.String(),
        validate=validate.Length(max=MAX_ENTRIES),
        metadata={
            "description": "IPv4 CIDRs this sandbox may reach even if deny_out covers them "
            "(allowing wins); private ranges only where the operator permits "
            "(PADDOCK_EGRESS_PRIVATE_ALLOWED)",
            "example": ["203.0.113.0/24"],
        },
    )
    deny_out = fields.List(
        fields.String(),
        validate=validate.Length(max=MAX_ENTRIES),
        metadata={
            "description": "IPv4 CIDRs this sandbox may not reach; 0.0.0.0/0 with allow_out "
            "makes an allow-list",
            "example": ["0.0.0.0/0"],
        },
    )


class CreateSessionRequest(Strict):
    agent = fields.Nested(AgentSpec, required=True)
    template = fields.String(load_default="standard", validate=validate.Length(min=1, max=128))
    llm = fields.Nested(LlmSpec, load_default=None)
    secrets = fields.List(
        fields.String(
            validate=validate.Regexp(
                BUNDLE_NAME,
                error=(
                    "must be 1-63 lowercase letters, digits or dashes, not starting with a dash"
                ),
            )
        ),
        load_default=list,
        validate=validate.Length(max=10, error="at most 10 bundles"),
    )
    user_id = fields.String(load_default="", validate=validate.Length(max=128))
    ttl_seconds = fields.Integer(load_default=None, validate=validate.Range(min=60, max=7200))
    network = fields.Nested(NetworkSpec, load_default=None)


class SessionCreated(Schema):
    chat_session_id = fields.String()
    jwt = fields.String(
        metadata={
            "description": "Session token: only for this session's "
            "WebSocket; expires with the session"
        }
    )
    connect_url = fields.String()
    expires_at = Timestamp()


class SessionToken(Schema):
    """A new token for a running session's WebSocket (a client that lost the one
    ``POST /v1/sessions`` gave, a second browser tab)."""

    jwt = fields.String(
        metadata={
            "description": "Session token: only for this session's "
            "WebSocket; expires with the session"
        }
    )
    connect_url = fields.String()
    expires_at = Timestamp()


class SessionInfo(Schema):
    chat_session_id = fields.String()
    state = fields.String(metadata={"enum": ["running", "ended"]})
    sandbox_id = fields.String()
    template = fields.String()
    agent = fields.Dict()
    llm = fields.Dict()
    secrets = fields.List(fields.String())
    user_id = fields.String()
    created_at = Timestamp()
    expires_at = Timestamp()
    last_seq = fields.Integer()


class SessionList(Schema):
    sessions = fields.List(fields.Nested(SessionInfo))


class EventPage(Schema):
    events = fields.List(fields.Dict())
    next_after = fields.Integer()
    has_more = fields.Boolean()


class QuotaUsage(Schema):
    used = fields.Integer(
        required=True,
        metadata={
            "description": "Current use; for a per-sandbox quota, that of the most used "
            "of the tenant's sandboxes"
        },
    )
    limit = fields.Integer(required=True, metadata={"description": "The quota"})
    setting = fields.String(
        required=True,
        metadata={
            "description": "The environment variable that sets the quota",
            "example": "PADDOCK_TENANT_MAX_SANDBOXES",
        },
    )
    per = fields.String(
        required=True,
        metadata={"enum": ["tenant", "sandbox"], "description": "What the quota applies to"},
    )
    by_sandbox = fields.Dict(
        keys=fields.String(),
        values=fields.Integer(),
        metadata={"description": "Per-sandbox quotas only: the use in each sandbox, by id"},
    )


class Quotas(Schema):
    sandboxes = fields.Nested(
        QuotaUsage, required=True, metadata={"description": "Sandboxes, from either API"}
    )
    agent_sessions = fields.Nested(
        QuotaUsage, required=True, metadata={"description": "Live (not ended) agent sessions"}
    )
    kept_output_bytes = fields.Nested(
        QuotaUsage,
        required=True,
        metadata={
            "description": "Processes and their output kept for reading, all sandboxes together"
        },
    )
    concurrent_waits = fields.Nested(
        QuotaUsage,
        required=True,
        metadata={"description": "Requests waiting on a process at once (wait=true)"},
    )
    concurrent_streams = fields.Nested(
        QuotaUsage,
        required=True,
        metadata={"description": "Process answers (output) being written at once"},
    )
    websockets = fields.Nested(
        QuotaUsage, required=True, metadata={"description": "Open session WebSockets"}
    )
    proxied_connections = fields.Nested(
        QuotaUsage,
        required=True,
        metadata={"description": "Open connections to the sandboxes' ports (the ports proxy)"},
    )
    processes_per_sandbox = fields.Nested(
        QuotaUsage, required=True, metadata={"description": "Running processes in one sandbox"}
    )
    kept_output_bytes_per_sandbox = fields.Nested(
        QuotaUsage,
        required=True,
        metadata={"description": "Processes and their output kept for reading in one sandbox"},
    )


class TenantUsage(Schema):
    quotas = fields.Nested(Quotas, required=True)
