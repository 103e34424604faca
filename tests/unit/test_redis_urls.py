"""PADDOCK_REDIS_URL as every client reads it: password, ACL user, rediss:// with its options,
and the password kept out of reprs. No Redis server: clients are built, never connected."""

from __future__ import annotations

import ssl

import pytest

from shared.broker import make_celery
from shared.errors import ConfigError
from shared.redisconn import parse_redis_url, redact_url, redis_client, server_config
from shared.settings import Settings

SECRET = "s3cr@t:/pw"  # every character that must be percent-encoded in a URL
ENCODED = "s3cr%40t%3A%2Fpw"


def test_password_and_acl_user_are_read_and_decoded() -> None:
    u = parse_redis_url(f"redis://paddock:{ENCODED}@redis.internal:6380/2")
    assert (u.host, u.port, u.db, u.username, u.password, u.tls) == (
        "redis.internal",
        6380,
        2,
        "paddock",
        SECRET,
        False,
    )
    only_password = parse_redis_url(f"redis://:{ENCODED}@10.0.0.5")
    assert (only_password.username, only_password.password) == (None, SECRET)
    assert (only_password.port, only_password.db) == (6379, 0)
    plain = parse_redis_url("redis://127.0.0.1:6379/0")
    assert (plain.username, plain.password, plain.ssl_options()) == (None, None, {})


def test_rediss_verifies_certificates_unless_the_url_says_otherwise() -> None:
    default = parse_redis_url("rediss://:pw@redis.example:6380/0")
    assert default.tls and default.ssl_options() == {
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
        "ssl_ca_certs": None,
        "ssl_certfile": None,
        "ssl_keyfile": None,
        "ssl_check_hostname": True,
    }
    custom = parse_redis_url(
        "rediss://u:pw@h/1?ssl_cert_reqs=required&ssl_ca_certs=/etc/ca.pem"
        "&ssl_certfile=/etc/c.pem&ssl_keyfile=/etc/c.key&ssl_check_hostname=false"
    )
    assert custom.ssl_options() == {
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
        "ssl_ca_certs": "/etc/ca.pem",
        "ssl_certfile": "/etc/c.pem",
        "ssl_keyfile": "/etc/c.key",
        "ssl_check_hostname": False,
    }
    # kombu's spelling is accepted too; "none" also turns the name check off (Python refuses
    # a name check without a certificate).
    assert parse_redis_url("rediss://h?ssl_cert_reqs=CERT_OPTIONAL").cert_reqs == ssl.CERT_OPTIONAL
    insecure = parse_redis_url("rediss://h?ssl_cert_reqs=none").ssl_options()
    assert insecure["ssl_cert_reqs"] == ssl.CERT_NONE and insecure["ssl_check_hostname"] is False


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("http://h:6379/0", "redis:// or rediss://"),
        ("unix:///run/redis.sock", "redis:// or rediss://"),
        ("redis://:pw@/0", "no host"),
        ("redis://h:99999/0", "not a URL"),
        ("redis://h/zero", "database number"),
        ("redis://h/0?ssl_ca_certs=/ca.pem", "need a rediss:// URL"),
        ("rediss://h/0?socket_timeout=1", "unknown option(s) socket_timeout"),
        ("rediss://h/0?ssl_cert_reqs=maybe", "required, optional or none"),
        ("rediss://h/0?ssl_check_hostname=yes", "true or false"),
    ],
)
def test_bad_urls_are_refused_by_name_without_the_password(url: str, complaint: str) -> None:
    url = url.replace("://", f"://user:{ENCODED}@") if "@" not in url else url
    with pytest.raises(ConfigError) as err:
        parse_redis_url(url)
    assert complaint in str(err.value)
    assert ENCODED not in str(err.value) and SECRET not in str(err.value)


def test_password_never_appears_in_reprs() -> None:
    url = f"rediss://paddock:{ENCODED}@redis.example:6380/3?ssl_ca_certs=/etc/ca.pem"
    shown = (
        "rediss://paddock:***@redis.example:6380/3?ssl_cert_reqs=required&ssl_ca_certs=/etc/ca.pem"
    )
    assert redact_url(url) == shown
    assert repr(parse_redis_url(url)) == f"RedisURL({shown!r})"
    settings = Settings.from_env({"PADDOCK_REDIS_URL": url, "PADDOCK_HOST_ID": "h"})
    assert "redis_url='rediss://paddock:***@redis.example" in repr(settings)
    # Even a URL that does not parse keeps its password out.
    assert redact_url(f"ftp://u:{SECRET}@h/0") == "ftp://***@h/0"
    client = redis_client(url, socket_timeout=1)
    for text in (repr(settings), repr(client), repr(client.connection_pool)):
        assert SECRET not in text and ENCODED not in text


def test_clients_get_the_credentials_tls_options_and_timeouts() -> None:
    client = redis_client(
        f"rediss://paddock:{ENCODED}@redis.example:6380/3?ssl_ca_certs=/etc/ca.pem",
        socket_timeout=42,
        max_connections=7,
    )
    pool = client.connection_pool
    kw = pool.connection_kwargs
    assert pool.connection_class.__name__ == "SSLConnection"
    assert (kw["host"], kw["port"], kw["db"]) == ("redis.example", 6380, 3)
    assert (kw["username"], kw["password"]) == ("paddock", SECRET)
    assert (kw["socket_timeout"], kw["socket_connect_timeout"]) == (42, 5)
    assert (kw["ssl_cert_reqs"], kw["ssl_ca_certs"]) == (ssl.CERT_REQUIRED, "/etc/ca.pem")
    assert pool.max_connections == 7
    plain = redis_client("redis://:pw@127.0.0.1/0", socket_timeout=3).connection_pool
    assert plain.connection_class.__name__ == "Connection"
    assert plain.connection_kwargs["password"] == "pw"


def test_celery_broker_gets_the_password_and_verifying_tls() -> None:
    settings = Settings.from_env(
        {
            "PADDOCK_REDIS_URL": f"rediss://paddock:{ENCODED}@redis.example:6380/3"
            "?ssl_ca_certs=/etc/ca.pem",
            "PADDOCK_HOST_ID": "h",
        }
    )
    app = make_celery(settings)
    assert app.conf.broker_use_ssl == parse_redis_url(settings.redis_url).ssl_options()
    assert app.conf.broker_use_ssl["ssl_cert_reqs"] == ssl.CERT_REQUIRED
    conn = app.connection_for_write()
    assert (conn.transport_cls, conn.hostname, conn.port) == ("rediss", "redis.example", 6380)
    assert (conn.userid, conn.password, conn.virtual_host) == ("paddock", SECRET, "3")
    assert conn.ssl["ssl_ca_certs"] == "/etc/ca.pem"
    # What Celery's banner and its connection errors print.
    assert conn.as_uri() == "rediss://paddock:**@redis.example:6380/3"
    plain = make_celery(Settings.from_env({"PADDOCK_REDIS_URL": "redis://:pw@h:1/0"}))
    assert plain.conf.broker_use_ssl is None
    assert plain.connection_for_write().password == "pw"


def test_server_config_for_a_local_redis_keeps_the_password_out_of_argv() -> None:
    acl = server_config(parse_redis_url(f"redis://paddock:{ENCODED}@127.0.0.1:7000/0"))
    assert acl.splitlines() == [
        "port 7000",
        "bind 127.0.0.1",
        f'user "paddock" on ">{SECRET}" ~* &* +@all',
        "user default off",
    ]
    quoted = server_config(parse_redis_url("redis://:a%22b%5Cc@localhost/0"))
    assert 'requirepass "a\\"b\\\\c"' in quoted
    assert "requirepass" not in server_config(parse_redis_url("redis://localhost/0"))
    for url in ("redis://:pw@10.0.0.5/0", "rediss://:pw@127.0.0.1/0"):
        with pytest.raises(ConfigError):
            server_config(parse_redis_url(url))


def test_the_broker_gets_its_own_url_when_given_one() -> None:
    state = "redis://:statepw@state.internal:6379/0"
    settings = Settings.from_env(
        {
            "PADDOCK_REDIS_URL": state,
            "PADDOCK_BROKER_URL": f"rediss://celery:{ENCODED}@broker.internal:6390/1",
            "PADDOCK_HOST_ID": "h",
        }
    )
    conn = make_celery(settings).connection_for_write()
    assert (conn.transport_cls, conn.hostname, conn.port) == ("rediss", "broker.internal", 6390)
    assert (conn.userid, conn.password, conn.virtual_host) == ("celery", SECRET, "1")
    assert "broker_url='rediss://celery:***@broker.internal:6390/1" in repr(settings)
    assert SECRET not in repr(settings) and ENCODED not in repr(settings)
    # Empty (the default): the broker is PADDOCK_REDIS_URL's Redis, as before.
    same = Settings.from_env({"PADDOCK_REDIS_URL": state, "PADDOCK_BROKER_URL": ""})
    assert same.broker_redis_url == state and "broker_url=''" in repr(same)
    conn = make_celery(same).connection_for_write()
    assert (conn.hostname, conn.password) == ("state.internal", "statepw")


def test_a_bad_broker_url_is_refused_at_once_by_its_name() -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"PADDOCK_BROKER_URL": f"http://u:{ENCODED}@broker/0"})
    assert str(err.value).startswith("PADDOCK_BROKER_URL must start with redis://")
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"PADDOCK_BROKER_URL": f"redis://u:{ENCODED}@/0"})
    assert "PADDOCK_BROKER_URL: no host" in str(err.value)
    assert ENCODED not in str(err.value) and SECRET not in str(err.value)
