"""The official E2B SDK's ``sandbox.files``, unchanged, against Paddock's envd protocol (web/
api/envd): only E2B_API_URL, E2B_API_KEY and E2B_SANDBOX_URL, all loopback. One sandbox for
the module (creating is the slow part); each test works in a directory of its own.

Runs on the supervisor backend (the docker backend answers these calls ``unimplemented``)."""

from __future__ import annotations

import asyncio
import io
import os
from collections.abc import Iterator

import pytest
from e2b import (
    AsyncSandbox,
    AuthenticationException,
    FileType,
    InvalidArgumentException,
    NotFoundException,
    Sandbox,
    SandboxException,
)
from e2b.exceptions import FileNotFoundException

from devstack.stack import Stack
from tests.integration.e2b_helpers import sdk_env, with_wrong_token
from tests.integration.session_helpers import new_tenant

pytestmark = pytest.mark.skipif(
    os.environ.get("PADDOCK_TEST_BACKEND", "supervisor") != "supervisor",
    reason="the envd file calls need the supervisor backend",
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(tmp_path_factory.mktemp("e2bfiles"), env={"PADDOCK_AUTH": "on"}) as st:
        yield st


@pytest.fixture(scope="module")
def sbx(stack: Stack) -> Iterator[Sandbox]:
    """A sandbox of a fresh tenant, the stack set as E2B_API_URL and E2B_SANDBOX_URL."""
    with sdk_env(stack, new_tenant(stack, "e2bfiles")):
        sandbox = Sandbox.create()
        yield sandbox
        sandbox.kill()


def test_write_read_list_info_rename_remove(sbx: Sandbox) -> None:
    info = sbx.files.write("crud/hello.txt", "hello\n")
    assert info.path == "/home/user/crud/hello.txt"
    assert sbx.files.read("crud/hello.txt") == "hello\n"
    assert sbx.files.read("/home/user/crud/hello.txt", format="bytes") == bytearray(b"hello\n")

    assert sbx.files.make_dir("crud/sub/deeper") is True
    assert sbx.files.make_dir("crud/sub") is False  # already there
    sbx.files.write("crud/sub/deeper/x.bin", b"\x00\x01")

    top = {e.name: e for e in sbx.files.list("crud")}
    assert set(top) == {"hello.txt", "sub"}
    assert top["hello.txt"].type == FileType.FILE and top["hello.txt"].size == 6
    assert top["sub"].type == FileType.DIR
    deep = {e.path for e in sbx.files.list("/home/user/crud", depth=3)}
    assert "/home/user/crud/sub/deeper/x.bin" in deep

    got = sbx.files.get_info("crud/hello.txt")
    assert (got.name, got.type, got.size, got.path) == (
        "hello.txt",
        FileType.FILE,
        6,
        "/home/user/crud/hello.txt",
    )
    assert got.permissions == "-rw-r--r--"
    assert got.modified_time.year >= 2024

    moved = sbx.files.rename("crud/hello.txt", "crud/sub/renamed.txt")
    assert moved.path == "/home/user/crud/sub/renamed.txt"
    assert sbx.files.exists("crud/hello.txt") is False
    assert sbx.files.read("crud/sub/renamed.txt") == "hello\n"

    sbx.files.remove("crud/sub")
    assert sbx.files.exists("crud/sub") is False
    assert sbx.files.exists("crud") is True


def test_binary_round_trip_octet_stream_and_multipart(sbx: Sandbox) -> None:
    # ~1 MiB holding every byte value, through both upload encodings the SDK uses.
    blob = bytes(range(256)) * 4096 + os.urandom(1000)
    sbx.files.write("bin/a.bin", blob)  # bytes: multipart
    sbx.files.write("bin/b.bin", io.BytesIO(blob))  # file-like: octet-stream
    assert bytes(sbx.files.read("bin/a.bin", format="bytes")) == blob
    assert bytes(sbx.files.read("bin/b.bin", format="bytes")) == blob
    assert sbx.files.get_info("bin/b.bin").size == len(blob)
    assert b"".join(sbx.files.read("bin/a.bin", format="stream")) == blob


def test_errors_the_sdk_maps(sbx: Sandbox) -> None:
    with pytest.raises(FileNotFoundException):
        sbx.files.read("nope/missing.txt")
    with pytest.raises(NotFoundException):
        sbx.files.get_info("nope/missing.txt")
    with pytest.raises(NotFoundException):
        sbx.files.list("nope")
    with pytest.raises(NotFoundException):
        sbx.files.remove("nope/missing.txt")
    sbx.files.write("err/file.txt", "x")
    with pytest.raises(InvalidArgumentException):
        sbx.files.list("err/file.txt")  # not a directory
    with pytest.raises(InvalidArgumentException):
        sbx.files.read("err/file.txt", user="nobody")
    assert sbx.files.list("err", user="root")[0].name == "file.txt"  # root: the sandbox user
    # Outside what the sandbox user may write, root gains nothing (403: permission denied,
    # or the read-only root filesystem).
    with pytest.raises(SandboxException, match=r"^403: "):
        sbx.files.write("/etc/paddock-test", "x", user="root")


def test_wrong_token_and_other_tenant(stack: Stack, sbx: Sandbox) -> None:
    bad = with_wrong_token(sbx)
    with pytest.raises(AuthenticationException):
        bad.files.list("/")
    with pytest.raises(AuthenticationException):
        bad.files.read("/etc/hostname")
    # Another tenant's key does not even find the sandbox.
    other = new_tenant(stack, "e2bfiles-other")
    with pytest.raises(NotFoundException):
        Sandbox.connect(sbx.sandbox_id, api_key=other)


def test_async_sdk(sbx: Sandbox) -> None:
    async def run() -> None:
        asbx = await AsyncSandbox.connect(sbx.sandbox_id)
        await asbx.files.write("async/a.txt", "from async")
        assert await asbx.files.read("async/a.txt") == "from async"
        assert [e.name for e in await asbx.files.list("async")] == ["a.txt"]
        await asbx.files.remove("async")
        assert await asbx.files.exists("async") is False

    asyncio.run(run())
