"""How the host runner cuts a process's output bytes into lines (partial lines, UTF-8 split
across reads, huge lines)."""

from __future__ import annotations

from shared.output import STDERR, STDOUT
from workers.host.runner import MAX_LINE, _split


def test_split_keeps_partial_lines_and_cuts_huge_ones() -> None:
    def lines(out: list) -> list[str]:  # as a reader sees them
        return [t for x in out for t in x.text.split("\n")]

    buf = bytearray()
    assert lines(_split(buf, b"a\nb", STDOUT)) == ["a"]
    assert lines(_split(buf, b"c\n\nd\xc3", STDOUT)) == ["bc", ""]
    assert lines(_split(buf, b"\xa9\n", STDOUT)) == ["d\u00e9"]
    assert buf == b""
    assert len(_split(buf, b"x\n" * 1000, STDOUT)) == 1  # one entry for the whole chunk
    long = _split(buf, b"x" * (MAX_LINE * 2 + 5), STDERR)
    assert [len(x.text) for x in long] == [MAX_LINE, MAX_LINE] and len(buf) == 5
