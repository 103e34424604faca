"""The egress policy's pure parts: validating a request's network object, the per-sandbox
verdicts, and the host's ruleset text (the real rules are tested in
tests/integration/test_egress.py)."""

from __future__ import annotations

import ipaddress
import random
import threading
from pathlib import Path
from typing import Any

import pytest

from shared.egress import NetworkPolicy, parse_network, sandbox_verdicts
from shared.errors import ConfigError, EgressUnavailable, ValidationFailed
from shared.settings import Settings
from workers.backends.docker import egress as host_egress
from workers.backends.docker.egress import Attached, Egress, attached_from, policy_label

PERMITTED = [ipaddress.IPv4Network("10.20.0.0/16")]


def parse(raw: Any, permitted: list[ipaddress.IPv4Network] = PERMITTED) -> NetworkPolicy:
    return parse_network(raw, default_mode="internet", private_allowed=permitted, where="n")


def test_absent_network_is_the_operators_default() -> None:
    assert parse(None) == NetworkPolicy("internet")
    none = parse_network(None, default_mode="none", private_allowed=[], where="n")
    assert none == NetworkPolicy("none")


def test_entries_are_normalized() -> None:
    p = parse({"allow_out": ["10.20.3.4/24", " 8.8.8.8 "], "deny_out": ["1.2.3.4"]})
    assert p.allow_out == ("10.20.3.0/24", "8.8.8.8/32")
    assert p.deny_out == ("1.2.3.4/32",)
    assert NetworkPolicy.from_json(p.to_json()) == p


@pytest.mark.parametrize(
    ("raw", "field", "words"),
    [
        ("internet", "n", "object"),
        ({"mode": "bridge"}, "n.mode", "internet, none"),
        ({"extra": 1}, "n.extra", "unknown"),
        ({"allow_out": "1.1.1.1"}, "n.allow_out", "list"),
        ({"allow_out": [7]}, "n.allow_out[0]", "string"),
        ({"deny_out": ["300.1.1.1"]}, "n.deny_out[0]", "IPv4"),
        ({"deny_out": ["2001:db8::/32"]}, "n.deny_out[0]", "IPv6"),
        ({"allow_out": ["127.0.0.1"]}, "n.allow_out[0]", "always blocked"),
        ({"allow_out": ["169.254.169.254"]}, "n.allow_out[0]", "always blocked"),
        ({"allow_out": ["10.0.0.0/16"]}, "n.allow_out[0]", "PADDOCK_EGRESS_PRIVATE_ALLOWED"),
        ({"allow_out": ["100.64.0.1"]}, "n.allow_out[0]", "private"),
        ({"mode": "none", "allow_out": ["8.8.8.8"]}, "n.mode", "need mode internet"),
        ({"deny_out": ["8.8.8.8"] * 65}, "n.deny_out", "64"),
    ],
)
def test_bad_networks_name_the_field(raw: Any, field: str, words: str) -> None:
    with pytest.raises(ValidationFailed) as info:
        parse(raw)
    [(where, message)] = info.value.fields.items()
    assert where == field and words in message


def test_permitted_private_ranges_and_broad_entries_are_accepted() -> None:
    assert parse({"allow_out": ["10.20.1.0/24"]}).allow_out == ("10.20.1.0/24",)
    # 10.0.0.0/8 overlaps the permitted /16: accepted, and only that part opens.
    assert parse({"allow_out": ["10.0.0.0/8"]}).allow_out == ("10.0.0.0/8",)
    assert parse({"allow_out": ["0.0.0.0/0"]}).allow_out == ("0.0.0.0/0",)


def test_verdicts_never_open_blocked_or_unpermitted_ranges() -> None:
    closed = [ipaddress.IPv4Network("172.18.0.0/16")]
    v = sandbox_verdicts(
        NetworkPolicy("internet", ("0.0.0.0/0",), ("8.8.8.0/24",)),
        private_allowed=PERMITTED,
        closed=closed,
    )
    accepted = [ipaddress.IPv4Network(c) for verdict, c in v if verdict == "accept"]
    assert v[-1] == ("reject", "8.8.8.0/24")

    def opened(addr: str) -> bool:
        return any(ipaddress.IPv4Address(addr) in n for n in accepted)

    assert opened("10.20.9.9") and opened("8.8.4.4") and opened("203.0.113.80")
    for shut in ("10.1.1.1", "172.18.0.5", "172.16.0.1", "192.168.1.1", "100.64.0.1"):
        assert not opened(shut), shut
    for shut in ("127.0.0.1", "169.254.169.254", "224.0.0.1", "0.1.2.3", "255.255.255.255"):
        assert not opened(shut), shut


def test_plain_policy_has_no_verdicts() -> None:
    assert sandbox_verdicts(NetworkPolicy("internet"), private_allowed=[]) == []


def test_unreadable_stored_policy_means_no_network() -> None:
    assert NetworkPolicy.from_json({"mode": "internet", "allow_out": ["nonsense"]}).mode == "none"
    assert NetworkPolicy.from_json({"mode": "party"}).mode == "none"
    assert NetworkPolicy.from_json(None, default_mode="none").mode == "none"


def test_settings_refuse_bad_cidrs() -> None:
    with pytest.raises(ConfigError, match="PADDOCK_EGRESS_DENY"):
        Settings.from_env({"PADDOCK_EGRESS_DENY": "10.0.0.0/33"})
    with pytest.raises(ConfigError, match="PADDOCK_SANDBOX_NETWORK"):
        Settings.from_env({"PADDOCK_SANDBOX_NETWORK": "bridge"})
    assert Settings().sandbox_network == "internet"


def _egress(**env: str) -> Egress:
    settings = Settings.from_env({"PADDOCK_INSTANCE": "u1", "PADDOCK_HOST_ID": "h", **env})
    e = Egress(None, settings)  # type: ignore[arg-type]
    e.subnet = ipaddress.IPv4Network("172.18.0.0/16")
    e.dns = ["10.255.255.53"]
    return e


def test_ruleset_order_puts_host_blocks_before_sandbox_allows() -> None:
    e = _egress(PADDOCK_EGRESS_DENY="203.0.113.7", PADDOCK_EGRESS_PRIVATE_ALLOWED="10.20.0.0/16")
    e._attached = {
        "sbx-a": Attached("172.18.0.2", NetworkPolicy("internet", ("10.20.0.0/16",))),
        "sbx-b": Attached("172.18.0.3", NetworkPolicy("none")),
    }
    text = e.ruleset()
    lines = text.splitlines()
    assert lines[0] == "*filter" and lines[-1] == "COMMIT"
    fwd = [ln for ln in lines if ln.startswith(f"-A {e.fwd} ")]

    def at(fragment: str) -> int:
        return next(i for i, ln in enumerate(fwd) if fragment in ln)

    # A sandbox with no internet (a warm one until claimed): refused before anything else,
    # replies and the host's resolvers included.
    assert at("-s 172.18.0.3/32 -j REJECT") == 0
    assert at("RELATED,ESTABLISHED -j ACCEPT") == 1
    assert "-s 172.18.0.2/32 -j REJECT" not in text
    assert at("-o pdk+") < at("-d 169.254.0.0/16") < at("-s 172.18.0.2/32")
    assert at("--dport 53") < at("-d 169.254.0.0/16")  # the resolver may be link-local
    assert at("-d 203.0.113.7/32") < at("-s 172.18.0.2/32")  # operator deny: never opened
    assert at("-d 172.18.0.0/16") < at("-s 172.18.0.2/32")  # the sandboxes' own subnet
    assert at("-s 172.18.0.2/32") < at("-d 10.0.0.0/8") < len(fwd) - 1
    assert fwd[-1].endswith("-j RETURN")
    chain_a = e._chain("sbx-a")
    assert f"-A {chain_a} -d 10.20.0.0/16 -j ACCEPT" in lines
    # A sandbox whose stored policy is unreadable gets nothing at all.
    assert f"-A {e._chain('sbx-b')} -j REJECT --reject-with icmp-admin-prohibited" in lines
    assert [ln for ln in lines if ln.startswith(f"-A {e.inp} ")][-1].endswith(
        "icmp-admin-prohibited"
    )


def _claimable(monkeypatch: pytest.MonkeyPatch, fail: bool) -> tuple[Egress, threading.Event]:
    """An egress with one warm (closed) sandbox ``w`` whose restores wait for the returned
    event, then fail when ``fail`` (the firewall itself is not run)."""
    e = _egress()
    e.error = None
    e._attached = {"w": Attached("172.18.0.9", host_egress.CLOSED)}
    go = threading.Event()

    def run(argv: list[str], stdin: str | None = None) -> str:
        assert go.wait(10)
        if fail:
            raise host_egress.FirewallError("iptables-restore failed: no")
        return ""

    monkeypatch.setattr(host_egress, "_run", run)
    return e, go


def test_a_claim_answers_before_its_policy_is_installed_and_settled_waits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    e, go = _claimable(monkeypatch, fail=False)
    policy = NetworkPolicy("internet", ("10.20.0.0/16",))
    e.claim("w", policy)  # returns while the restore waits
    assert e.settled("w", 0.05) is False
    go.set()
    assert e.settled("w", 10) is True
    assert e._attached["w"] == Attached("172.18.0.9", policy)
    assert "-s 172.18.0.9/32 -j REJECT" not in e.ruleset()
    assert e.settled("other", 0) is True  # nothing pending: at once


def test_a_policy_that_cannot_be_installed_leaves_the_sandbox_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    e, go = _claimable(monkeypatch, fail=True)
    e.claim("w", NetworkPolicy("internet"))
    go.set()
    with pytest.raises(EgressUnavailable, match="not installed"):
        e.settled("w", 10)
    with pytest.raises(EgressUnavailable):  # and again: it never opens
        e.settled("w", 0)
    assert e._attached["w"].policy == host_egress.CLOSED
    assert "-s 172.18.0.9/32 -j REJECT" in e.ruleset()
    assert e.error is not None  # the host refuses internet until its rules are checked


def test_a_sandbox_removed_while_its_policy_is_installed_leaves_nothing_behind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Removed before the install thread has the lock (held here; reentrant for the detach).
    e, go = _claimable(monkeypatch, fail=False)
    go.set()
    e._lock = threading.RLock()  # type: ignore[assignment]
    with e._lock:
        e.claim("w", NetworkPolicy("internet"))
        done = e._pending["w"]
        e.detach("w")
    assert done.wait(10)
    assert (e._attached, e._pending, e._broken) == ({}, {}, {})
    assert e.settled("w", 0) is True
    # Removed while the install thread writes its rules (the detach waits for it).
    e, go = _claimable(monkeypatch, fail=True)
    e.claim("w", NetworkPolicy("internet"))
    done = e._pending["w"]
    remover = threading.Thread(target=e.detach, args=("w",))
    remover.start()
    while "w" in e._pending:  # the detach has begun
        remover.join(0.01)
    go.set()
    remover.join(10)
    assert done.is_set() and not remover.is_alive()
    assert (e._attached, e._pending, e._broken) == ({}, {}, {})


def test_a_sandbox_without_rules_is_not_claimed(monkeypatch: pytest.MonkeyPatch) -> None:
    e, go = _claimable(monkeypatch, fail=False)
    go.set()
    with pytest.raises(EgressUnavailable):
        e.claim("nobody", NetworkPolicy("internet"))
    e.error = "stopped"
    with pytest.raises(EgressUnavailable):
        e.claim("w", NetworkPolicy("internet"))
    assert e._attached["w"].policy == host_egress.CLOSED


def test_names_fit_the_kernels_limits() -> None:
    e = _egress(PADDOCK_INSTANCE="a-very-long-instance-name-indeed")
    assert len(e.bridge) <= 15
    assert all(len(c) <= 28 for c in (e.fwd, e.inp, e._chain("abcdefgh-12345678")))


def test_resolvers_follow_docker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stub = tmp_path / "resolv.conf"
    upstream = tmp_path / "upstream.conf"
    stub.write_text("nameserver 127.0.0.53\noptions edns0\n")
    upstream.write_text("nameserver 10.0.0.2\nnameserver 2001:db8::1\nnameserver 9.9.9.9\n")
    monkeypatch.setattr(host_egress, "_RESOLV", stub)
    monkeypatch.setattr(host_egress, "_RESOLV_SYSTEMD", upstream)
    assert host_egress.resolvers(Settings()) == ["10.0.0.2", "9.9.9.9"]
    assert host_egress.resolvers(Settings(sandbox_dns="1.1.1.1,8.8.8.8")) == [
        "1.1.1.1",
        "8.8.8.8",
    ]


def test_running_sandboxes_are_found_with_their_policies() -> None:
    policy = NetworkPolicy("internet", ("8.8.8.8/32",), ("0.0.0.0/0",))
    listed = [
        {
            "Labels": {"paddock.sandbox": "s1", "paddock.network": policy_label(policy)},
            "NetworkSettings": {"Networks": {"net": {"IPAddress": "172.18.0.2"}}},
        },
        {  # no network: nothing to confine
            "Labels": {"paddock.sandbox": "s2"},
            "NetworkSettings": {"Networks": {"none": {"IPAddress": ""}}},
        },
        {  # a label someone broke: confined to nothing
            "Labels": {"paddock.sandbox": "s3", "paddock.network": "{oops"},
            "NetworkSettings": {"Networks": {"net": {"IPAddress": "172.18.0.4"}}},
        },
    ]
    found = attached_from(listed, "net")
    assert found == {
        "s1": Attached("172.18.0.2", policy),
        "s3": Attached("172.18.0.4", NetworkPolicy("none")),
    }


def test_a_hostile_policy_makes_a_bounded_number_of_rules() -> None:
    """Each rule is packet-path work and restore time on the host: a create's rules stay a
    few hundred whatever its 64 + 64 entries are."""
    rng = random.Random(9)
    closed = [ipaddress.IPv4Network("172.18.0.0/16"), ipaddress.IPv4Network("203.0.113.7/32")]
    worst = 0
    for _ in range(200):
        entries = [
            str(ipaddress.IPv4Network((rng.getrandbits(32), rng.randint(1, 32)), strict=False))
            for _ in range(64)
        ]
        policy = NetworkPolicy("internet", tuple(entries), tuple(entries))
        worst = max(worst, len(sandbox_verdicts(policy, private_allowed=PERMITTED, closed=closed)))
    holes = 5 + 4 + len(closed)  # ALWAYS_BLOCKED, PRIVATE, closed
    assert worst <= 64 + 32 * holes + 64
