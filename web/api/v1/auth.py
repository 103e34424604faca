"""``/v1/auth``: login by email OTP. Answers never reveal whether an account exists."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, jsonify, request

from shared import rpc, tasks
from shared.accounts import OTP_TTL
from web import tokens
from web.api import validation
from web.api.v1.schemas import LoginRequest, LoginResponse, VerifyOtpRequest, VerifyOtpResponse
from web.services import current_services

logger = logging.getLogger(__name__)
bp = Blueprint("auth", __name__, url_prefix="/auth")

LOGIN_PER_IP_PER_MINUTE = 10
VERIFY_PER_IP_PER_MINUTE = 20


def client_ip() -> str:
    return request.remote_addr or "unknown"


@bp.post("/login")
def login() -> Response:
    services = current_services()
    services.accounts.hit("login-ip", client_ip(), LOGIN_PER_IP_PER_MINUTE, 60)
    email = validation.body(LoginRequest())["email"].strip().lower()
    code = services.accounts.issue_otp(email)
    if code is not None:
        # The code travels sealed: the broker (Redis) never holds it in clear.
        sealed = services.box.seal_text(code)
        rpc.send(
            services.celery,
            tasks.CONTROL_QUEUE,
            tasks.SEND_LOGIN_CODE,
            {"email": email, "sealed_code": sealed},
            expires=OTP_TTL,
        )
    return jsonify(LoginResponse().dump({"status": "otp_sent", "expires_in": OTP_TTL}))


@bp.post("/verify-otp")
def verify_otp() -> Response:
    services = current_services()
    services.accounts.hit("verify-ip", client_ip(), VERIFY_PER_IP_PER_MINUTE, 60)
    body = validation.body(VerifyOtpRequest())
    email = body["email"].strip().lower()
    services.accounts.check_otp(email, body["code"])
    user_id = services.accounts.user_for_email(email)
    token = tokens.issue(
        services.settings.jwt_secret,
        user_id,
        tokens.ACCOUNT_AUDIENCE,
        tokens.ACCOUNT_TTL,
        email=email,
    )
    logger.info("user %s: logged in", user_id)
    return jsonify(VerifyOtpResponse().dump({"token": token, "user_id": user_id, "email": email}))
