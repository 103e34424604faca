"""The host side of the egress policy (shared/egress.py): the sandboxes' Docker network and the
firewall rules that confine it.

Sandboxes with ``internet`` sit on one Docker bridge network per host worker, made with
inter-container traffic off and a bridge name of our own (``pdk<hash>``). The host's kernel
enforces the rest in the ``filter`` table, in chains this module owns (``PDK-<hash>-…``):

- ``DOCKER-USER`` (which Docker jumps to first in ``FORWARD``) sends everything that comes in
  from the bridge to ``PDK-<hash>-FWD``: everything from a sandbox with no internet on the
  network (a warm pool's until claimed) is refused, replies pass, DNS to the host's resolvers
  passes, traffic to any Paddock sandbox bridge, ``ALWAYS_BLOCKED``, the operator's deny list
  and the sandboxes' own subnet is refused, then each sandbox's own chain (its ``allow_out``
  accepted, its ``deny_out`` refused, found by its address), then the private ranges are
  refused, and the rest goes on to Docker's rules, which accept and masquerade it.
- ``INPUT`` sends everything from the bridge to ``PDK-<hash>-IN``: only replies reach the host;
  nothing a sandbox starts reaches any address or port of the host, the gateway included.
- IPv6 is switched off inside sandboxes (sysctl); ``ip6tables`` drops the bridge's IPv6 too.

A sandbox has no capabilities, so it can neither change these rules nor its own address. The
rules are installed (idempotently: our chains are rewritten whole, in one ``iptables-restore``
transaction) when the worker starts, checked at every heartbeat and put back if someone
removed them, rewritten when a sandbox comes or goes, and removed when the worker stops with
no sandbox left behind them. While they are missing or failed, ``error`` says why and the host
refuses to start sandboxes with ``internet``.

A claimed warm sandbox's policy (``claim``) is installed by a thread of its own, after the
claim has answered: its rules stay closed until then, and ``settled`` lets the backend hold
back anything asked of the sandbox until they are in place (a firewall commit costs ~15 ms).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import re
import subprocess
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors

from shared.egress import ALWAYS_BLOCKED, PRIVATE, NetworkPolicy, parse_cidrs, sandbox_verdicts
from shared.errors import EgressUnavailable
from shared.settings import Settings

logger = logging.getLogger(__name__)

LABEL_NETWORK = "paddock.network"
_TIMEOUT = 15.0  # any one iptables / ip6tables call
_REJECT = ["-j", "REJECT", "--reject-with", "icmp-admin-prohibited"]
_REPLIES = ["-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED"]
_RESOLV = Path("/etc/resolv.conf")
_RESOLV_SYSTEMD = Path("/run/systemd/resolve/resolv.conf")
# The policy of a sandbox on our network that may reach nothing (a warm one until claimed).
CLOSED = NetworkPolicy(mode="none")


class FirewallError(Exception):
    pass


@dataclass(frozen=True)
class Attached:
    ip: str
    policy: NetworkPolicy


def resolvers(settings: Settings) -> list[str]:
    """The IPv4 DNS servers the sandboxes' queries go to: PADDOCK_SANDBOX_DNS, else the ones
    Docker's embedded DNS forwards to (the host's resolv.conf, systemd-resolved's upstream
    file when the host points at its local stub; loopback servers are skipped, as Docker
    does)."""
    if settings.sandbox_dns:
        return [
            str(n.network_address) for n in parse_cidrs(settings.sandbox_dns, "PADDOCK_SANDBOX_DNS")
        ]
    found = _nameservers(_RESOLV)
    if found and all(ipaddress.ip_address(a).is_loopback for a in found):
        found = _nameservers(_RESOLV_SYSTEMD)
    return [a for a in found if not ipaddress.ip_address(a).is_loopback]


def _nameservers(path: Path) -> list[str]:
    try:
        text = path.read_text()
    except OSError:
        return []
    out = []
    for m in re.finditer(r"^\s*nameserver\s+(\S+)", text, re.M):
        try:
            if ipaddress.ip_address(m.group(1)).version == 4:
                out.append(m.group(1))
        except ValueError:
            continue
    return out


class Egress:
    """One host worker's sandbox network and its rules. Thread-safe."""

    def __init__(self, client: docker.DockerClient, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        tag = hashlib.sha1(f"{settings.instance}/{settings.host_id}".encode()).hexdigest()[:8]
        self.network = (
            f"paddock-{settings.instance}-{re.sub(r'[^A-Za-z0-9_.-]', '_', settings.host_id)}"
        )
        self.bridge = f"pdk{tag}"  # <= 15 characters, the kernel's limit
        self.prefix = f"PDK-{tag}-"
        self.fwd = self.prefix + "FWD"
        self.inp = self.prefix + "IN"
        self.deny = parse_cidrs(settings.egress_deny, "PADDOCK_EGRESS_DENY")
        self.private_allowed = parse_cidrs(
            settings.egress_private_allowed, "PADDOCK_EGRESS_PRIVATE_ALLOWED"
        )
        self.dns = resolvers(settings)
        self.subnet: ipaddress.IPv4Network | None = None
        self.error: str | None = "not set up yet"
        self._attached: dict[str, Attached] = {}
        self._lock = threading.Lock()  # held while our rules are written
        # Claimed sandboxes whose policy a thread is installing (``claim``): each event is set
        # once it is in place or failed (then ``_broken`` says why). Never held for long.
        self._pending: dict[str, threading.Event] = {}
        self._broken: dict[str, str] = {}
        self._claims = threading.Lock()

    # -- life of the rules -------------------------------------------------------------------
    def setup(self, running: dict[str, Attached]) -> None:
        """Make the network and install every rule, for ``running`` sandboxes (found on this
        host at start) too. Never raises: a failure is logged and kept in ``error``."""
        with self._lock:
            self._attached = dict(running)
            try:
                self._ensure_network()
                self._apply()
            except (FirewallError, docker.errors.DockerException, OSError) as exc:
                self._fail(f"could not install the egress rules: {exc}")
                return
            self.error = None
        logger.info(
            "egress: network %s (bridge %s, %s) confined by chains %s*; DNS allowed to %s",
            self.network,
            self.bridge,
            self.subnet,
            self.prefix,
            ", ".join(self.dns) or "nothing",
        )

    def check(self) -> str | None:
        """At every heartbeat: the rules are still in place (an operator's `iptables -F` or a
        firewall reload can remove them); put them back if not. Returns ``error``."""
        # Looked at without the lock first (reads; every rewrite is one transaction), so that
        # a check does not hold up the creates and claims that write rules meanwhile.
        if self.subnet is not None and self.error is None and self._in_place():
            return None
        with self._lock:
            try:
                if self.subnet is None:
                    self._ensure_network()
                    self._apply()
                elif not self._in_place():
                    logger.error("egress: the rules were removed by someone; installing them again")
                    self._apply()
            except (FirewallError, docker.errors.DockerException, OSError) as exc:
                self._fail(f"the egress rules are missing and could not be installed: {exc}")
                return self.error
            if self.error is not None:
                logger.info("egress: rules in place again; sandboxes may have the internet")
            self.error = None
            return None

    def teardown(self) -> None:
        """At worker stop: remove the rules and the network, unless sandboxes still run
        behind them (they outlive a worker restart; removing the rules would open them)."""
        with self._lock:
            try:
                net = self.client.networks.get(self.network)
                users = len(net.attrs.get("Containers") or {})
            except docker.errors.NotFound:
                net, users = None, 0
            except docker.errors.DockerException as exc:
                logger.warning("egress: rules kept: cannot tell whether sandboxes remain (%s)", exc)
                return
            if users:
                logger.info("egress: rules kept: %d sandboxes still run behind them", users)
                return
            self._remove_rules()
            if net is not None:
                try:
                    net.remove()
                except docker.errors.DockerException as exc:
                    logger.warning("egress: network %s not removed: %s", self.network, exc)
            self._attached.clear()
            self.error = "stopped"
            logger.info("egress: rules and network %s removed", self.network)

    # -- sandboxes ---------------------------------------------------------------------------
    def require(self) -> None:
        """Raises EgressUnavailable when the rules are not in place."""
        if self.error is not None:
            raise EgressUnavailable(
                f"host {self.settings.host_id} gives no sandbox the internet: {self.error}. "
                "Create it with network mode none, or see the worker's log"
            )

    def attach(self, sandbox_id: str, ip: str, policy: NetworkPolicy) -> None:
        """Install the sandbox's own rules, keyed by its address. Raises EgressUnavailable."""
        with self._lock:
            # An address is reused once its sandbox is gone: the newest owner's rules win.
            replaced = [other for other, a in self._attached.items() if a.ip == ip]
            for other in replaced:
                del self._attached[other]
            self._attached[sandbox_id] = Attached(ip, policy)
            try:
                self._apply(gone=replaced, full=False, rewrite=[sandbox_id])
            except FirewallError as exc:
                del self._attached[sandbox_id]
                self._fail(f"could not install a sandbox's rules: {exc}")
                raise EgressUnavailable(f"could not confine the sandbox's network: {exc}") from exc

    def claim(self, sandbox_id: str, policy: NetworkPolicy) -> None:
        """Give a warm sandbox (attached with CLOSED) its tenant's ``policy`` without waiting
        for the firewall: a thread of its own installs it, and ``settled`` waits for that.
        Until then its rules are the closed ones, so nothing leaves it before its policy is
        in place. Raises EgressUnavailable (the rules are not in place now, or the sandbox
        has none here)."""
        self.require()
        if sandbox_id not in self._attached:  # (one read: no need to wait for the lock)
            raise EgressUnavailable("the sandbox has no network rules on this host")
        done = threading.Event()
        with self._claims:
            self._pending[sandbox_id] = done
            self._broken.pop(sandbox_id, None)
        threading.Thread(
            target=self._install,
            args=(sandbox_id, policy, done),
            name=f"egress-{sandbox_id}",
            daemon=True,
        ).start()

    def _install(self, sandbox_id: str, policy: NetworkPolicy, done: threading.Event) -> None:
        why: str | None = None
        try:
            with self._lock:
                found = self._attached.get(sandbox_id)
                if found is None:
                    why = "its rules were removed"  # detached meanwhile: it is being removed
                    return
                self._attached[sandbox_id] = Attached(found.ip, policy)
                try:
                    self._apply(full=False, rewrite=[sandbox_id])
                except FirewallError as exc:
                    # One transaction: the closed rules are still those in force, and stay.
                    self._attached[sandbox_id] = found
                    why = str(exc)
                    self._fail(f"could not install a sandbox's rules: {exc}")
        except Exception as exc:  # never leave a waiter hanging
            logger.exception("egress: sandbox %s: installing its rules failed", sandbox_id)
            why = why or f"unexpected error: {exc}"
        finally:
            with self._claims:
                if self._pending.get(sandbox_id) is done:
                    if why is None:
                        del self._pending[sandbox_id]
                    else:
                        self._broken[sandbox_id] = why
            done.set()

    def settled(self, sandbox_id: str, timeout: float) -> bool:
        """Wait until a claimed sandbox's policy is installed (any other sandbox: at once).
        False when it is not within ``timeout`` seconds. Raises EgressUnavailable when it
        could not be installed (the sandbox's rules stay closed)."""
        with self._claims:
            done = self._pending.get(sandbox_id)
        if done is None:
            return True
        if not done.wait(timeout):
            return False
        with self._claims:
            why = self._broken.get(sandbox_id)
        if why is not None:
            raise EgressUnavailable(f"the sandbox's network rules were not installed: {why}")
        return True

    def detach(self, sandbox_id: str) -> None:
        with self._claims:
            self._pending.pop(sandbox_id, None)
            self._broken.pop(sandbox_id, None)
        with self._lock:
            if self._attached.pop(sandbox_id, None) is None:
                return
            try:
                self._apply(gone=[sandbox_id], full=False)
            except FirewallError as exc:  # its chain stays until the next rewrite: harmless
                logger.warning("egress: sandbox %s's rules not removed: %s", sandbox_id, exc)

    def address(self, sandbox_id: str) -> str | None:
        """The sandbox's address on our network, when it has rules here (None: no internet).
        One read of the table, so it does not wait for rules being written."""
        found = self._attached.get(sandbox_id)
        return found.ip if found else None

    def container_ip(self, container_id: str) -> str:
        attrs = self.client.api.inspect_container(container_id)
        ip = attrs["NetworkSettings"]["Networks"][self.network]["IPAddress"]
        if not ip:
            raise EgressUnavailable("the sandbox got no address on its network")
        return str(ip)

    # -- internals ---------------------------------------------------------------------------
    def setup_failed(self, reason: str) -> None:
        """The rules could not be set up (the caller could not even list the sandboxes)."""
        with self._lock:
            self._fail(reason)

    def _fail(self, reason: str) -> None:
        self.error = reason
        logger.error("egress: %s; sandboxes with internet are refused until this is fixed", reason)

    def _ensure_network(self) -> None:
        options = {
            "com.docker.network.bridge.enable_icc": "false",
            "com.docker.network.bridge.enable_ip_masquerade": "true",
            "com.docker.network.bridge.name": self.bridge,
        }
        try:
            net = self.client.networks.get(self.network)
            if (net.attrs.get("Options") or {}).get(
                "com.docker.network.bridge.enable_icc"
            ) != "false":
                raise FirewallError(
                    f"network {self.network} exists with inter-container traffic on"
                )
        except docker.errors.NotFound:
            net = self.client.networks.create(
                self.network,
                driver="bridge",
                options=options,
                enable_ipv6=False,
                labels={
                    "paddock.instance": self.settings.instance,
                    "paddock.host": self.settings.host_id,
                },
            )
            net.reload()
        configs = (net.attrs.get("IPAM") or {}).get("Config") or []
        subnets = [c["Subnet"] for c in configs if c.get("Subnet") and ":" not in c["Subnet"]]
        if not subnets:
            raise FirewallError(f"network {self.network} has no IPv4 subnet")
        self.subnet = ipaddress.IPv4Network(subnets[0])

    def _chain(self, sandbox_id: str) -> str:
        return self.prefix + "S" + hashlib.sha1(sandbox_id.encode()).hexdigest()[:12]

    def ruleset(self, rewrite: Iterable[str] | None = None) -> str:
        """Our chains in iptables-restore's format (applied with --noflush: a chain declared
        here is emptied and refilled; nobody else's rules are touched). The shared chains
        always; of the sandboxes' own chains those of ``rewrite`` (None: all) — the others
        are left as they are, so a create costs the same with 1 or 32 sandboxes."""
        assert self.subnet is not None
        redo = sorted(self._attached if rewrite is None else set(rewrite) & set(self._attached))
        chains = [self.fwd, self.inp] + [self._chain(s) for s in redo]
        lines = ["*filter"] + [f":{c} - [0:0]" for c in chains]
        f = f"-A {self.fwd}"
        # A sandbox with no internet on this network (a warm one until claimed, one whose
        # policy is unreadable): nothing at all, not even a reply or the host's resolvers.
        for _, a in sorted(self._attached.items()):
            if not a.policy.internet:
                lines.append(f"{f} -s {a.ip}/32 {' '.join(_REJECT)}")
        # ACCEPT, not RETURN: Docker's isolation between its networks would drop the rest of
        # a flow the policy let start (to a service in a container on a range the operator opened).
        lines.append(f"{f} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")
        # Each sandbox's share of the host's conntrack table (which, full, drops every new
        # connection of the host): past it, new flows are refused until some close.
        lines.append(
            f"{f} -m conntrack --ctstate NEW -m connlimit --connlimit-above "
            f"{self.settings.sandbox_max_flows} --connlimit-mask 32 --connlimit-saddr "
            + " ".join(_REJECT)
        )
        lines.append(f"{f} -o pdk+ {' '.join(_REJECT)}")  # any Paddock sandbox, ICC or not
        for server in self.dns:
            for proto in ("udp", "tcp"):
                lines.append(f"{f} -d {server}/32 -p {proto} -m {proto} --dport 53 -j RETURN")
        for net in (*ALWAYS_BLOCKED, *self.deny, self.subnet):
            lines.append(f"{f} -d {net} {' '.join(_REJECT)}")
        closed = [*self.deny, self.subnet]
        for sandbox_id, a in sorted(self._attached.items()):
            chain = self._chain(sandbox_id)
            lines.append(f"{f} -s {a.ip}/32 -j {chain}")
            if sandbox_id not in redo:
                continue
            if not a.policy.internet:  # an unreadable policy (from_json): nothing at all
                lines.append(f"-A {chain} {' '.join(_REJECT)}")
                continue
            verdicts = sandbox_verdicts(
                a.policy, private_allowed=self.private_allowed, closed=closed
            )
            for verdict, cidr in verdicts:
                target = "-j ACCEPT" if verdict == "accept" else " ".join(_REJECT)
                lines.append(f"-A {chain} -d {cidr} {target}")
        for net in PRIVATE:
            lines.append(f"{f} -d {net} {' '.join(_REJECT)}")
        lines.append(f"{f} -j RETURN")
        i = f"-A {self.inp}"
        lines.append(f"{i} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")
        lines.append(f"{i} {' '.join(_REJECT)}")
        lines.append("COMMIT")
        return "\n".join(lines) + "\n"

    def _apply(
        self, gone: Iterable[str] = (), full: bool = True, rewrite: Iterable[str] = ()
    ) -> None:
        """Rewrite our chains: ``full``, all of them, (re)hooked into the system's chains,
        and every stale sandbox chain dropped; else the shared ones and the ``rewrite``
        sandboxes' own, and the ``gone`` sandboxes' chains dropped."""
        _run(["iptables-restore", "--noflush"], self.ruleset(None if full else rewrite))
        if full:
            for tool, parent, rule in self._hooks():
                if tool == "iptables" and not _ok([tool, "-w", "5", "-C", parent, *rule]):
                    _run([tool, "-w", "5", "-I", parent, "1", *rule])
            self._ipv6_closed()
            keep = {self._chain(s) for s in self._attached}
            stale = [c for c in self._our_chains() if c.startswith(self.prefix + "S")]
            gone_chains = [c for c in stale if c not in keep]
        else:
            gone_chains = [self._chain(s) for s in gone if s not in self._attached]
        for chain in gone_chains:  # unreferenced since the rewrite
            _ok(["iptables", "-w", "5", "-F", chain])
            _ok(["iptables", "-w", "5", "-X", chain])

    def _hooks(self) -> list[tuple[str, str, list[str]]]:
        """Where the system's chains lead into ours (each inserted first in its chain)."""
        v6 = self.prefix + "V6"
        return [
            ("iptables", "DOCKER-USER", ["-i", self.bridge, "-j", self.fwd]),
            # Replies to what a sandbox was let reach: Docker's isolation between its networks
            # would drop them when the destination is another Docker network (an operator's
            # service in a container, on a private range the operator opened).
            (
                "iptables",
                "DOCKER-USER",
                ["-o", self.bridge, *_REPLIES, "-j", "ACCEPT"],
            ),
            ("iptables", "INPUT", ["-i", self.bridge, "-j", self.inp]),
            ("ip6tables", "INPUT", ["-i", self.bridge, "-j", v6]),
            ("ip6tables", "FORWARD", ["-i", self.bridge, "-j", v6]),
        ]

    def _in_place(self) -> bool:
        return all(
            _ok([tool, "-w", "5", "-C", parent, *rule])
            for tool, parent, rule in self._hooks()
            if tool == "iptables"
        ) and _ok(["iptables", "-w", "5", "-C", self.fwd, "-j", "RETURN"])

    def _ipv6_closed(self) -> None:
        """Belt and braces: IPv6 is off inside sandboxes; should it come on, the host drops
        it. A host without ip6tables has no IPv6 forwarding to close."""
        chain = self.prefix + "V6"
        try:
            _run(
                ["ip6tables-restore", "--noflush"],
                f"*filter\n:{chain} - [0:0]\n-A {chain} -j DROP\nCOMMIT\n",
            )
            for tool, parent, rule in self._hooks():
                if tool == "ip6tables" and not _ok([tool, "-w", "5", "-C", parent, *rule]):
                    _run([tool, "-w", "5", "-I", parent, "1", *rule])
        except FirewallError as exc:
            logger.warning("egress: no IPv6 rules (%s); IPv6 stays off inside sandboxes", exc)

    def _our_chains(self, tool: str = "iptables") -> list[str]:
        try:
            out = _run([tool, "-w", "5", "-S"])
        except FirewallError:
            return []
        return [ln.split()[1] for ln in out.splitlines() if ln.startswith("-N " + self.prefix)]

    def _remove_rules(self) -> None:
        for tool, parent, rule in self._hooks():
            while _ok([tool, "-w", "5", "-D", parent, *rule]):
                pass
        for tool in ("iptables", "ip6tables"):
            chains = self._our_chains(tool)
            for chain in chains:
                _ok([tool, "-w", "5", "-F", chain])
            for chain in chains:
                _ok([tool, "-w", "5", "-X", chain])


def _run(argv: list[str], stdin: str | None = None) -> str:
    """Run a firewall command. Raises FirewallError with its message."""
    try:
        done = subprocess.run(
            argv, input=stdin, capture_output=True, text=True, timeout=_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FirewallError(f"{argv[0]}: {exc}") from exc
    if done.returncode != 0:
        raise FirewallError(f"{argv[0]} failed: {(done.stderr or done.stdout).strip()[:300]}")
    return done.stdout


def _ok(argv: list[str]) -> bool:
    try:
        _run(argv)
    except FirewallError:
        return False
    return True


def policy_label(policy: NetworkPolicy) -> str:
    return json.dumps(policy.to_json(), separators=(",", ":"))


def attached_from(containers: Iterable[dict], network: str) -> dict[str, Attached]:
    """The sandboxes found running on this host at start (low-level container listings):
    their addresses on our network and their policies, from their labels."""
    out: dict[str, Attached] = {}
    for c in containers:
        labels = c.get("Labels") or {}
        sandbox_id = labels.get("paddock.sandbox")
        net = ((c.get("NetworkSettings") or {}).get("Networks") or {}).get(network)
        if not sandbox_id or not net or not net.get("IPAddress"):
            continue
        try:
            raw = json.loads(labels.get(LABEL_NETWORK, ""))
        except ValueError:
            raw = None
        out[sandbox_id] = Attached(net["IPAddress"], NetworkPolicy.from_json(raw))
    return out
