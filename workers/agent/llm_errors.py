"""How a failed LLM request reaches the agent loop: one `LlmError` with an ``llm_*`` code,
whatever the vendor's SDK raised, and with no API key in its message.

The vendors' SDKs are imported when a conversation first needs them, not with this module:
together they take ~3 s of CPU to import, which every host worker paid at each start."""

from __future__ import annotations

import contextlib
import functools
import re

from workers.agent.http import AddressRefused

_MAX_MESSAGE = 300
# Both vendors' keys start with "sk-"; vendors echo them masked or partly ("sk-proj-abc***xyz").
_KEY_LIKE = re.compile(r"\bsk-[A-Za-z0-9_\-*.]{6,}")


@functools.cache
def sdk_errors() -> tuple[type[Exception], ...]:
    """Everything either SDK raises for a request: what `llm_error` turns into an LlmError."""
    import anthropic
    import openai

    return (anthropic.AnthropicError, openai.OpenAIError)


class LlmError(Exception):
    """An LLM request failed; ``code`` is one of the ``llm_*`` codes, ``message`` has no key."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(code, message)  # args=(code, message) keeps the error picklable
        self.code = code
        self.message = message
        self.status = status  # the vendor's HTTP status, when there was a response
        self.retry_after = retry_after  # seconds, from a 429's retry-after header

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


def llm_error(vendor: str, exc: Exception, api_key: str, timeout: float) -> LlmError:
    """Turn any SDK exception into an LlmError whose message cannot carry the key, nor what a
    redirect pointed at."""
    import anthropic
    import openai

    if isinstance(exc, anthropic.APITimeoutError | openai.APITimeoutError):
        return LlmError("llm_timeout", f"{vendor} did not answer within {timeout:g} s")
    refused = _address_refused(exc)
    if refused is not None:
        # Names the host the tenant gave, never the address it resolved to.
        text = (
            f"the {vendor} endpoint {refused.host} resolves to a loopback, private or link-local"
            " address; an operator can allow it with PADDOCK_LLM_ALLOWED_HOSTS"
        )
        return LlmError("llm_base_url_not_allowed", _scrub(text, api_key))
    if isinstance(exc, anthropic.APIConnectionError | openai.APIConnectionError):
        cause = exc.__cause__ or exc
        where = exc.request.url.copy_with(query=None)
        text = f"could not reach {vendor} at {where}: {cause}"
        return LlmError("llm_unavailable", _scrub(text, api_key))
    if not isinstance(exc, anthropic.APIStatusError | openai.APIStatusError):
        text = f"{vendor} sent an unusable reply: {exc}"
        return LlmError("llm_unavailable", _scrub(text, api_key))
    status = exc.status_code
    if 300 <= status < 400:
        # Neither the Location (the internal address a tenant may be probing) nor the body.
        text = (
            f"the {vendor} endpoint answered with a redirect (HTTP {status}), which is not"
            " followed; set base_url to the API's own address"
        )
        return LlmError("llm_redirect_refused", text, status=status)
    detail = _scrub(_vendor_message(exc.body) or exc.response.reason_phrase, api_key)
    if status in (401, 403):
        code, what = "llm_auth_failed", "refused the API key"
    elif status == 429:
        code, what = "llm_rate_limited", "is rate limiting this key"
    elif status == 408:
        code, what = "llm_timeout", "timed out the request"
    elif status >= 500:
        code, what = "llm_unavailable", "failed"
    else:
        code, what = "llm_bad_request", "refused the request"
    retry_after = None
    if status == 429:
        with contextlib.suppress(ValueError):  # absent, or an HTTP date: the loop has no use
            retry_after = float(exc.response.headers.get("retry-after", ""))
    return LlmError(
        code, f"{vendor} {what} (HTTP {status}): {detail}", status=status, retry_after=retry_after
    )


def _address_refused(exc: BaseException) -> AddressRefused | None:
    # The SDKs wrap what the transport raised (AddressRefused -> httpx2.ConnectError ->
    # APIConnectionError), each with the one before as __cause__.
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, AddressRefused):
            return current
        seen.add(id(current))
        current = current.__cause__
    return None


def _vendor_message(body: object) -> str:
    # Anthropic hands over the whole body, OpenAI the inner "error" object; either may be text.
    if isinstance(body, str):
        return body.strip()
    error = body.get("error", body) if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return message.strip() if isinstance(message, str) else ""


def _scrub(text: str, api_key: str) -> str:
    if api_key:
        text = text.replace(api_key, "[redacted]")
    text = _KEY_LIKE.sub("[redacted]", text)
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 1] + "…"
