"""A sandbox's network as the API takes it and the host enforces it: a mode (``internet`` or
``none``) and per-sandbox ``allow_out`` / ``deny_out`` lists of IPv4 CIDRs.

What a sandbox with ``internet`` reaches, in the order the host decides
(workers/backends/docker/egress.py):

1. Replies to connections already allowed, and DNS (port 53) to the host's resolvers only.
2. Never: other sandboxes, the host itself (any of its addresses), ``ALWAYS_BLOCKED`` (loopback,
   link-local with the cloud metadata address, multicast, "this network", reserved) and the
   operator's ``PADDOCK_EGRESS_DENY``. No ``allow_out`` opens these.
3. The sandbox's own ``allow_out`` (accepted; E2B's rule: allowing wins over denying), then its
   ``deny_out`` (refused).
4. ``PRIVATE`` ranges (RFC 1918, CGNAT): refused, except the parts of an ``allow_out`` entry
   that the operator lets sandboxes open with ``PADDOCK_EGRESS_PRIVATE_ALLOWED``.
5. Everything else: the internet, masqueraded behind the host.

IPv6 is off inside sandboxes, so no IPv6 destination is reachable at all.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from shared.errors import ConfigError, ValidationFailed

IPv4Net = ipaddress.IPv4Network

NETWORK_MODES = ("internet", "none")
MAX_ENTRIES = 64

ALWAYS_BLOCKED: tuple[IPv4Net, ...] = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",  # "this network"
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local, the cloud metadata address 169.254.169.254 among them
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, broadcast
    )
)
PRIVATE: tuple[IPv4Net, ...] = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",  # carrier-grade NAT
    )
)


@dataclass(frozen=True)
class NetworkPolicy:
    """A sandbox's network. ``allow_out``/``deny_out`` hold normalized CIDRs (``a.b.c.d/n``)."""

    mode: str = "internet"
    allow_out: tuple[str, ...] = field(default=())
    deny_out: tuple[str, ...] = field(default=())

    @property
    def internet(self) -> bool:
        return self.mode == "internet"

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "allow_out": list(self.allow_out),
            "deny_out": list(self.deny_out),
        }

    @classmethod
    def from_json(cls, raw: object, default_mode: str = "none") -> NetworkPolicy:
        """A policy we stored ourselves (a record, a container label). Anything unreadable is
        the safest policy: no network."""
        if not isinstance(raw, dict):
            return cls(mode=default_mode)
        mode = raw.get("mode")
        if mode not in NETWORK_MODES:
            return cls(mode="none")
        try:
            allow = tuple(str(_net(e)) for e in raw.get("allow_out") or ())
            deny = tuple(str(_net(e)) for e in raw.get("deny_out") or ())
        except (TypeError, ValueError):
            return cls(mode="none")
        return cls(mode=mode, allow_out=allow, deny_out=deny)


NO_NETWORK = NetworkPolicy(mode="none")


def _net(entry: object) -> IPv4Net:
    if not isinstance(entry, str):
        raise TypeError("not a string")
    net = ipaddress.ip_network(entry.strip(), strict=False)
    if not isinstance(net, ipaddress.IPv4Network):
        raise ValueError("not IPv4")
    return net


def parse_cidrs(raw: str, setting: str) -> tuple[IPv4Net, ...]:
    """An operator's comma-separated CIDR list. Raises ConfigError naming ``setting``."""
    out = []
    for entry in (e.strip() for e in raw.split(",")):
        if not entry:
            continue
        try:
            out.append(_net(entry))
        except (TypeError, ValueError):
            raise ConfigError(f"{setting}: {entry!r} is not an IPv4 address or CIDR") from None
    return tuple(out)


def parse_network(
    raw: object, *, default_mode: str, private_allowed: Iterable[IPv4Net], where: str
) -> NetworkPolicy:
    """Validate a request's ``network`` object (``None``: the operator's default mode).

    Raises ValidationFailed naming the field under ``where`` (e.g. ``body.network``).
    """
    if raw is None:
        return NetworkPolicy(mode=default_mode)
    if not isinstance(raw, dict):
        raise ValidationFailed({where: "must be an object with mode, allow_out and deny_out"})
    unknown = sorted(set(raw) - {"mode", "allow_out", "deny_out"})
    if unknown:
        raise ValidationFailed({f"{where}.{unknown[0]}": "unknown field"})
    mode = raw.get("mode", default_mode)
    if mode not in NETWORK_MODES:
        raise ValidationFailed({f"{where}.mode": f"must be one of {', '.join(NETWORK_MODES)}"})
    permitted = tuple(private_allowed)
    lists: dict[str, tuple[str, ...]] = {}
    for name in ("allow_out", "deny_out"):
        value = raw.get(name)
        if value is None:
            value = []
        if not isinstance(value, list):
            raise ValidationFailed({f"{where}.{name}": "must be a list of IPv4 CIDRs"})
        if len(value) > MAX_ENTRIES:
            raise ValidationFailed({f"{where}.{name}": f"at most {MAX_ENTRIES} entries"})
        nets = []
        for i, entry in enumerate(value):
            spot = f"{where}.{name}[{i}]"
            try:
                net = _net(entry)
            except TypeError:
                raise ValidationFailed({spot: "must be a string"}) from None
            except ValueError:
                raise ValidationFailed(
                    {
                        spot: f"{str(entry)[:64]!r} is not an IPv4 address or CIDR "
                        "(sandboxes have no IPv6 route)"
                    }
                ) from None
            if name == "allow_out":
                _check_allowable(net, permitted, spot)
            nets.append(str(net))
        lists[name] = tuple(nets)
    if mode == "none" and (lists["allow_out"] or lists["deny_out"]):
        raise ValidationFailed({f"{where}.mode": "allow_out and deny_out need mode internet"})
    return NetworkPolicy(mode=mode, allow_out=lists["allow_out"], deny_out=lists["deny_out"])


def _check_allowable(net: IPv4Net, permitted: tuple[IPv4Net, ...], spot: str) -> None:
    """An allow_out entry that could open nothing is refused, so nobody believes it did."""
    if any(net.subnet_of(b) for b in ALWAYS_BLOCKED):
        raise ValidationFailed(
            {spot: f"{net} is always blocked (loopback, link-local, multicast or reserved)"}
        )
    if not _exclude([net], [*ALWAYS_BLOCKED, *permitted_closed(permitted)]):
        raise ValidationFailed(
            {
                spot: f"{net} is a private range; an operator can let sandboxes open it with "
                "PADDOCK_EGRESS_PRIVATE_ALLOWED"
            }
        )


def permitted_closed(permitted: Iterable[IPv4Net]) -> list[IPv4Net]:
    """The private ranges a sandbox may not open: PRIVATE minus what the operator permits."""
    return _exclude(PRIVATE, list(permitted))


def _exclude(nets: Iterable[IPv4Net], holes: Iterable[IPv4Net]) -> list[IPv4Net]:
    """``nets`` minus ``holes``, as a collapsed list of CIDRs."""
    pieces = list(ipaddress.collapse_addresses(nets))
    for hole in holes:
        out: list[IPv4Net] = []
        for piece in pieces:
            if hole.subnet_of(piece):
                out.extend(piece.address_exclude(hole))
            elif not piece.subnet_of(hole):
                out.append(piece)
        pieces = list(ipaddress.collapse_addresses(out))
    return pieces


def sandbox_verdicts(
    policy: NetworkPolicy,
    *,
    private_allowed: Iterable[IPv4Net],
    closed: Iterable[IPv4Net] = (),
) -> list[tuple[str, str]]:
    """The ordered (``accept``|``reject``, CIDR) rules of one sandbox's own chain: its allow_out
    minus what it may never open (ALWAYS_BLOCKED, ``closed`` — the operator's deny list and the
    sandboxes' subnet — and the private ranges the operator did not permit), then its
    deny_out."""
    never = [*ALWAYS_BLOCKED, *closed, *permitted_closed(private_allowed)]
    allow = _exclude((ipaddress.IPv4Network(a) for a in policy.allow_out), never)
    deny = ipaddress.collapse_addresses(ipaddress.IPv4Network(d) for d in policy.deny_out)
    return [("accept", str(n)) for n in allow] + [("reject", str(n)) for n in deny]
