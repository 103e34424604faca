"""The supervisor's framing (supervisor/PROTOCOL.md): a 4-byte big-endian body length, then
a 4-byte header length, a JSON header and a binary payload.

Everything the supervisor sends is untrusted: every frame read is bounded and validated here
before anyone looks at it, and a FrameError means the channel must be dropped."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MAX_FRAME = 1 << 20  # a frame's body: header length field + header + payload
MAX_CHUNK = 256 << 10  # the payload of one output, data or write frame
MAX_HELLO = 4096  # the payload of a hello answer (a small JSON object)
# Sent by a worker that (re)attaches: the length 0xFFFFFFFF is no real frame's, so the
# supervisor skips to it after framing trouble and takes it as "a new peer starts here".
SYNC = b"\xff\xff\xff\xffPADDOCK-SYNC"

_U32 = struct.Struct(">I")
_STREAMS = ("stdout", "stderr", "pty")
_ENTRY_TYPES = ("file", "dir", "symlink", "other")
_EVENT_KINDS = ("create", "write", "remove", "rename", "chmod", "overflow")


class FrameError(Exception):
    """The peer sent something that is not a valid frame: drop the channel."""


@dataclass(frozen=True)
class Frame:
    header: dict[str, Any]
    payload: bytes
    size: int  # the body's length on the wire: what holding this frame costs

    @property
    def type(self) -> str:
        return str(self.header["type"])

    @property
    def id(self) -> int:
        return int(self.header["id"])


def encode(header: dict[str, Any], payload: bytes = b"") -> bytes:
    """One frame. Raises ValueError when it would exceed MAX_FRAME."""
    head = json.dumps(header, separators=(",", ":")).encode()
    size = 4 + len(head) + len(payload)
    if size > MAX_FRAME:
        raise ValueError(f"a frame of {size} bytes exceeds {MAX_FRAME}")
    return _U32.pack(size) + _U32.pack(len(head)) + head + payload


def read_exactly(read: Callable[[int], bytes], n: int) -> bytes:
    """``n`` bytes from ``read``; fewer only when the stream ends."""
    parts: list[bytes] = []
    while n > 0:
        chunk = read(n)
        if not chunk:
            break
        parts.append(chunk)
        n -= len(chunk)
    return b"".join(parts)


def read_frame(read: Callable[[int], bytes]) -> Frame | None:
    """The next validated frame, or None when the stream ends cleanly between frames.
    Raises FrameError."""
    prefix = read_exactly(read, 4)
    if not prefix:
        return None
    if len(prefix) < 4:
        raise FrameError("the stream ended inside a length prefix")
    (size,) = _U32.unpack(prefix)
    if not 4 <= size <= MAX_FRAME:
        raise FrameError(f"frame length {size} outside [4, {MAX_FRAME}]")
    body = read_exactly(read, size)
    if len(body) < size:
        raise FrameError("the stream ended inside a frame")
    (head_len,) = _U32.unpack(body[:4])
    if not 1 <= head_len <= size - 4:
        raise FrameError(f"header length {head_len} outside [1, {size - 4}]")
    try:
        header = json.loads(body[4 : 4 + head_len])
    except (UnicodeDecodeError, ValueError) as exc:
        raise FrameError(f"the header is not JSON: {exc}") from None
    payload = body[4 + head_len :]
    validate(header, payload)
    return Frame(header, payload, size)


def _is_int(value: object, low: int = 0) -> bool:
    return type(value) is int and value >= low


def _is_num(value: object) -> bool:
    return type(value) in (int, float)


def _check(ok: bool, header: dict[str, Any], what: str) -> None:
    if not ok:
        raise FrameError(f"{header.get('type')!r} frame: {what}")


def _check_entry(entry: object, header: dict[str, Any]) -> None:
    _check(isinstance(entry, dict), header, "an entry is not an object")
    assert isinstance(entry, dict)
    _check(isinstance(entry.get("name"), str), header, "entry name")
    _check(isinstance(entry.get("path"), str), header, "entry path")
    _check(entry.get("type") in _ENTRY_TYPES, header, "entry type")
    _check(_is_int(entry.get("size")) and _is_int(entry.get("mode")), header, "entry size/mode")
    _check(_is_num(entry.get("mtime")), header, "entry mtime")
    _check(isinstance(entry.get("target", ""), str), header, "entry target")


def hello_header(request_id: int, nonce: str) -> bytes:
    """The exact header bytes of the supervisor's answer to hello ``request_id``."""
    return b'{"id":%d,"nonce":"%s","type":"hello"}' % (request_id, nonce.encode())


def _check_hello(header: dict[str, Any], payload: bytes) -> None:
    _check(set(header) == {"id", "nonce", "type"}, header, "fields")
    _check(isinstance(header.get("nonce"), str), header, "nonce")
    _check(len(payload) <= MAX_HELLO, header, "payload too large")
    try:
        info = json.loads(payload)
    except (UnicodeDecodeError, ValueError):
        raise FrameError("'hello' frame: the payload is not JSON") from None
    _check(isinstance(info, dict), header, "the payload is not an object")
    _check(isinstance(info.get("version"), str), header, "version")
    _check(_is_int(info.get("pid"), 1), header, "pid")
    _check(_is_int(info.get("processes")), header, "processes")
    _check(_is_num(info.get("uptime_s")), header, "uptime_s")


def validate(header: object, payload: bytes) -> None:
    """Check a response header's shape for its type. Raises FrameError."""
    if not isinstance(header, dict):
        raise FrameError("the header is not an object")
    kind = header.get("type")
    _check(_is_int(header.get("id")), header, "id is not a non-negative integer")
    _check(kind in ("output", "data", "hello") or not payload, header, "unexpected payload")
    if kind == "ok":
        for key in ("size", "count"):
            _check(key not in header or _is_int(header[key]), header, key)
        if "entry" in header:
            _check_entry(header["entry"], header)
        if "processes" in header:
            procs = header["processes"]
            _check(isinstance(procs, list), header, "processes is not a list")
            for p in procs:
                _check(isinstance(p, dict) and _is_int(p.get("pid"), 1), header, "process pid")
                _check(isinstance(p.get("argv"), list), header, "process argv")
                _check(_is_int(p.get("last_seq", 0)), header, "process last_seq")
                _check(type(p.get("exited", False)) is bool, header, "process exited")
    elif kind == "error":
        _check(isinstance(header.get("code"), str), header, "code")
        _check(isinstance(header.get("message"), str), header, "message")
    elif kind == "started":
        _check(_is_int(header.get("pid"), 1) and _is_int(header.get("pgid"), 1), header, "pid")
    elif kind == "attached":
        _check(_is_int(header.get("pid"), 1) and _is_int(header.get("pgid"), 1), header, "pid")
        _check(type(header.get("truncated")) is bool, header, "truncated")
        _check(_is_int(header.get("first_seq"), 1), header, "first_seq")
        _check(_is_int(header.get("last_seq")), header, "last_seq")
        _check(header["first_seq"] <= header["last_seq"] + 1, header, "first_seq > last_seq + 1")
    elif kind == "output":
        _check(_is_int(header.get("pid"), 1), header, "pid")
        _check(header.get("stream") in _STREAMS, header, "stream")
        _check(_is_int(header.get("seq"), 1), header, "seq")
        _check(len(payload) <= MAX_CHUNK, header, "payload larger than a chunk")
    elif kind == "exit":
        _check(_is_int(header.get("pid"), 1), header, "pid")
        code, sig = header.get("code"), header.get("signal")
        _check(code is None or type(code) is int, header, "code")
        _check(sig is None or isinstance(sig, str), header, "signal")
        _check(type(header.get("timed_out")) is bool, header, "timed_out")
        for key in ("started_at", "ended_at", "duration_ms"):
            _check(_is_num(header.get(key)), header, key)
    elif kind == "data":
        _check(len(payload) <= MAX_CHUNK, header, "payload larger than a chunk")
    elif kind == "hello":
        _check_hello(header, payload)
    elif kind == "watching":
        _check(_is_int(header.get("dirs"), 1), header, "dirs")
    elif kind == "event":
        _check(header.get("kind") in _EVENT_KINDS, header, "kind")
        _check(isinstance(header.get("path"), str), header, "path")
        _check(type(header.get("is_dir")) is bool, header, "is_dir")
    elif kind == "entries":
        entries = header.get("entries")
        _check(isinstance(entries, list), header, "entries is not a list")
        assert isinstance(entries, list)
        for entry in entries:
            _check_entry(entry, header)
    else:
        raise FrameError(f"unknown frame type {kind!r}")
