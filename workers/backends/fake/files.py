"""A fake sandbox's files: a dict of paths in memory, bounded, with the errors the real
backends raise (relative paths are under the sandbox user's home, as there)."""

from __future__ import annotations

import posixpath
import time
from typing import Any

from shared.errors import (
    FileTooLarge,
    IsADirectory,
    NotADirectory,
    PathExists,
    PathNotFound,
    PermissionDenied,
    SandboxError,
)
from workers.backends.base import SANDBOX_HOME

# What a new sandbox has (the agent's working directory among them).
DIRS = ("/", "/home", SANDBOX_HOME, "/tmp", "/workspace")


class FakeFiles:
    """Files and directories of one sandbox, at most ``capacity`` bytes of file content."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self.files: dict[str, bytes] = {}
        self.mtimes: dict[str, float] = {}
        self.dirs: set[str] = set(DIRS)

    @staticmethod
    def full(path: str) -> str:
        return posixpath.normpath(posixpath.join(SANDBOX_HOME, path)).replace("//", "/")

    def read(self, path: str, limit: int) -> bytes:
        """Raises PathNotFound, IsADirectory, FileTooLarge (past ``limit``)."""
        p = self.full(path)
        if p in self.dirs:
            raise IsADirectory(f"is a directory: {path}")
        if p not in self.files:
            raise PathNotFound(f"no such file or directory: {path}")
        if len(self.files[p]) > limit:
            raise FileTooLarge(f"file is larger than {limit} bytes: {path}")
        return self.files[p]

    def write(self, path: str, data: bytes) -> None:
        """Parents are made. Raises IsADirectory, NotADirectory (a parent is a file),
        SandboxError (past the sandbox's capacity)."""
        p = self.full(path)
        if p in self.dirs:
            raise IsADirectory(f"is a directory: {path}")
        grown = self.used - len(self.files.get(p, b"")) + len(data)
        if grown > self.capacity:
            raise SandboxError(f"no space left in the sandbox ({self.capacity} bytes)")
        self.mkdir(posixpath.dirname(p))
        self.files[p], self.mtimes[p], self.used = data, time.time(), grown

    def mkdir(self, path: str) -> None:
        """With its parents. Raises PathExists when a file is on the way."""
        p = self.full(path)
        while p not in self.dirs:
            if p in self.files:
                raise PathExists(f"a file exists at this path: {path}")
            self.dirs.add(p)
            self.mtimes[p] = time.time()
            p = posixpath.dirname(p)

    def remove(self, path: str) -> None:
        """Recursively, as ``rm -rf``. Raises PermissionDenied for the root, PathNotFound."""
        p = self.full(path)
        if p == "/":
            raise PermissionDenied(f"refusing to remove this directory: {path}")
        if p in self.files:
            self.used -= len(self.files.pop(p))
            return
        if p not in self.dirs:
            raise PathNotFound(f"no such file or directory: {path}")
        for f in [f for f in self.files if f.startswith(p + "/")]:
            self.used -= len(self.files.pop(f))
        self.dirs = {d for d in self.dirs if d != p and not d.startswith(p + "/")}

    def move(self, path: str, dst: str) -> None:
        """Raises PathNotFound, PathExists (a directory onto a file or the reverse)."""
        src, to = self.full(path), self.full(dst)
        if src in self.files:
            if to in self.dirs:
                raise PathExists(f"a directory exists at this path: {dst}")
            self.mkdir(posixpath.dirname(to))
            self.used -= len(self.files.get(to, b""))
            self.files[to] = self.files.pop(src)
            return
        if src not in self.dirs or src == "/":
            raise PathNotFound(f"no such file or directory: {path}")
        if to in self.files or to == src or to.startswith(src + "/"):
            raise PathExists(f"cannot move a directory onto this path: {dst}")
        self.mkdir(posixpath.dirname(to))
        rename = {d: to + d[len(src) :] for d in self.dirs if d == src or d.startswith(src + "/")}
        self.dirs = (self.dirs - set(rename)) | set(rename.values())
        for f in [f for f in self.files if f.startswith(src + "/")]:
            self.files[to + f[len(src) :]] = self.files.pop(f)

    def stat(self, path: str) -> dict[str, Any]:
        """FsEntry JSON. Raises PathNotFound."""
        p = self.full(path)
        if p in self.dirs:
            kind, size, mode = "dir", 4096, 0o755
        elif p in self.files:
            kind, size, mode = "file", len(self.files[p]), 0o644
        else:
            raise PathNotFound(f"no such file or directory: {path}")
        name = posixpath.basename(p) or "/"
        return {
            "name": name,
            "path": p,
            "type": kind,
            "size": size,
            "mode": mode,
            "mtime": self.mtimes.get(p, 0.0),
            "target": "",
        }

    def entries(self, path: str, depth: int) -> list[dict[str, Any]]:
        """The entries under directory ``path`` down to ``depth`` levels, sorted by path.
        Raises PathNotFound, NotADirectory."""
        p = self.full(path)
        if p in self.files:
            raise NotADirectory(f"not a directory: {path}")
        if p not in self.dirs:
            raise PathNotFound(f"no such file or directory: {path}")
        prefix = p.rstrip("/") + "/"
        found = [
            x
            for x in [*self.dirs, *self.files]
            if x.startswith(prefix) and x != p and x[len(prefix) :].count("/") < depth
        ]
        return [self.stat(x) for x in sorted(found)]
