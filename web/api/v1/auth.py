"""``/v1/auth``: login by email OTP. Answers never reveal whether an account exists."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, jsonify

from shared import rpc, tasks
from shared.accounts import OTP_TTL
from web import tokens
from web.api import validation
from web.api.deps import services
from web.api.v1.common import client_ip
from web.api.v1.schemas import LoginRequest, VerifyOtpRequest

logger = logging.getLogger(__name__)
bp = Blueprint("v1_auth", __name__)

LOGIN_PER_IP_PER_MINUTE = 10
VERIFY_PER_IP_PER_MINUTE = 20


@bp.post("/v1/auth/login")
def login() -> Response:
    svc = services()
    svc.accounts.hit("login-ip", client_ip(), LOGIN_PER_IP_PER_MINUTE, 60)
    email = validation.body(LoginRequest())["email"].strip().lower()
    code = svc.accounts.issue_otp(email)
    if code is not None:
        # The code travels sealed: the broker (Redis) never holds it in clear.
        sealed = svc.box.seal_text(code)
        rpc.send(
            svc.celery,
            tasks.CONTROL_QUEUE,
            tasks.SEND_LOGIN_CODE,
            {"email": email, "sealed_code": sealed},
            expires=OTP_TTL,
        )
    return jsonify({"status": "otp_sent", "expires_in": OTP_TTL})


@bp.post("/v1/auth/verify-otp")
def verify_otp() -> Response:
    svc = services()
    svc.accounts.hit("verify-ip", client_ip(), VERIFY_PER_IP_PER_MINUTE, 60)
    body = validation.body(VerifyOtpRequest())
    email = body["email"].strip().lower()
    svc.accounts.check_otp(email, body["code"])
    user_id = svc.accounts.user_for_email(email)
    token = tokens.issue(
        svc.settings.jwt_secret, user_id, tokens.ACCOUNT_AUDIENCE, tokens.ACCOUNT_TTL, email=email
    )
    logger.info("user %s: logged in", user_id)
    return jsonify({"token": token, "user_id": user_id, "email": email})
