"""The shapes of sandbox and process ids (what the E2B SDKs accept), and that they do not repeat."""

from __future__ import annotations

import re

from shared import ids


def test_ids() -> None:
    for _ in range(100):
        assert re.fullmatch(r"[A-Za-z0-9]{12}", ids.process_id())
        assert re.fullmatch(r"[a-z0-9]{8}-[0-9a-f]{8}", ids.sandbox_id())
    assert len({ids.process_id() for _ in range(1000)}) == 1000
