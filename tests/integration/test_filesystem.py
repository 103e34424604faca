"""E2B filesystem routes over real HTTP, in both path forms."""

from __future__ import annotations

import pytest

from tests.integration.client import Client, stdout_lines

FORMS = [("dir", "file"), ("dirs", "files")]


@pytest.mark.parametrize(("d", "f"), FORMS)
def test_write_then_read_non_ascii(api: Client, sid: str, d: str, f: str) -> None:
    text = "héllo wörld ✓ — 日本語\nsecond line\n"
    path = f"/home/user/{f}/new/parents/greeting.txt"
    r = api.req(
        "PUT", f"/sessions/{sid}/filesystem/{f}", params={"path": path}, json={"content": text}
    )
    assert r.status_code == 204, r.text
    assert r.content == b""
    r = api.req("GET", f"/sessions/{sid}/filesystem/{f}", params={"path": path})
    assert r.status_code == 200
    assert r.json() == {"content": text}
    # The file is really in the sandbox, owned by the sandbox user.
    out = api.run(sid, f"stat -c %U {path}; cat {path}")
    assert stdout_lines(out) == ["user", *text.splitlines()]


def test_write_overwrites(api: Client, sid: str) -> None:
    path = "/home/user/over.txt"
    for content in ("a much longer first version", "short"):
        r = api.req(
            "PUT",
            f"/sessions/{sid}/filesystem/file",
            params={"path": path},
            json={"content": content},
        )
        assert r.status_code == 204
    r = api.req("GET", f"/sessions/{sid}/filesystem/file", params={"path": path})
    assert r.json() == {"content": "short"}


@pytest.mark.parametrize(("d", "f"), FORMS)
def test_mkdir_list_remove(api: Client, sid: str, d: str, f: str) -> None:
    base = f"/home/user/tree-{d}"
    r = api.req("PUT", f"/sessions/{sid}/filesystem/{d}", params={"path": f"{base}/x/y/z"})
    assert r.status_code == 204, r.text
    api.req(
        "PUT",
        f"/sessions/{sid}/filesystem/{f}",
        params={"path": f"{base}/file one.txt"},
        json={"content": "1"},
    )
    r = api.req("GET", f"/sessions/{sid}/filesystem/{d}", params={"path": base})
    assert r.status_code == 200
    assert sorted(r.json()["entries"], key=lambda e: e["name"]) == [
        {"isDir": False, "name": "file one.txt"},
        {"isDir": True, "name": "x"},
    ]
    r = api.req("GET", f"/sessions/{sid}/filesystem/{d}", params={"path": f"{base}/x/y"})
    assert r.json() == {"entries": [{"isDir": True, "name": "z"}]}
    r = api.req("DELETE", f"/sessions/{sid}/filesystem", params={"path": base})
    assert r.status_code == 204
    r = api.req("GET", f"/sessions/{sid}/filesystem/{d}", params={"path": base})
    assert r.status_code == 404
    assert "no such file or directory" in r.json()["message"]


def test_list_empty_dir(api: Client, sid: str) -> None:
    api.req("PUT", f"/sessions/{sid}/filesystem/dir", params={"path": "/home/user/empty"})
    r = api.req("GET", f"/sessions/{sid}/filesystem/dir", params={"path": "/home/user/empty"})
    assert r.json() == {"entries": []}


def test_remove_single_file(api: Client, sid: str) -> None:
    path = "/home/user/gone.txt"
    api.req("PUT", f"/sessions/{sid}/filesystem/file", params={"path": path}, json={"content": "x"})
    assert (
        api.req("DELETE", f"/sessions/{sid}/filesystem", params={"path": path}).status_code == 204
    )
    assert (
        api.req("GET", f"/sessions/{sid}/filesystem/file", params={"path": path}).status_code == 404
    )


def test_path_with_space_is_decoded(api: Client, sid: str) -> None:
    r = api.req(
        "PUT",
        f"/sessions/{sid}/filesystem/file?path=/home/user/with%20space.txt",
        json={"content": "spaced"},
    )
    assert r.status_code == 204
    out = api.run(sid, "cat '/home/user/with space.txt'")
    assert stdout_lines(out) == ["spaced"]


def test_sandbox_errors_are_clear_and_session_keeps_working(api: Client, sid: str) -> None:
    r = api.req("GET", f"/sessions/{sid}/filesystem/file", params={"path": "/home/user/missing"})
    assert r.status_code == 404
    assert r.json() == {"message": "no such file or directory: /home/user/missing"}

    api.req(
        "PUT",
        f"/sessions/{sid}/filesystem/file",
        params={"path": "/home/user/plain"},
        json={"content": "x"},
    )
    r = api.req("GET", f"/sessions/{sid}/filesystem/dir", params={"path": "/home/user/plain"})
    assert r.status_code == 400
    assert r.json() == {"message": "not a directory: /home/user/plain"}

    r = api.req("GET", f"/sessions/{sid}/filesystem/file", params={"path": "/home/user"})
    assert r.status_code == 400
    assert "is a directory" in r.json()["message"]

    r = api.req("PUT", f"/sessions/{sid}/filesystem/dir", params={"path": "/home/user/plain"})
    assert r.status_code == 409

    r = api.req(
        "PUT",
        f"/sessions/{sid}/filesystem/file",
        params={"path": "/etc/evil"},
        json={"content": "x"},
    )
    assert r.status_code == 403
    assert "Read-only file system" in r.json()["message"]  # the image is read-only

    r = api.req("DELETE", f"/sessions/{sid}/filesystem", params={"path": "/home/user/nope"})
    assert r.status_code == 404

    # Nothing above broke the session.
    assert stdout_lines(api.run(sid, "echo still-alive")) == ["still-alive"]
    r = api.req("GET", f"/sessions/{sid}/filesystem/file", params={"path": "/home/user/plain"})
    assert r.json() == {"content": "x"}


@pytest.mark.parametrize("route", ["dir", "dirs", "file", "files"])
def test_path_is_required(api: Client, sid: str, route: str) -> None:
    r = api.req("GET", f"/sessions/{sid}/filesystem/{route}")
    assert r.status_code == 422
    assert r.json() == {
        "message": "Validation Failed",
        "details": {"path": {"message": "'path' is required"}},
    }
    r = api.req("DELETE", f"/sessions/{sid}/filesystem")
    assert r.status_code == 422


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"not json", "requestBody"),
        (b"[1, 2]", "requestBody"),
        (b"", "requestBody"),
        (b'{"content": 5}', "requestBody.content"),
        (b"{}", "requestBody.content"),
        (b'{"content": "x", "mode": "0644"}', "requestBody.mode"),
    ],
)
def test_bad_write_bodies_change_nothing(api: Client, sid: str, body: bytes, field: str) -> None:
    path = "/home/user/untouched.txt"
    api.req(
        "PUT",
        f"/sessions/{sid}/filesystem/file",
        params={"path": path},
        json={"content": "original"},
    )
    r = api.req(
        "PUT",
        f"/sessions/{sid}/filesystem/file",
        params={"path": path},
        data=body,
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 422
    assert r.json()["message"] == "Validation Failed"
    assert field in r.json()["details"]
    r = api.req("GET", f"/sessions/{sid}/filesystem/file", params={"path": path})
    assert r.json() == {"content": "original"}


def test_body_over_the_limit_is_413(api: Client, sid: str) -> None:
    path = "/home/user/big.txt"
    big = b'{"content": "' + b"a" * (17 << 20) + b'"}'
    r = api.req(
        "PUT",
        f"/sessions/{sid}/filesystem/file",
        params={"path": path},
        data=big,
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 413
    assert r.json() == {"message": "Request body too large"}
    assert (
        api.req("GET", f"/sessions/{sid}/filesystem/file", params={"path": path}).status_code == 404
    )


def test_large_file_round_trip(api: Client, sid: str) -> None:
    content = ("0123456789abcdef" * 64 + "\n") * 4096  # ~4 MiB
    path = "/home/user/large.txt"
    assert (
        api.req(
            "PUT",
            f"/sessions/{sid}/filesystem/file",
            params={"path": path},
            json={"content": content},
        ).status_code
        == 204
    )
    r = api.req("GET", f"/sessions/{sid}/filesystem/file", params={"path": path})
    assert r.json()["content"] == content
