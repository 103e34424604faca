"""Disk abuse: a sandbox can fill only its own capped storage, never the host's disk.

The stack runs with a 64 MiB cap (``PADDOCK_SANDBOX_DISK``) so that filling it is quick; the
attacks ask for gigabytes, which an uncapped sandbox would take from the host at once.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from devstack.stack import Stack
from shared.errors import NoCapacity
from shared.settings import Settings
from shared.store import Store
from tests.integration.client import Client, stderr_lines, stdout_lines
from tests.integration.storage_helpers import host_traces, storage_of
from workers.backends.docker.storage import SandboxStorage, StorageError

CAP = 64 << 20
HOST = "solo"
WRITABLE = ["/home/user", "/workspace", "/tmp", "/var/tmp", "/dev/shm"]
NO_SPACE = "No space left on device"
# Other work on the machine (builds, logs, other tests) moves the host's free space too; the
# attacks below would take 15 GB without the cap.
HOST_SLACK = 1 << 30


@pytest.fixture(scope="module")
def st(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"PADDOCK_SANDBOX_DISK": "64m"}
    with Stack(tmp_path_factory.mktemp("disk"), hosts=(HOST,), env=env) as stack:
        yield stack


@pytest.fixture(scope="module")
def api(st: Stack) -> Client:
    return Client(st)


def wait_until(check: Callable[[], bool], timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return check()


def test_every_write_shares_one_cap_and_fails_with_enospc(st: Stack, api: Client) -> None:
    victim, attacker = api.sandbox("Bash"), api.sandbox("Bash")
    # Every writable path works, and the image's own home content is there.
    probe = "; ".join(f"echo ok > {d}/probe && cat {d}/probe" for d in WRITABLE)
    assert stdout_lines(api.run(attacker, probe)) == ["ok"] * len(WRITABLE)
    assert {".bashrc", ".profile"} <= set(stdout_lines(api.run(attacker, "ls -A /home/user")))

    root = st.workdir / "storage"
    free_before = shutil.disk_usage(root).free
    lowest = [free_before]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            lowest[0] = min(lowest[0], shutil.disk_usage(root).free)
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        # 3 GB asked in each writable path, then filled with dd until the cap stops it.
        big = "; ".join(f"fallocate -l 3G {d}/big" for d in WRITABLE)
        assert stderr_lines(api.run(attacker, big)) == [
            f"fallocate: fallocate failed: {NO_SPACE}"
        ] * len(WRITABLE)
        out = api.run(attacker, "dd if=/dev/zero of=/home/user/fill bs=1M count=3000")
        assert any(NO_SPACE in line for line in stderr_lines(out))
        # Full for every path at once: they share the one cap.
        more = "; ".join(f"head -c 1048576 /dev/zero > {d}/more || echo {d} full" for d in WRITABLE)
        out = api.run(attacker, more)
        assert stdout_lines(out) == [f"{d} full" for d in WRITABLE]
        assert sum(NO_SPACE in line for line in stderr_lines(out)) == len(WRITABLE)
        # Space given back is usable again, still shared: 40 MiB fit once, not twice.
        # (A failed fallocate may keep what it got before the cap stopped it: remove all.)
        clean = " ".join(f"{d}/big {d}/more" for d in WRITABLE)
        out = api.run(
            attacker,
            f"rm -f /home/user/fill {clean}; head -c 40M /dev/zero > /tmp/a && echo tmp ok;"
            " head -c 40M /dev/zero > /dev/shm/b || echo shm full",
        )
        assert stdout_lines(out) == ["tmp ok", "shm full"]
    finally:
        done.set()
        watcher.join()

    image = storage_of(st, HOST, attacker) / "disk.img"
    stat = image.stat()
    assert stat.st_size == CAP
    assert stat.st_blocks * 512 <= CAP + (1 << 20)  # + the host's extent blocks
    assert free_before - lowest[0] < CAP + HOST_SLACK
    # The neighbour still writes and runs.
    out = api.run(victim, "head -c 1048576 /dev/zero > ~/ok && stat -c %s ~/ok && echo alive")
    assert stdout_lines(out) == ["1048576", "alive"]
    for sid in (victim, attacker):
        assert api.req("DELETE", f"/sessions/{sid}").status_code == 204


def test_the_image_is_read_only_and_storage_is_nosuid_nodev(api: Client) -> None:
    sid = api.sandbox("Bash")
    paths = ["/", "/etc", "/usr", "/opt", "/var", "/usr/local/bin"]
    out = api.run(sid, "; ".join(f"touch {p}/paddock-x" for p in paths))
    errors = stderr_lines(out)
    assert len(errors) == len(paths)
    assert all("Read-only file system" in e for e in errors), errors
    # The sandbox's own view of its mounts: a read-only root, and the writable paths without
    # setuid or device files.
    mounts = {
        parts[4]: parts[5]
        for parts in (
            line.split() for line in stdout_lines(api.run(sid, "cat /proc/self/mountinfo"))
        )
    }
    assert "ro" in mounts["/"].split(",")
    for path in WRITABLE:
        flags = mounts[path].split(",")
        assert "rw" in flags and "nosuid" in flags and "nodev" in flags, (path, flags)
    # /tmp stays executable: compilers build there and run what they built.
    out = api.run(sid, "printf '#!/bin/sh\\necho ran\\n' > /tmp/x && chmod +x /tmp/x && /tmp/x")
    assert stdout_lines(out) == ["ran"]
    assert api.req("DELETE", f"/sessions/{sid}").status_code == 204


def test_deleting_a_sandbox_frees_its_storage(st: Stack, api: Client) -> None:
    sid = api.sandbox("Bash")
    path = storage_of(st, HOST, sid)
    assert os.path.ismount(path / "mnt")
    api.run(sid, "head -c 20M /dev/zero > /workspace/data && sync /workspace/data")
    assert (path / "disk.img").stat().st_blocks * 512 >= 20 << 20
    assert api.req("DELETE", f"/sessions/{sid}").status_code == 204
    assert wait_until(lambda: not path.exists() and not host_traces(path), 30), host_traces(path)
    # Deleting it again is a 404 and touches nothing.
    assert api.req("DELETE", f"/sessions/{sid}").status_code == 404


def test_worker_restart_frees_orphan_storage(st: Stack, api: Client) -> None:
    keep, forgotten, removed = api.sandbox("Bash"), api.sandbox("Bash"), api.sandbox("Bash")
    api.run(keep, "echo mine > ~/marker")
    st.stop_process(f"worker-{HOST}")
    # As crashes would leave them: a container no record knows, and storage whose container
    # was removed behind Paddock's back.
    Store(st.redis).purge_sandbox(forgotten)
    docker.from_env().containers.get(f"paddock-{st.instance}-{removed}").remove(force=True)
    st.start_host(HOST)
    for sid in (forgotten, removed):
        path = storage_of(st, HOST, sid)
        assert wait_until(lambda p=path: not p.exists() and not host_traces(p)), host_traces(path)
    assert not any(c.labels["paddock.sandbox"] == forgotten for c in st.containers())
    # The sandbox that is still known kept its storage and its files.
    assert os.path.ismount(storage_of(st, HOST, keep) / "mnt")
    assert stdout_lines(api.run(keep, "cat ~/marker")) == ["mine"]
    assert api.req("DELETE", f"/sessions/{keep}").status_code == 204


def test_worker_refuses_to_start_without_usable_storage(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    stack = Stack(tmp_path / "stack", env={"PADDOCK_STORAGE_DIR": str(not_a_dir)})
    try:
        with pytest.raises(RuntimeError, match="worker-host-a exited"):
            stack.start()
        assert "sandbox storage does not work on this machine" in stack.log("worker-host-a")
    finally:
        stack.stop()


def test_no_disk_keeps_storage_in_the_sandboxs_memory(tmp_path: Path) -> None:
    env = {"PADDOCK_SANDBOX_DISK": "0", "PADDOCK_SANDBOX_MEMORY": "128m"}
    with Stack(tmp_path, hosts=(HOST,), env=env) as stack:
        api = Client(stack)
        sid = api.sandbox("Bash")
        path = storage_of(stack, HOST, sid)
        assert not (path / "disk.img").exists()
        out = api.run(sid, "echo ok > /workspace/f && cat /workspace/f; ls -A ~ | grep -c bashrc")
        assert stdout_lines(out) == ["ok", "1"]
        # Half the sandbox's memory, shared by every writable path.
        out = api.run(
            sid,
            "head -c 40M /dev/zero > /tmp/a && echo ok; head -c 40M /dev/zero > ~/b || echo full",
        )
        assert stdout_lines(out) == ["ok", "full"]
        assert any(NO_SPACE in line for line in stderr_lines(out))
        assert api.req("DELETE", f"/sessions/{sid}").status_code == 204
        assert wait_until(lambda: not path.exists() and not host_traces(path), 30)


# -- the storage itself, without a stack ------------------------------------------------------
def storage_for(tmp_path: Path, disk: int) -> SandboxStorage:
    settings = Settings(
        host_id="h", instance="unit", data_dir=str(tmp_path / "data"), sandbox_disk=disk
    )
    return SandboxStorage(settings)


def add(tar: tarfile.TarFile, name: str, data: bytes = b"", **attrs: Any) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data) if attrs.get("type", tarfile.REGTYPE) == tarfile.REGTYPE else 0
    for key, value in attrs.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data) if info.size else None)


def test_image_content_is_the_users_and_cannot_reach_the_host(tmp_path: Path) -> None:
    """Seeds are unpacked as root on the host, so a template's home is untrusted input."""
    seed = tmp_path / "home.tar"
    with tarfile.open(seed, "w") as tar:
        add(tar, "user", type=tarfile.DIRTYPE, mode=0o755)
        add(tar, "user/.bashrc", b"echo hi\n", mode=0o4755, uid=0, gid=0)
        add(tar, "user/private", type=tarfile.DIRTYPE, mode=0o700)
        add(tar, "user/hard", type=tarfile.LNKTYPE, linkname="user/.bashrc")
        add(tar, "user/etc", type=tarfile.SYMTYPE, linkname="/etc")
        add(tar, "user/up", type=tarfile.SYMTYPE, linkname="../../../..")
        add(tar, "user/etc/passwd", b"owned\n")
        add(tar, "user/../../escaped", b"x")
        add(tar, "user/null", type=tarfile.CHRTYPE, devmajor=1, devminor=3)
    storage = storage_for(tmp_path, 16 << 20)
    mounts = storage.create("unit0001-00000000", {"home": seed})
    try:
        home = Path(mounts["/home/user"])
        bashrc = (home / ".bashrc").stat()
        assert (home / ".bashrc").read_text() == "echo hi\n"
        assert (bashrc.st_uid, bashrc.st_gid) == (1000, 1000)
        assert not bashrc.st_mode & 0o7000  # no setuid
        assert (home / "private").stat().st_mode & 0o777 == 0o700
        assert (home / "hard").read_text() == "echo hi\n"
        for refused in ("up", "null"):
            assert not os.path.lexists(home / refused), refused
        # No link out: user/etc/passwd landed in a plain directory of the home.
        assert not (home / "etc").is_symlink() and (home / "etc" / "passwd").is_file()
        assert not list(tmp_path.rglob("escaped"))
        assert Path("/etc/passwd").read_text() != "owned\n"
        for target, sub in (("/tmp", "tmp"), ("/dev/shm", "shm"), ("/workspace", "workspace")):
            st = os.stat(mounts[target])
            assert st.st_mode & 0o7777 == (0o1777 if sub != "workspace" else 0o755)
    finally:
        storage.release("unit0001-00000000")
    assert storage.sandbox_ids() == []


def test_a_failed_create_leaves_nothing(tmp_path: Path) -> None:
    seed = tmp_path / "home.tar"
    with tarfile.open(seed, "w") as tar:
        add(tar, "user", type=tarfile.DIRTYPE, mode=0o755)
        add(tar, "user/huge", b"\0" * (20 << 20))  # more than the 16 MiB cap
    storage = storage_for(tmp_path, 16 << 20)
    with pytest.raises(StorageError, match=NO_SPACE):
        storage.create("unit0002-00000000", {"home": seed})
    assert storage.sandbox_ids() == []
    assert not host_traces(storage.host_dir)
    # A cap the host's disk cannot promise is refused before anything is made.
    greedy = storage_for(tmp_path, 1 << 60)
    with pytest.raises(NoCapacity, match="PADDOCK_SANDBOX_DISK"):
        greedy.create("unit0003-00000000", {})
    assert greedy.sandbox_ids() == []
    # Ids that are not ids never become paths.
    for bad in ("../../etc", "", ".probe/..", "a/b"):
        with pytest.raises(StorageError, match="not a sandbox id"):
            storage.create(bad, {})
    storage.release("unit0002-00000000")  # releasing what does not exist is a no-op
