"""``/v1/tenants/me/usage``: the tenant's usage against each of its quotas (API key)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from web.api.v1.schemas import TenantUsage
from web.auth import tenant_from_api_key
from web.services import current_services
from web.usage import tenant_usage

bp = Blueprint("usage", __name__)


@bp.get("/tenants/me/usage")
@tenant_from_api_key
def usage(tenant_id: str) -> Response:
    services = current_services()
    return jsonify(TenantUsage().dump(tenant_usage(services.redis, services.settings, tenant_id)))
