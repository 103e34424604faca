"""The E2B control API's translation of its options (web/api/e2b_control/wire.py): network
options onto the egress policy, refused options, list queries as the SDK encodes them, and
page tokens."""

from __future__ import annotations

import urllib.parse
from typing import Any

import fakeredis
import pytest
from marshmallow import ValidationError as MarshmallowError
from werkzeug.datastructures import MultiDict

from shared.egress import NetworkPolicy
from shared.errors import ValidationFailed
from shared.settings import Settings
from shared.store import Sandbox
from web.api.e2b_control import wire
from web.api.e2b_control.schemas import NewSandbox
from web.api.e2b_control.state import Record
from web.sandboxes import Sandboxes


def _sandboxes(mode: str = "internet") -> Sandboxes:
    return Sandboxes(Settings(sandbox_network=mode), fakeredis.FakeRedis(), None)  # type: ignore[arg-type]


def _spec(**body: Any) -> wire.CreateSpec:
    return wire.create_spec(NewSandbox().load({"templateID": "base", **body}), _sandboxes())


@pytest.mark.parametrize(
    ("body", "policy"),
    [
        ({}, NetworkPolicy("internet")),
        ({"allow_internet_access": True}, NetworkPolicy("internet")),
        ({"allow_internet_access": False}, NetworkPolicy("none")),
        (
            {"allow_internet_access": False, "network": {"allowOut": ["1.2.3.4"]}},
            NetworkPolicy("internet", ("1.2.3.4/32",), ("0.0.0.0/0",)),
        ),
        (
            {"network": {"denyOut": ["8.8.0.0/16"]}},
            NetworkPolicy("internet", (), ("8.8.0.0/16",)),
        ),
    ],
)
def test_network_options_map_onto_the_policy(body: dict[str, Any], policy: NetworkPolicy) -> None:
    spec = _spec(**body)
    assert spec.network == policy and spec.template == "standard" and spec.timeout == 300


def test_the_operators_default_mode_applies_when_nothing_is_asked() -> None:
    body = NewSandbox().load({"templateID": "Bash"})
    assert wire.create_spec(body, _sandboxes("none")).network == NetworkPolicy("none")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"autoPause": True}, "autoPause"),
        ({"autoResume": {"enabled": True}}, "autoResume"),
        ({"volumeMounts": [{"name": "v", "path": "/v"}]}, "volumeMounts"),
        ({"mcp": {"server": {}}, "network": {}}, None),  # empty: asks for nothing
        ({"network": {"rules": {}, "egressProxy": None}}, None),
        ({"network": {"rules": {"example.com": [{"transform": {}}]}}}, "network.rules"),
        ({"network": {"dnsServers": ["1.1.1.1"]}}, "network.dnsServers"),
        ({"network": {"allowOut": ["example.com"]}}, "network.allowOut[0]"),
        ({"network": {"allowOut": ["10.0.0.1"]}}, "network.allowOut[0]"),  # private
    ],
)
def test_what_paddock_cannot_honour_is_refused(body: dict[str, Any], field: str | None) -> None:
    if field is None:
        _spec(**body)
        return
    with pytest.raises(ValidationFailed) as caught:
        _spec(**body)
    assert field in caught.value.fields


def test_list_query_reads_what_the_sdk_sends() -> None:
    # The SDK quotes keys and values, urlencodes the pairs, and httpx encodes the parameter.
    metadata = urllib.parse.urlencode({urllib.parse.quote("a b"): urllib.parse.quote("x&y=z")})
    args = MultiDict({"metadata": metadata, "state": "paused", "limit": "5", "order": "asc"})
    q = wire.list_query(args, paged=True)
    assert q.metadata == {"a b": "x&y=z"} and q.states == ("paused",) and q.limit == 5
    assert not q.descending
    assert wire.list_query(MultiDict(), paged=False).states == ("running",)


@pytest.mark.parametrize(
    "args",
    [
        {"state": "stopped"},
        {"limit": "0"},
        {"limit": "101"},
        {"limit": "x"},
        {"order": "up"},
        {"nextToken": "!!!"},
        {"nextToken": "x" * 300},
        {"startedAfter": "yesterday"},
    ],
)
def test_bad_list_queries_are_refused(args: dict[str, str]) -> None:
    with pytest.raises(ValidationFailed):
        wire.list_query(MultiDict(args), paged=True)


def test_pages_follow_each_other_without_gaps_or_repeats() -> None:
    sandboxes = [
        Sandbox(f"s{i}", "t", "h", "Bash", "running", 1000.0 + i // 2, NetworkPolicy("none"))
        for i in range(7)
    ]
    items = [(s, s.sandbox_id) for s in sandboxes]
    for order in ("asc", "desc"):
        seen: list[str] = []
        token = None
        while True:
            args = {"limit": "3", "order": order, **({"nextToken": token} if token else {})}
            got, token = wire.page(wire.list_query(MultiDict(args), paged=True), items)
            seen += got
            if token is None:
                break
        assert sorted(seen) == sorted(s.sandbox_id for s in sandboxes)
        assert len(seen) == len(set(seen))


def test_a_listed_sandbox_says_paused() -> None:
    sandbox = Sandbox("s1", "t", "h", "Bash", "running", 1000.0, NetworkPolicy("none"))
    out = wire.listed(Settings(), sandbox, Record(metadata={"a": "b"}, paused=True), 1300.0)
    assert out["state"] == "paused" and out["endAt"] == "1970-01-01T00:21:40Z"
    assert out["metadata"] == {"a": "b"} and out["memoryMB"] == 1024


@pytest.mark.parametrize("name", ["allowOut", "denyOut"])
def test_network_lists_are_bounded_before_they_are_parsed(name: str) -> None:
    too_many = {"templateID": "base", "network": {name: ["192.0.2.1"] * 65}}
    with pytest.raises(MarshmallowError) as caught:
        NewSandbox().load(too_many)
    assert name in caught.value.messages["network"]  # type: ignore[index, operator]
    too_long = {"templateID": "base", "network": {name: ["1" * 65]}}
    with pytest.raises(MarshmallowError):
        NewSandbox().load(too_long)
    assert NewSandbox().load({"templateID": "base", "network": {name: ["192.0.2.1"] * 64}})
