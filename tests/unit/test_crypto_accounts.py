"""Unit tests of crypto helpers and the account rules (fakeredis: no Lua needed here)."""

from __future__ import annotations

import re

import fakeredis
import pytest

from shared import crypto, keys
from shared.accounts import Accounts
from shared.errors import (
    ApiKeyRevoked,
    ConfigError,
    LimitExceeded,
    OtpInvalid,
    PaddockError,
    RateLimited,
)
from shared.settings import Settings


def test_secret_box_rotation_keeps_old_data_readable() -> None:
    old, new = crypto.new_fernet_key(), crypto.new_fernet_key()
    token = crypto.SecretBox(old).seal({"K": "plain-value"})
    rotated_box = crypto.SecretBox(f"{new},{old}")
    assert rotated_box.open(token) == {"K": "plain-value"}
    rotated = rotated_box.rotate(token)
    assert crypto.SecretBox(new).open(rotated) == {"K": "plain-value"}
    with pytest.raises(PaddockError):
        crypto.SecretBox(new).open(token)
    assert b"plain-value" not in token


@pytest.mark.parametrize("keys", ["", " , ", "not-a-fernet-key"])
def test_secret_box_refuses_bad_keys(keys: str) -> None:
    with pytest.raises(ConfigError):
        crypto.SecretBox(keys)


def test_api_key_and_code_formats() -> None:
    keys = {crypto.new_api_key() for _ in range(200)}
    assert len(keys) == 200
    for k in keys:
        assert re.fullmatch(r"pdk_live_[0-9A-Za-z]{43}", k)
    codes = [crypto.otp_code() for _ in range(200)]
    assert all(re.fullmatch(r"\d{6}", c) for c in codes)
    d = crypto.otp_digest("s", "a@b.c", "123456")
    assert (
        d != crypto.otp_digest("s", "a@b.c", "123457") != crypto.otp_digest("t", "a@b.c", "123456")
    )


def test_settings_repr_hides_secrets() -> None:
    s = Settings.from_env({"PADDOCK_JWT_SECRET": "j" * 40, "PADDOCK_SMTP_URL": "smtp://u:pw@h"})
    assert "jjjj" not in repr(s) and "pw@" not in repr(s) and "redis_url" in repr(s)


def _accounts() -> Accounts:
    return Accounts(fakeredis.FakeRedis(), "otp-secret")


def test_otp_is_single_use_and_burns_after_five_wrong_tries() -> None:
    acc = _accounts()
    code = acc.issue_otp("a@x.io")
    assert code is not None
    assert acc.issue_otp("a@x.io") is None  # one a minute
    acc.check_otp("a@x.io", code)
    with pytest.raises(OtpInvalid):
        acc.check_otp("a@x.io", code)
    acc.r.delete(keys.rate("otp-resend", "a@x.io", 0))
    code = acc.issue_otp("a@x.io")
    assert code is not None
    wrong = "000000" if code != "000000" else "111111"
    for _ in range(5):
        with pytest.raises(OtpInvalid):
            acc.check_otp("a@x.io", wrong)
    with pytest.raises(OtpInvalid):
        acc.check_otp("a@x.io", code)
    with pytest.raises(OtpInvalid):
        acc.check_otp("nobody@x.io", "123456")
    assert not acc.r.exists(keys.otp("nobody@x.io"))


def test_rate_limit_window() -> None:
    acc = _accounts()
    for _ in range(3):
        acc.hit("b", "ip", 3, 60)
    with pytest.raises(RateLimited) as info:
        acc.hit("b", "ip", 3, 60)
    assert 1 <= info.value.retry_after <= 60


def test_api_keys_limit_revoke_and_last_used() -> None:
    acc = _accounts()
    key, plain = acc.create_api_key("usr_1", "a", max_keys=2)
    acc.create_api_key("usr_1", "b", max_keys=2)
    with pytest.raises(LimitExceeded):
        acc.create_api_key("usr_1", "c", max_keys=2)
    assert acc.authenticate(plain) == "usr_1"
    assert acc.authenticate(plain + "x") is None
    assert acc.list_api_keys("usr_1")[0].last_used_at is not None
    assert not acc.revoke_api_key("usr_2", key.key_id)  # another tenant's: no
    assert acc.revoke_api_key("usr_1", key.key_id)
    with pytest.raises(ApiKeyRevoked):
        acc.authenticate(plain)
    # Nothing stored holds the plain key.
    dump = b"".join(
        k + str(acc.r.hgetall(k) if acc.r.type(k) == b"hash" else acc.r.dump(k)).encode()
        for k in acc.r.keys("*")
    )
    assert plain.encode() not in dump and plain[12:].encode() not in dump


def test_rotate_all_reencrypts_every_bundle_with_the_new_key() -> None:
    from shared.secrets import SecretBundles

    r = fakeredis.FakeRedis()
    old, new = crypto.new_fernet_key(), crypto.new_fernet_key()
    for i in range(3):  # written as create() would, without its Lua script
        r.hset(
            keys.secret_bundle("usr_1", f"b{i}"),
            mapping={
                "blob": crypto.SecretBox(old).seal({"K": f"v{i}"}),
                "keys": '["K"]',
                "version": 1,
            },
        )
    r.sadd(keys.secret_users("usr_1", "b0"), "ses_x")  # not a bundle: left alone
    bundles = SecretBundles.__new__(SecretBundles)
    bundles.r, bundles.box = r, crypto.SecretBox(f"{new},{old}")
    assert bundles.rotate_all() == 3
    only_new = crypto.SecretBox(new)
    for i in range(3):
        assert only_new.open(r.hget(keys.secret_bundle("usr_1", f"b{i}"), "blob")) == {"K": f"v{i}"}
