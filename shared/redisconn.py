"""Connecting to Redis from ``PADDOCK_REDIS_URL``. One parser reads the URL, so every client
(the web, the workers, Celery's broker, Flower, the scripts) gets the same password, ACL user
and TLS options::

    redis://[[user]:password@]host[:port][/db]
    rediss://[[user]:password@]host[:port][/db][?ssl_ca_certs=/etc/paddock/redis-ca.pem]

A ``rediss://`` URL verifies the server's certificate and name (against the system's CAs, or
``ssl_ca_certs``) unless it says ``ssl_cert_reqs=none``. Other options: ``ssl_cert_reqs``
(``required``, ``optional``, ``none``), ``ssl_certfile`` and ``ssl_keyfile`` (a client
certificate), ``ssl_check_hostname`` (``true``/``false``). Characters such as ``@ : / ?`` in a
user or password are percent-encoded. The password never appears in a repr or a log line:
``redacted()`` prints ``***`` in its place.

``python -m shared.redisconn [--broker] ping|redacted|maxmemory SIZE|server-config`` does the
same for scripts/bootstrap.sh, which thus needs no second parser (nor ``redis-cli -u``, which
would show the password in ``ps``); ``--broker`` reads ``PADDOCK_BROKER_URL`` instead.
"""

from __future__ import annotations

import logging
import os
import re
import ssl
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from shared.errors import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_PORT = 6379
# What a Redis restart looks like to a client: refused or dropped connections, and BUSY LOADING
# while it reads its AOF back (BusyLoadingError is a ConnectionError). A TimeoutError is not
# in it: a command that outlived its socket timeout may have run, and a hung server is no blip.
REDIS_DOWN: tuple[type[Exception], ...] = (redis.ConnectionError,)
# Every client rides out a short blip by itself: a failed command is sent again after 0.1,
# 0.2, 0.4, 0.8 then every 1 s, 10 times (about 6.5 s in all), on a new connection.
CLIENT_RETRIES = 10
CLIENT_BACKOFF = (0.05, 1.0)  # base, cap (seconds)

T = TypeVar("T")
CERT_REQS = {
    "required": ssl.CERT_REQUIRED,
    "optional": ssl.CERT_OPTIONAL,
    "none": ssl.CERT_NONE,
}
_TLS_OPTIONS = (
    "ssl_cert_reqs",
    "ssl_ca_certs",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_check_hostname",
)
_LOCAL_HOSTS = ("127.0.0.1", "localhost")


@dataclass(frozen=True, repr=False)
class RedisURL:
    host: str
    port: int = DEFAULT_PORT
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    cert_reqs: ssl.VerifyMode = ssl.CERT_REQUIRED
    ca_certs: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    check_hostname: bool = True

    def __repr__(self) -> str:
        return f"RedisURL({self.redacted()!r})"

    def _netloc(self, password: str | None) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        auth = quote(self.username or "", safe="")
        if password:
            auth += ":" + password
        return f"{auth}@{host}:{self.port}" if auth else f"{host}:{self.port}"

    def broker_url(self) -> str:
        """The URL for kombu, without the TLS query: Celery gets those as ``broker_use_ssl``
        (``ssl_options``), which Flower's broker view reads too."""
        password = quote(self.password, safe="") if self.password else None
        return f"{'rediss' if self.tls else 'redis'}://{self._netloc(password)}/{self.db}"

    def redacted(self) -> str:
        """The URL fit for logs and messages: the password is ``***``."""
        shown = f"{'rediss' if self.tls else 'redis'}://{self._netloc(self.password and '***')}"
        query = "&".join(f"{k}={v}" for k, v in self._tls_query().items())
        return f"{shown}/{self.db}" + (f"?{query}" if query else "")

    def _tls_query(self) -> dict[str, str]:
        if not self.tls:
            return {}
        names = {v: k for k, v in CERT_REQS.items()}
        query = {"ssl_cert_reqs": names[self.cert_reqs]}
        for key, value in (
            ("ssl_ca_certs", self.ca_certs),
            ("ssl_certfile", self.certfile),
            ("ssl_keyfile", self.keyfile),
        ):
            if value:
                query[key] = value
        if not self.check_hostname and self.cert_reqs != ssl.CERT_NONE:
            query["ssl_check_hostname"] = "false"
        return query

    def ssl_options(self) -> dict[str, Any]:
        """redis-py's TLS arguments (also kombu's ``broker_use_ssl``); empty without TLS."""
        if not self.tls:
            return {}
        return {
            "ssl_cert_reqs": self.cert_reqs,
            "ssl_ca_certs": self.ca_certs,
            "ssl_certfile": self.certfile,
            "ssl_keyfile": self.keyfile,
            # Python refuses a hostname check without a certificate to check it against.
            "ssl_check_hostname": self.check_hostname and self.cert_reqs != ssl.CERT_NONE,
        }

    @property
    def is_local(self) -> bool:
        return self.host in _LOCAL_HOSTS


def parse_redis_url(url: str, var: str = "PADDOCK_REDIS_URL") -> RedisURL:
    """Read ``PADDOCK_REDIS_URL`` (or the variable ``var``, named in the errors:
    ``PADDOCK_BROKER_URL``).

    Raises ConfigError naming what is wrong (never the password): another scheme, no host, a bad
    port or db, an unknown option, or a TLS option on a ``redis://`` URL.
    """
    try:
        parts = urlsplit(url.strip())
        port = parts.port or DEFAULT_PORT
    except ValueError as exc:
        raise ConfigError(f"{var}: {_mask(url)} is not a URL ({exc})") from None
    if parts.scheme not in ("redis", "rediss"):
        raise ConfigError(f"{var} must start with redis:// or rediss:// (TLS)")
    if not parts.hostname:
        raise ConfigError(f"{var}: no host in {_mask(url)}")
    db_text = parts.path.strip("/") or "0"
    if not db_text.isdigit():
        raise ConfigError(f"{var}: the path must be a database number, not {db_text!r}")
    tls = parts.scheme == "rediss"
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(query) - set(_TLS_OPTIONS))
    if unknown:
        raise ConfigError(
            f"{var}: unknown option(s) {', '.join(unknown)}; known: {', '.join(_TLS_OPTIONS)}"
        )
    if query and not tls:
        raise ConfigError(f"{var}: ssl_* options need a rediss:// URL")
    reqs = query.get("ssl_cert_reqs", "required").strip().lower().removeprefix("cert_")
    if reqs not in CERT_REQS:
        raise ConfigError(f"{var}: ssl_cert_reqs must be required, optional or none")
    check = query.get("ssl_check_hostname", "true").strip().lower()
    if check not in ("true", "false"):
        raise ConfigError(f"{var}: ssl_check_hostname must be true or false")
    return RedisURL(
        host=parts.hostname,
        port=port,
        db=int(db_text),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        tls=tls,
        cert_reqs=CERT_REQS[reqs],
        ca_certs=query.get("ssl_ca_certs") or None,
        certfile=query.get("ssl_certfile") or None,
        keyfile=query.get("ssl_keyfile") or None,
        check_hostname=check == "true",
    )


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, even when it does not parse."""
    try:
        return parse_redis_url(url).redacted()
    except ConfigError:
        return _mask(url)


def _mask(url: str) -> str:
    # Whatever sits between "//" and the last "@" may hold a password, "/" and "@" included.
    return re.sub(r"//[^?#]*@", "//***@", url)


def redis_client(
    url: str,
    *,
    socket_timeout: float,
    socket_connect_timeout: float = 5,
    health_check_interval: int = 30,
    max_connections: int | None = None,
) -> redis.Redis:
    """A redis-py client for ``url`` (no connection is opened here). ``socket_timeout`` must
    outlast the caller's longest blocking command (BLPOP, XREAD BLOCK).

    Raises ConfigError when the URL does not parse.
    """
    target = parse_redis_url(url)
    if target.tls and target.cert_reqs == ssl.CERT_NONE:
        logger.warning("redis: TLS without certificate verification (ssl_cert_reqs=none)")
    return redis.Redis(
        host=target.host,
        port=target.port,
        db=target.db,
        username=target.username,
        password=target.password,
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_connect_timeout,
        health_check_interval=health_check_interval,
        max_connections=max_connections,
        # A restart of Redis (seconds) fails no command: see CLIENT_RETRIES. A command whose
        # effect may have happened before the connection dropped can thus run twice: the
        # writers whose effect must happen once (output appends, end markers, agent events,
        # the task queue's pop) carry a token their Lua script checks.
        retry=Retry(
            ExponentialBackoff(base=CLIENT_BACKOFF[0], cap=CLIENT_BACKOFF[1]),
            CLIENT_RETRIES,
            supported_errors=REDIS_DOWN,
        ),
        ssl=target.tls,
        **target.ssl_options(),
    )


@dataclass(frozen=True)
class Backoff:
    """How a writer that must not lose its write waits for Redis to come back: delays
    grow from ``base`` to ``cap`` seconds, and after ``give_up_after`` seconds it stops."""

    base: float = 0.1
    cap: float = 2.0
    give_up_after: float = 180.0

    def delays(self) -> Iterator[float]:
        """The waits between attempts (endless; the caller minds ``give_up_after``)."""
        delay = self.base
        while True:
            yield delay
            delay = min(self.cap, delay * 2)


# The host worker's writers: a Redis restart (or a failover) of up to three minutes.
WRITER_BACKOFF = Backoff()


def persist(
    write: Callable[[], T],
    what: str,
    backoff: Backoff = WRITER_BACKOFF,
    *,
    sleep: Callable[[float], Any] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """``write()``, attempted again with ``backoff`` while Redis is down (REDIS_DOWN), so a
    restart of Redis loses no end marker or event. ``write`` must be safe to repeat (an
    idempotent command, or a script that checks a token). ``what`` names it in the log.

    Raises the last REDIS_DOWN error once ``backoff.give_up_after`` seconds have passed, and
    any other error at once.
    """
    deadline = clock() + backoff.give_up_after
    failures = 0
    for delay in backoff.delays():
        try:
            return write()
        except REDIS_DOWN as exc:
            failures += 1
            if clock() + delay > deadline:
                logger.error("redis: gave up on %s after %d attempts: %s", what, failures, exc)
                raise
            if failures == 1:
                logger.warning("redis: %s failed (%s); retrying until Redis is back", what, exc)
            sleep(delay)
    raise AssertionError("unreachable")  # delays() never ends


def _config_arg(value: str) -> str:
    """A redis.conf argument in double quotes (its parser unescapes ``\\\\`` and ``\\"``)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def server_config(target: RedisURL) -> str:
    """redis.conf lines for a local redis-server that ``target`` can use: port, loopback, and
    the password (``requirepass``, or an ACL user with every right while ``default`` is off).
    scripts/bootstrap.sh feeds them on stdin, so the password is in no file and no argv.

    Raises ConfigError for a URL this machine cannot serve (not local, or TLS: certificates are
    the operator's to make).
    """
    if not target.is_local:
        raise ConfigError("not local, so it cannot be started here")
    if target.tls:
        raise ConfigError("TLS: start it yourself, with its certificates")
    lines = [f"port {target.port}", "bind 127.0.0.1"]
    if target.username and target.username != "default":
        secret = f">{target.password}" if target.password else "nopass"
        lines += [
            f"user {_config_arg(target.username)} on {_config_arg(secret)} ~* &* +@all",
            "user default off",
        ]
    elif target.password:
        lines.append(f"requirepass {_config_arg(target.password)}")
    return "\n".join(lines) + "\n"


def probe_client(url: str) -> redis.Redis:
    """A client that answers now or fails (5 s at most, no retries): for scripts and probes
    (the web's look at the broker, web/brokerprobe.py), which poll on their own.

    Raises ConfigError when the URL does not parse."""
    r = redis_client(url, socket_timeout=5, socket_connect_timeout=3)
    # A prober polls on its own: an answer now, not after redis-py's retries with backoff.
    # (set_retry is redis-py's public API; types-redis predates it.)
    r.set_retry(Retry(NoBackoff(), 0))  # type: ignore[attr-defined]
    return r


def main(argv: list[str] | None = None) -> int:
    """The scripts' way to Redis, reading ``PADDOCK_REDIS_URL`` (``--broker`` first:
    ``PADDOCK_BROKER_URL``, the Celery broker's own Redis); errors go to stderr without the
    password, and the exit status is 1."""
    args = sys.argv[1:] if argv is None else argv
    var = "PADDOCK_REDIS_URL"
    if args[:1] == ["--broker"]:
        var, args = "PADDOCK_BROKER_URL", args[1:]
    url = os.environ.get(var) or "redis://127.0.0.1:6379/0"
    try:
        target = parse_redis_url(url, var)
        if args == ["redacted"]:
            print(target.redacted())
        elif args == ["server-config"]:
            sys.stdout.write(server_config(target))
        elif args == ["ping"]:
            probe_client(url).ping()
            print("PONG")
        elif len(args) == 2 and args[0] == "maxmemory":
            # A Redis without a memory cap gets one; a cap someone set is left alone.
            r = probe_client(url)
            if str(r.config_get("maxmemory").get("maxmemory")) == "0":
                r.config_set("maxmemory", args[1])
                r.config_set("maxmemory-policy", "noeviction")
                print(f"maxmemory set to {args[1]} (noeviction)")
        else:
            print(
                "usage: python -m shared.redisconn [--broker] "
                "ping|redacted|server-config|maxmemory SIZE",
                file=sys.stderr,
            )
            return 2
    except (ConfigError, redis.RedisError) as exc:
        print(f"redis at {redact_url(url)}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
