"""Unit tests of the pure parts of the file-operation and fair-share limits: the worker share
counters, strict JSON parsing, and the settings they read."""

from __future__ import annotations

import threading

import pytest

from shared import tasks
from shared.errors import QuotaExceeded, ValidationFailed, from_wire
from shared.settings import Settings
from web.api.validation import MAX_DEPTH, parse_json, too_deep
from workers.host.shares import WorkerShares
from workers.host.tasks import SHARE_PATIENCE, SHARE_PATIENCE_BY_TASK, share_delay


def test_a_sandbox_gets_its_share_and_no_more() -> None:
    shares = WorkerShares(per_sandbox=2, per_tenant=10)
    with shares.hold("sbx_a", "t1"), shares.hold("sbx_a", "t1"):
        with pytest.raises(QuotaExceeded) as exc, shares.hold("sbx_a", "t1"):
            pass
        assert "PADDOCK_SANDBOX_WORKER_SHARE" in exc.value.message
        assert exc.value.status == 429 and exc.value.retry_after == 1
        # Another sandbox of the same tenant still runs.
        with shares.hold("sbx_b", "t1"):
            assert shares.running("sbx_b", "t1") == (1, 3)
        assert shares.running("sbx_a", "t1") == (2, 2)
    # Released on the way out, refused attempt included: nothing is left counted.
    assert shares.running("sbx_a", "t1") == (0, 0)
    with shares.hold("sbx_a", "t1"):
        pass


def test_a_tenant_gets_its_share_across_its_sandboxes() -> None:
    shares = WorkerShares(per_sandbox=2, per_tenant=3)
    with shares.hold("s1", "t1"), shares.hold("s1", "t1"), shares.hold("s2", "t1"):
        with pytest.raises(QuotaExceeded) as exc, shares.hold("s3", "t1"):
            pass
        assert "PADDOCK_TENANT_WORKER_SHARE" in exc.value.message
        # The refusal took nothing, and another tenant is untouched.
        assert shares.running("s3", "t1") == (0, 3)
        with shares.hold("s4", "t2"):
            pass


def test_a_share_is_released_when_the_task_fails() -> None:
    shares = WorkerShares(per_sandbox=1, per_tenant=1)
    with pytest.raises(RuntimeError), shares.hold("s1", "t1"):
        raise RuntimeError("boom")
    assert shares.running("s1", "t1") == (0, 0)


def test_unknown_tenant_counts_only_the_sandbox() -> None:
    shares = WorkerShares(per_sandbox=2, per_tenant=1)
    with shares.hold("s1", ""), shares.hold("s1", ""):
        assert shares.running("s1", "") == (2, 0)


def test_shares_hold_under_concurrency() -> None:
    shares = WorkerShares(per_sandbox=2, per_tenant=100)
    inside = threading.Barrier(3, timeout=5)
    leave = threading.Event()
    refused: list[int] = []

    def worker() -> None:
        with shares.hold("s1", "t1"):
            inside.wait()
            leave.wait(5)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    inside.wait()
    for _ in range(50):
        try:
            with shares.hold("s1", "t1"):
                pass
        except QuotaExceeded:
            refused.append(1)
    leave.set()
    for t in threads:
        t.join(5)
    assert len(refused) == 50
    assert shares.running("s1", "t1") == (0, 0)


def test_quota_error_crosses_the_reply_channel() -> None:
    sent = QuotaExceeded("share used up (PADDOCK_SANDBOX_WORKER_SHARE)", retry_after=5)
    err = from_wire(sent.wire())
    assert isinstance(err, QuotaExceeded) and err.retry_after == 5
    assert err.message == sent.message


def test_tenant_worker_share_defaults_to_half_the_threads() -> None:
    assert Settings(worker_concurrency=8).tenant_worker_share == 4
    assert Settings(worker_concurrency=5).tenant_worker_share == 2
    assert Settings(worker_concurrency=1).tenant_worker_share == 1
    assert Settings(worker_concurrency=8, tenant_worker_share=6).tenant_worker_share == 6
    env = {"PADDOCK_TENANT_WORKER_SHARE": "3", "PADDOCK_FS_TIMEOUT": "2.5"}
    s = Settings.from_env(env)
    assert (s.tenant_worker_share, s.fs_timeout) == (3, 2.5)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"cmd": "\\ud800"}',  # a lone high surrogate, escaped
        b'{"cmd": "\\udc00x"}',  # a lone low surrogate
        b'{"cmd": "\xed\xa0\x80"}',  # a surrogate encoded as UTF-8 bytes
        b'{"cmd": "\xff"}',  # not UTF-8
        b"[" * 100_000 + b"]" * 100_000,  # past any parser's depth
        b"not json",
        b'{"a": NaN}',
    ],
)
def test_invalid_json_is_a_validation_error(raw: bytes) -> None:
    with pytest.raises(ValidationFailed) as exc:
        parse_json(raw, "requestBody")
    assert list(exc.value.fields) == ["requestBody"]


def test_deep_json_is_refused_before_anything_walks_it() -> None:
    deep = b'{"cmd": ' + b"[" * 1000 + b"]" * 1000 + b"}"
    with pytest.raises(ValidationFailed) as exc:
        parse_json(deep, "body")
    assert "nests more than" in exc.value.fields["body"]
    at_limit = b"[" * MAX_DEPTH + b"]" * MAX_DEPTH
    assert parse_json(at_limit, "body") is not None
    with pytest.raises(ValidationFailed):
        parse_json(b"[" + at_limit + b"]", "body")


def test_valid_json_keeps_its_text() -> None:
    text = "héllo ✓ 😀 \u0000 end"
    assert parse_json('{"content": "héllo ✓ \\ud83d\\ude00 \\u0000 end"}', "x") == {"content": text}


def test_too_deep_counts_objects_and_arrays() -> None:
    assert not too_deep({"a": [1, {"b": 2}]}, 3)
    assert too_deep({"a": [1, {"b": [3]}]}, 3)
    assert not too_deep("scalar", 0)
    assert not too_deep({}, 1)


def test_a_task_over_its_share_is_put_back_briefly_then_refused() -> None:
    delays = []
    while (delay := share_delay(len(delays), SHARE_PATIENCE)) is not None:
        delays.append(delay)
    assert delays[0] == 0.05 and max(delays) == 1.0
    assert SHARE_PATIENCE <= sum(delays) < SHARE_PATIENCE + 1.0
    # Creates wait longer in the queue: a burst of them is served, not refused.
    create = SHARE_PATIENCE_BY_TASK[tasks.SANDBOX_CREATE]
    assert share_delay(len(delays), create) == 1.0
    assert share_delay(100, create) is None
