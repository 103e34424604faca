"""A second, private Docker engine for tests that need two: its own dockerd with its own data
root, exec root (and so its own containerd), pid file and unix socket, all under one directory
that is removed at the end.

It cannot disturb the machine's engine: it runs in a network namespace of its own (``unshare
--net``), where its interfaces and rules live and die with it (a dockerd started with
``--bridge=none``, or restarted, deletes the ``docker0`` of the namespace it runs in), with no
default bridge, no iptables rules of its own, and networks from a private /16 that no route of
the machine covers."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import docker
import docker.errors
import requests

# Candidates for the engine's address pool; the first no route of the machine overlaps wins.
_POOLS = [f"10.{n}.0.0/16" for n in range(240, 250)]


def _free_pool() -> str:
    routes = subprocess.run(
        ["ip", "-4", "route"], capture_output=True, text=True, check=True
    ).stdout.split()
    taken = []
    for word in routes:
        with contextlib.suppress(ValueError):
            if "/" in word:
                taken.append(ipaddress.IPv4Network(word, strict=False))
    for pool in _POOLS:
        net = ipaddress.IPv4Network(pool)
        if not any(net.overlaps(t) for t in taken):
            return pool
    raise RuntimeError("no free private /16 for the second engine's networks")


class Engine:
    """A private dockerd. ``url`` is its DOCKER_HOST. Short paths (under /tmp, not pytest's
    deep tmp dirs): containerd's unix sockets live under the exec root, and a socket path has
    at most 107 bytes."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="pdk-e2-", dir="/tmp"))
        self.sock = self.root / "docker.sock"
        self.url = f"unix://{self.sock}"
        self.pidfile = self.root / "dockerd.pid"
        self.log = self.root / "dockerd.log"
        self.pool = _free_pool()
        # An empty config file: whatever /etc/docker/daemon.json says is not ours.
        (self.root / "daemon.json").write_text("{}\n")
        self.proc: subprocess.Popen[bytes] | None = None
        self.live_restore = False

    def argv(self, live_restore: bool) -> list[str]:
        return [
            shutil.which("unshare") or "unshare",
            "--net",
            "--",
            shutil.which("dockerd") or "dockerd",
            "--config-file",
            str(self.root / "daemon.json"),
            "--data-root",
            str(self.root / "data"),
            "--exec-root",
            str(self.root / "exec"),
            "--pidfile",
            str(self.pidfile),
            "-H",
            self.url,
            "--bridge=none",
            "--iptables=false",
            "--ip6tables=false",
            "--ip-masq=false",
            "--default-address-pool",
            f"base={self.pool},size=24",
            *(["--live-restore"] if live_restore else []),
        ]

    def client(self, timeout: float = 60) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.url, timeout=timeout)

    def start(self, live_restore: bool = True, timeout: float = 60) -> None:
        """Start dockerd (as bootstrap does: with live-restore, unless told) and wait until it
        answers. Raises RuntimeError with its log when it does not."""
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.argv(live_restore),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.live_restore = live_restore
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(docker.errors.DockerException, requests.RequestException):
                if self.client(5).ping():
                    return
            time.sleep(0.1)
        raise RuntimeError(f"the second dockerd did not come up:\n{self.log.read_text()[-3000:]}")

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM dockerd and wait for it (and its containerd) to exit. Without live-restore
        it stops its containers first; with it they run on."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def restart(self, live_restore: bool) -> None:
        self.stop()
        self.start(live_restore)

    def load(self, image: str) -> None:
        """Copy ``image`` from the machine's engine: `docker save | docker -H ... load`."""
        save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
        load = subprocess.run(
            ["docker", "-H", self.url, "load", "-q"],
            stdin=save.stdout,
            capture_output=True,
            timeout=300,
        )
        assert save.stdout is not None
        save.stdout.close()
        if save.wait(60) != 0 or load.returncode != 0:
            raise RuntimeError(f"loading {image} failed: {load.stderr.decode(errors='replace')}")

    def destroy(self) -> None:
        """Leave nothing behind: every container and network of this engine removed through
        it (started again for that if it is down), dockerd stopped, any process still running
        from its exec root killed, mounts under the root detached, the root deleted."""
        try:
            if self.proc is None or self.proc.poll() is not None:
                self.start(live_restore=False, timeout=30)
            client = self.client()
            for c in client.containers.list(all=True):
                with contextlib.suppress(docker.errors.DockerException):
                    c.remove(force=True)
            with contextlib.suppress(docker.errors.DockerException):
                client.networks.prune()
        except Exception:  # the steps below still free what they can
            pass
        finally:
            self.stop()
            self._kill_leftovers()
            self._unmount()
            shutil.rmtree(self.root, ignore_errors=True)

    def _kill_leftovers(self) -> None:
        """containerd shims (and their containers' processes, in the shims' groups) of this
        engine that outlived it: their command line names the exec root."""
        marker = str(self.root).encode()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if marker in cmdline:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(int(entry), signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(entry), signal.SIGKILL)

    def _unmount(self) -> None:
        prefix = str(self.root) + "/"
        with open("/proc/mounts") as f:
            points = [line.split()[1] for line in f if line.split()[1].startswith(prefix)]
        # Deepest first; lazily, so a busy one cannot keep the directory.
        for point in sorted(points, key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)
