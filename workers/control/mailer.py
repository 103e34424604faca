"""Sending the login code: SMTP (STARTTLS when offered, or TLS from the first byte with
``smtps://``), or, without ``PADDOCK_SMTP_URL``, the dev log mailer."""

from __future__ import annotations

import logging
import smtplib
import ssl
from email.message import EmailMessage
from urllib.parse import unquote, urlsplit

from shared.errors import ConfigError
from shared.settings import Settings

logger = logging.getLogger(__name__)

SMTP_TIMEOUT = 20


def login_code_message(settings: Settings, email: str, code: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = settings.mail_from
    msg["To"] = email
    msg["Subject"] = f"Your Paddock login code: {code}"
    msg.set_content(
        f"Your Paddock login code is {code}\n\nIt is valid for 10 minutes and can be used "
        "once. If you did not ask for it, ignore this message.\n"
    )
    return msg


def send_login_code(settings: Settings, email: str, code: str) -> None:
    """Deliver ``code`` to ``email``. Raises smtplib.SMTPException or OSError (retried by the
    task), ConfigError for an unusable PADDOCK_SMTP_URL."""
    if not settings.smtp_url:
        # Dev mode, announced by `make up`: the code goes to this worker's log.
        logger.warning(
            "LOG MAILER (dev only, PADDOCK_SMTP_URL unset): login code for %s: %s", email, code
        )
        return
    url = urlsplit(settings.smtp_url)
    if url.scheme not in ("smtp", "smtps") or not url.hostname:
        raise ConfigError("PADDOCK_SMTP_URL must look like smtp://[user:pass@]host:port")
    msg = login_code_message(settings, email, code)
    # Certificates are always verified; a private relay's CA can be trusted explicitly.
    context = ssl.create_default_context(cafile=settings.smtp_ca_file or None)
    smtp: smtplib.SMTP
    if url.scheme == "smtps":
        smtp = smtplib.SMTP_SSL(
            url.hostname, url.port or 465, timeout=SMTP_TIMEOUT, context=context
        )
    else:
        smtp = smtplib.SMTP(url.hostname, url.port or 25, timeout=SMTP_TIMEOUT)
    with smtp:
        smtp.ehlo()
        if url.scheme == "smtp" and smtp.has_extn("starttls"):
            smtp.starttls(context=context)
            smtp.ehlo()
        if url.username:
            smtp.login(unquote(url.username), unquote(url.password or ""))
        smtp.send_message(msg)
    logger.info("mail: login code sent to %s via %s", email, url.hostname)
