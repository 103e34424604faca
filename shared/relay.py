"""The wire between the web tier and a host's relay (workers/host/relay.py), which carries one
proxied connection into one sandbox port (web/ports/).

The web opens a TCP connection to the relay its sandbox's host announces in its heartbeat and
sends one line, a ticket::

    PDK1 <sandbox id> <port> <expires, Unix s> <nonce, 32 hex> <HMAC-SHA256, 64 hex>\\n

The HMAC covers the host id as well, with a key derived from ``PADDOCK_SECRET_KEY`` (which the
web and every host already share), so only the web tier can open one, for one sandbox and
port, on one host, within ``TICKET_TTL``, once (the relay remembers nonces until they expire).
The relay answers ``OK\\n`` and from then on carries bytes both ways, or ``ERR <code>
<message>\\n`` and closes. The relay alone turns the sandbox id into an address (the
sandbox's own, on its host's network): nothing in the request names one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass

from shared.errors import ConfigError

MAGIC = "PDK1"
TICKET_TTL = 120  # seconds; room for clocks of the web and host machines a little apart
MAX_LINE = 512
_LINE = re.compile(
    r"PDK1 ([a-z0-9]{1,32}(?:-[a-z0-9]{1,32})?) ([0-9]{1,5}) ([0-9]{1,12}) ([0-9a-f]{32}) "
    r"([0-9a-f]{64})"
)

# The relay's refusals (ERR <code>): what the web answers for each is web/ports/pages.py's.
REFUSED = "refused"  # nothing listens on the port
UNREACHABLE = "unreachable"  # no route, reset, or the sandbox froze (no answer in time)
UNKNOWN = "unknown"  # no such sandbox with an address on this host
AUTH = "auth"  # a bad, expired or replayed ticket
BUSY = "busy"  # the relay holds its most connections
CODES = (REFUSED, UNREACHABLE, UNKNOWN, AUTH, BUSY)


@dataclass(frozen=True)
class Ticket:
    sandbox_id: str
    port: int
    expires: int
    nonce: str


def relay_keys(secret_key: str) -> list[bytes]:
    """The HMAC keys, one per Fernet key of ``PADDOCK_SECRET_KEY`` (newest first: the web
    signs with the first, a relay accepts any, so the master key can be rotated). Raises
    ConfigError when there is none or one is not a Fernet key."""
    out = []
    for part in (p.strip() for p in secret_key.split(",")):
        if not part:
            continue
        try:
            raw = base64.urlsafe_b64decode(part.encode())
        except (binascii.Error, ValueError):
            raise ConfigError("PADDOCK_SECRET_KEY: not a valid Fernet key") from None
        if len(raw) != 32:
            raise ConfigError("PADDOCK_SECRET_KEY: not a valid Fernet key")
        out.append(hmac.new(raw, b"paddock relay ticket v1", hashlib.sha256).digest())
    if not out:
        raise ConfigError("PADDOCK_SECRET_KEY is not set: the port relays need it")
    return out


def _mac(key: bytes, host_id: str, t: Ticket) -> str:
    msg = f"{MAGIC}|{host_id}|{t.sandbox_id}|{t.port}|{t.expires}|{t.nonce}".encode()
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


def sign(key: bytes, host_id: str, sandbox_id: str, port: int, now: float | None = None) -> bytes:
    """The ticket line for ``port`` of ``sandbox_id`` on ``host_id`` (newline included)."""
    t = Ticket(
        sandbox_id,
        port,
        int(now if now is not None else time.time()) + TICKET_TTL,
        secrets.token_hex(16),
    )
    line = f"{MAGIC} {t.sandbox_id} {t.port} {t.expires} {t.nonce} {_mac(key, host_id, t)}\n"
    return line.encode()


def verify(keys: list[bytes], host_id: str, line: bytes, now: float | None = None) -> Ticket:
    """The ticket ``line`` carries, once its MAC (under any of ``keys``), expiry and port are
    checked (the caller checks the nonce was not seen). Raises ValueError saying why not."""
    if len(line) > MAX_LINE:
        raise ValueError("not a ticket")
    try:
        text = line.decode("ascii").rstrip("\r\n")
    except UnicodeDecodeError:
        raise ValueError("not a ticket") from None
    m = _LINE.fullmatch(text)
    if not m:
        raise ValueError("not a ticket")
    t = Ticket(m[1], int(m[2]), int(m[3]), m[4])
    if not any(hmac.compare_digest(_mac(k, host_id, t), m[5]) for k in keys):
        raise ValueError("bad signature")
    now = time.time() if now is None else now
    if not now <= t.expires <= now + 2 * TICKET_TTL:
        raise ValueError("expired")
    if not 1 <= t.port <= 65535:
        raise ValueError("bad port")
    return t
