"""Paddock's file entries (shared.commands.FsEntry, from the sandbox's supervisor) as envd's
``EntryInfo`` and the ``/files`` answers."""

from __future__ import annotations

import math
import stat as st
from typing import Any

from protobuf.wkt.google.protobuf.timestamp_pb import Timestamp

from shared.commands import FsEntry
from web.api.envd.gen.filesystem_pb import EntryInfo, FileType

_TYPES = {"file": FileType.FILE, "dir": FileType.DIRECTORY, "symlink": FileType.SYMLINK}
# Go's os.FileMode type bits, which envd's ``mode`` carries above the permission bits.
_GO_DIR = 1 << 31
_GO_SYMLINK = 1 << 27
_GO_LETTER = {"dir": "d", "symlink": "L", "file": "-", "other": "?"}


def entry_info(entry: FsEntry) -> EntryInfo:
    """The owner and group are not known (the supervisor does not report them): empty."""
    perm = entry.mode & 0o7777
    go_mode = perm | (_GO_DIR if entry.type == "dir" else 0)
    go_mode |= _GO_SYMLINK if entry.type == "symlink" else 0
    info = EntryInfo(
        name=entry.name,
        type=_TYPES.get(entry.type, FileType.UNSPECIFIED),
        path=entry.path,
        size=max(0, entry.size),
        mode=go_mode,
        permissions=_GO_LETTER[entry.type] + st.filemode(perm)[1:],
        modified_time=_timestamp(entry.mtime),
        is_symlink=entry.type == "symlink",
    )
    if entry.type == "symlink":
        info.symlink_target = entry.target
    return info


def _timestamp(unix: float) -> Timestamp:
    if not math.isfinite(unix) or unix < 0:
        return Timestamp()
    seconds = int(unix)
    return Timestamp(seconds=seconds, nanos=min(int((unix - seconds) * 1e9), 999_999_999))


def written(path: str) -> dict[str, Any]:
    """One item of a ``POST /files`` answer (the SDK's WriteInfo)."""
    return {"name": path.rsplit("/", 1)[-1], "type": "file", "path": path}
