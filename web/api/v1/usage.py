"""``/v1/tenants/me/usage``: the tenant's usage against each of its quotas (API key)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from web.api.deps import api_tenant, services
from web.api.v1.schemas import TenantUsage
from web.usage import tenant_usage

bp = Blueprint("v1_usage", __name__)


@bp.get("/v1/tenants/me/usage")
def usage() -> Response:
    tenant_id = api_tenant()
    svc = services()
    # Through the schema that documents it, so the OpenAPI document and the wire agree.
    return jsonify(TenantUsage().dump(tenant_usage(svc.redis, svc.settings, tenant_id)))
