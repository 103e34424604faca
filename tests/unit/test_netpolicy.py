"""Which LLM base URLs an agent session may use (shared/netpolicy.py): private and loopback
addresses only when allowed."""

from __future__ import annotations

import pytest

from shared.netpolicy import BaseUrlRefused, check_base_url


@pytest.mark.parametrize(
    ("url", "allowed", "ok"),
    [
        ("http://127.0.0.1:8080/v1", "", False),
        ("http://localhost/v1", "", False),
        ("http://10.1.2.3/v1", "", False),
        ("http://169.254.169.254/", "", False),
        ("http://[::1]:9/", "", False),
        ("ftp://127.0.0.1/", "127.0.0.1", False),
        ("http://127.0.0.1:8080/v1", "127.0.0.1", True),
        ("http://localhost:8080/v1", "localhost", True),
        ("http://10.1.2.3/v1", "10.0.0.0/8", True),
        ("http://10.1.2.3/v1", "192.168.0.0/16", False),
        ("http://8.8.8.8/v1", "", True),
    ],
)
def test_base_url_policy(url: str, allowed: str, ok: bool) -> None:
    # Literal addresses and localhost only: nothing here needs a DNS server.
    if ok:
        check_base_url(url, allowed)
    else:
        with pytest.raises(BaseUrlRefused):
            check_base_url(url, allowed)
