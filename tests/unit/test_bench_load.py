"""The pure parts of ``make load`` (bench/load.py): the phase figures and table, and the
HTTP/1.1 reader its long-polls use."""

from __future__ import annotations

import pytest

from bench.load import Phase, parse_response, phase_table


def test_phase_counts_successes_and_errors_by_status() -> None:
    ph = Phase("exec", clients=2, wall=2.0)
    for s in (0.1, 0.2, 0.3, 0.4):
        ph.record(s)
    ph.record(0.5, "429")
    ph.record(0.0, "timeout")
    ph.record(0.5, "429")
    assert ph.ok == 4
    assert ph.rate == 2.0  # failures are not throughput
    assert ph.errors == {"429": 2, "timeout": 1}
    assert ph.ms(50) == pytest.approx(250.0)
    out = ph.to_json()
    assert out["errors"] == {"429": 2, "timeout": 1}
    assert out["p99_ms"] == pytest.approx(397.0)


def test_empty_phase_has_no_percentiles_and_no_rate() -> None:
    ph = Phase("long-poll", clients=1000)
    ph.record(0.0, "no answer")
    assert (ph.ok, ph.rate, ph.ms(50)) == (0, 0.0, None)
    assert ph.to_json()["p50_ms"] is None


def test_table_has_a_row_per_phase_and_lists_errors() -> None:
    good = Phase("create (POST /sessions)", clients=10, wall=10.0, latencies=[0.5] * 30)
    bad = Phase("exec echo 22 (wait=true)", clients=20, wall=1.0)
    bad.record(0.1, "500")
    table = phase_table([good, bad]).splitlines()
    assert table[0].split()[:3] == ["phase", "clients", "ok"]
    row = next(line for line in table if line.startswith("create"))
    assert row.split()[-8:] == ["10", "30", "0", "3.00", "500", "500", "500", "10.0"]
    row = next(line for line in table if line.startswith("exec"))
    assert row.split()[-8:] == ["20", "0", "1", "0.00", "-", "-", "-", "1.0"]
    assert table[-1] == "errors in exec echo 22 (wait=true): 500: 1"


def test_parse_response_plain_and_chunked() -> None:
    plain = b"HTTP/1.1 429 TOO MANY\r\nContent-Length: 2\r\nRetry-After: 2\r\n\r\n{}"
    assert parse_response(plain) == (429, b"{}")
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\nb;ext=1\r\n, long-poll\r\n0\r\n\r\n"
    )
    assert parse_response(chunked) == (200, b"hello, long-poll")


@pytest.mark.parametrize(
    "raw",
    [
        b"",  # the server closed without answering
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n",  # cut inside the headers
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}",  # body cut short
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",  # chunk cut short
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",  # no last chunk
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  # bad chunk size
        b"SSH-2.0-OpenSSH\r\n\r\n",  # not HTTP
    ],
)
def test_parse_response_refuses_what_is_not_a_whole_answer(raw: bytes) -> None:
    with pytest.raises(ValueError):
        parse_response(raw)
