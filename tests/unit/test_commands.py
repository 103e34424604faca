"""A host command or reply read from Redis is checked field by field: a message with a missing,
wrong-typed or non-object value is refused (TypeError, answered as an internal error by the
host task), never half-used; keys from a newer sender are ignored."""

from __future__ import annotations

from typing import Any

import pytest

from shared import commands as c

_START = {"sandbox_id": "sb1", "tenant_id": "t1", "process_id": "p1", "cmd": "ls", "env": {}}


@pytest.mark.parametrize(
    "kwargs",
    [
        {**_START, "cwd": 7},  # wrong type
        {**_START, "cwd": "", "cmd": ["ls"]},
        {**_START, "cwd": "", "env": {"A": 1}},  # a value inside a dict
        {**_START, "cwd": "", "env": ["A=1"]},
        {**_START, "cwd": "", "sandbox_id": None},
        _START,  # no cwd
    ],
)
def test_a_malformed_command_is_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(TypeError):
        c.ProcessStart.from_kwargs(kwargs)


def test_a_command_takes_what_its_fields_allow() -> None:
    start = c.ProcessStart.from_kwargs({**_START, "cwd": "/", "newer": object()})
    assert start.cwd == "/" and start.env == {}
    create = {"sandbox_id": "sb1", "template": "Bash"}
    assert c.SandboxCreate.from_kwargs({**create, "network": None}).network is None
    assert c.SandboxCreate.from_kwargs({**create, "network": {"mode": "all"}}).network == {
        "mode": "all"
    }
    with pytest.raises(TypeError):
        c.SandboxCreate.from_kwargs({**create, "network": "all"})


@pytest.mark.parametrize(
    ("reply", "raw"),
    [
        (c.Created, None),
        (c.Created, []),
        (c.Created, "h"),
        (c.Created, {}),
        (c.Created, {"host": 1}),
        (c.Written, {"written": "yes"}),
    ],
)
def test_a_malformed_reply_is_refused(reply: type[c.Reply], raw: Any) -> None:
    with pytest.raises(TypeError):
        reply.from_json(raw)


def test_replies_round_trip() -> None:
    for reply in (c.Created("h"), c.Written(True), c.Killed(False), c.Destroyed()):
        assert type(reply).from_json(reply.to_json()) == reply
    assert c.Destroyed().to_json() == {}
    assert c.Killed(True).to_json() == {"killed": True}
