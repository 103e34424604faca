"""The supervisor channel's framing, validation and resynchronisation, against a fake
supervisor on a pipe."""

from __future__ import annotations

import io
import json
import os
import struct
import threading
import time
from collections.abc import Callable
from typing import Any, cast

import pytest

from shared.output import STDERR, STDOUT
from workers.backends.supervisor.channel import (
    Channel,
    ChannelClosed,
    Exit,
    Output,
    SupervisorError,
    WatchEvent,
    scan_for,
)
from workers.backends.supervisor.frames import (
    MAX_CHUNK,
    MAX_FRAME,
    SYNC,
    FrameError,
    encode,
    hello_header,
    read_exactly,
    read_frame,
)
from workers.backends.supervisor.process import SupervisorProcess


def _read(data: bytes) -> object:
    return read_frame(io.BytesIO(data).read)


def test_round_trip() -> None:
    frame = read_frame(io.BytesIO(encode({"type": "data", "id": 7}, b"\x00\xff")).read)
    assert frame is not None
    assert (frame.type, frame.id, frame.payload) == ("data", 7, b"\x00\xff")
    assert read_frame(io.BytesIO(b"").read) is None


@pytest.mark.parametrize(
    "data",
    [
        struct.pack(">I", MAX_FRAME + 1),  # oversized
        struct.pack(">I", 2) + b"xx",  # shorter than the header length field
        b"\x00\x00",  # cut inside the prefix
        struct.pack(">I", 100) + b"abc",  # cut inside the body
        struct.pack(">II", 8, 99) + b"{}{}",  # header length beyond the body
        struct.pack(">II", 6, 2) + b"\xff\xfe",  # header not JSON
        struct.pack(">II", 6, 2) + b"[]",  # header not an object
    ],
)
def test_bad_framing(data: bytes) -> None:
    with pytest.raises(FrameError):
        _read(data)


@pytest.mark.parametrize(
    ("header", "payload"),
    [
        ({"type": "nope", "id": 1}, b""),
        ({"type": "ok", "id": -1}, b""),
        ({"type": "ok", "id": "1"}, b""),
        ({"type": "ok", "id": 1}, b"payload"),
        ({"type": "output", "id": 1, "pid": 5, "stream": "stdin", "seq": 1}, b"x"),
        (
            {"type": "output", "id": 1, "pid": 5, "stream": "stdout", "seq": 1},
            b"x" * (MAX_CHUNK + 1),
        ),
        ({"type": "exit", "id": 1, "pid": 5, "code": "0", "signal": None, "timed_out": False}, b""),
        ({"type": "error", "id": 1, "code": 3, "message": "x"}, b""),
        ({"type": "entries", "id": 1, "entries": [{"name": 1}]}, b""),
        ({"type": "attached", "id": 1, "pid": 5, "pgid": 5, "truncated": 0}, b""),
        (
            {"type": "attached", "id": 1, "pid": 5, "pgid": 5, "truncated": False}
            | {"first_seq": 9, "last_seq": 3},
            b"",
        ),
        ({"type": "ok", "id": 1, "processes": [{"pid": 5, "argv": [], "last_seq": -1}]}, b""),
    ],
)
def test_invalid_headers(header: dict[str, object], payload: bytes) -> None:
    with pytest.raises(FrameError):
        _read(encode(header, payload))


def test_encode_refuses_oversized() -> None:
    with pytest.raises(ValueError):
        encode({"type": "data", "id": 1}, b"x" * MAX_FRAME)


class FakeSupervisor:
    """The supervisor's side of two pipes: reads requests, writes whatever a test says."""

    def __init__(self) -> None:
        req_r, req_w = os.pipe()
        resp_r, resp_w = os.pipe()
        self.requests = os.fdopen(req_r, "rb")
        self.out = os.fdopen(resp_w, "wb")
        self.channel = Channel(
            os.fdopen(resp_r, "rb"), os.fdopen(req_w, "wb"), timeout=5, first_id=1
        )

    def request(self) -> bytes:
        (size,) = struct.unpack(">I", read_exactly(self.requests.read, 4))
        return read_exactly(self.requests.read, size)

    def send(self, data: bytes) -> None:
        self.out.write(data)
        self.out.flush()


REQ = b""  # in an answer list: wait for the next request first


def _serve(fake: FakeSupervisor, answer: list[bytes]) -> threading.Thread:
    def run() -> None:
        for data in answer:
            if data == REQ:
                fake.request()
            else:
                fake.send(data)

    t = threading.Thread(target=run)
    t.start()
    return t


def _ok(request_id: int, **fields: object) -> bytes:
    return encode({"type": "ok", "id": request_id, **fields})


def test_call_and_error() -> None:
    f = FakeSupervisor()
    _serve(
        f,
        [
            REQ,
            _ok(1, processes=[]),
            REQ,
            encode({"type": "error", "id": 2, "code": "not_found", "message": "x"}),
        ],
    )
    assert f.channel.processes() == []
    with pytest.raises(SupervisorError) as err:
        f.channel.stat("missing")
    assert err.value.code == "not_found"


def test_process_events_in_order() -> None:
    f = FakeSupervisor()
    out = {"type": "output", "id": 1, "pid": 9}
    frames = [
        REQ,
        encode({"type": "started", "id": 1, "pid": 9, "pgid": 9}),
        encode({**out, "stream": "stdout", "seq": 1}, b"a"),
        encode({**out, "stream": "stderr", "seq": 2}, b"b"),
        encode(
            {"type": "exit", "id": 1, "pid": 9, "code": 0, "signal": None, "timed_out": False}
            | {"started_at": 1.0, "ended_at": 2.0, "duration_ms": 1000.0}
        ),
    ]
    _serve(f, frames)
    events = list(f.channel.spawn(["x"]).events())
    assert events[:2] == [Output("stdout", 1, b"a"), Output("stderr", 2, b"b")]
    assert isinstance(events[2], Exit) and events[2].code == 0


def test_a_process_handle_joins_the_frames_of_a_stream_already_here() -> None:
    """A process writing a byte at a time: the frames already received come out as one chunk
    per stream run (up to 64 KiB, the seq of the last one), so the pump stores one entry per
    read of it, not one per byte. Nothing is lost or reordered."""
    f = FakeSupervisor()
    out = {"type": "output", "id": 1, "pid": 9}
    runs = [("stdout", [b"x"] * 200), ("stderr", [b"!"]), ("stdout", [b"y" * (30 << 10)] * 3)]
    frames, seq = [], 0
    for stream, parts in runs:
        for part in parts:
            seq += 1
            frames.append(encode({**out, "stream": stream, "seq": seq}, part))
    end = {"type": "exit", "id": 1, "pid": 9, "code": 3, "signal": None, "timed_out": False}
    end |= {"started_at": 1.0, "ended_at": 2.0, "duration_ms": 1000.0}
    _serve(f, [REQ, encode({"type": "started", "id": 1, "pid": 9, "pgid": 9}), *frames])
    proc = f.channel.spawn(["x"])
    while len(proc._waiter._frames) < len(frames):  # every frame is here before the read
        time.sleep(0.01)
    f.send(encode(end))
    handle = SupervisorProcess(cast(Any, None), "sb", proc)
    got = []
    for kind, data in handle.frames(lambda: False):
        got.append((kind, data, handle.seq))
    assert got == [
        (STDOUT, b"x" * 200, 200),
        (STDERR, b"!", 201),
        (STDOUT, b"y" * (60 << 10), 203),  # a third would pass 64 KiB
        (STDOUT, b"y" * (30 << 10), 204),
    ]
    assert handle.exit_code() == 3


def test_seq_gap_closes() -> None:
    f = FakeSupervisor()
    _serve(
        f,
        [
            REQ,
            encode({"type": "started", "id": 1, "pid": 9, "pgid": 9}),
            encode({"type": "output", "id": 1, "pid": 9, "stream": "stdout", "seq": 2}, b"a"),
        ],
    )
    with pytest.raises(ChannelClosed):
        list(f.channel.spawn(["x"]).events())


def test_garbage_ends_the_channel_and_wakes_waiters() -> None:
    f = FakeSupervisor()
    _serve(f, [struct.pack(">I", MAX_FRAME + 1)])
    with pytest.raises(ChannelClosed):
        f.channel.processes()
    assert f.channel.closed and "invalid frame" in f.channel.closed
    with pytest.raises(ChannelClosed):
        f.channel.stat("x")


def test_supervisor_gone() -> None:
    f = FakeSupervisor()
    f.out.close()
    with pytest.raises(ChannelClosed):
        f.channel.processes()


def test_unexpected_type_closes() -> None:
    f = FakeSupervisor()
    _serve(f, [REQ, encode({"type": "data", "id": 1}, b"x")])
    with pytest.raises(ChannelClosed):
        f.channel.processes()


def test_attach_follows_from_the_kept_seq() -> None:
    f = FakeSupervisor()
    out = {"type": "output", "id": 1, "pid": 9, "stream": "stdout"}
    attached = {"type": "attached", "id": 1, "pid": 9, "pgid": 9, "truncated": True}
    frames = [
        REQ,
        encode({**attached, "first_seq": 5, "last_seq": 6}),
        encode({**out, "seq": 5}, b"e"),
        encode({**out, "seq": 6}, b"f"),
        encode(
            {"type": "exit", "id": 1, "pid": 9, "code": 0, "signal": None, "timed_out": False}
            | {"started_at": 1.0, "ended_at": 2.0, "duration_ms": 1000.0}
        ),
    ]
    _serve(f, frames)
    proc = f.channel.attach(9, after_seq=2)
    assert (proc.truncated, proc.first_seq) == (True, 5)
    out_, _, exit_ = proc.wait()
    assert (out_, exit_.code) == (b"ef", 0)


def test_attach_replay_with_a_gap_closes() -> None:
    f = FakeSupervisor()
    attached = {"type": "attached", "id": 1, "pid": 9, "pgid": 9, "truncated": False}
    _serve(
        f,
        [
            REQ,
            encode({**attached, "first_seq": 1, "last_seq": 4}),
            encode({"type": "output", "id": 1, "pid": 9, "stream": "stdout", "seq": 4}, b"x"),
        ],
    )
    with pytest.raises(ChannelClosed):
        list(f.channel.attach(9, after_seq=2).events())


@pytest.mark.parametrize(("frames", "size"), [(300, 1), (40, MAX_CHUNK)])
def test_an_unread_flood_fails_only_its_request(frames: int, size: int) -> None:
    """A process whose output nobody reads overflows its request's bound (256 frames or
    8 MiB): after ``stall`` that request fails with ``overflow`` and its frames are dropped,
    while another request on the same channel is answered."""
    f = FakeSupervisor()
    f.channel.stall = 0.2
    out = {"type": "output", "id": 1, "pid": 9, "stream": "stdout"}
    flood = [encode({**out, "seq": seq}, b"x" * size) for seq in range(1, frames + 1)]
    started = encode({"type": "started", "id": 1, "pid": 9, "pgid": 9})
    _serve(f, [REQ, started, *flood, REQ, _ok(2, processes=[])])
    proc = f.channel.spawn(["yes"])
    assert f.channel.processes() == []  # answered although request 1 is never read
    assert f.channel.closed is None
    with pytest.raises(SupervisorError) as err:
        list(proc.events())
    assert err.value.code == "overflow"


# Resynchronisation, hello, cancel, watch


def _hello_answer(request_id: int, nonce: str, processes: int = 0) -> bytes:
    head = hello_header(request_id, nonce)
    info = json.dumps({"version": "2", "pid": 7, "processes": processes, "uptime_s": 1.5})
    body = struct.pack(">I", len(head)) + head + info.encode()
    return struct.pack(">I", len(body)) + body


def _chunks(data: bytes, size: int) -> Callable[[int], bytes]:
    stream = io.BytesIO(data)
    return lambda n: stream.read(min(n, size))


@pytest.mark.parametrize("size", [1, 7, 4096])
def test_scan_finds_the_answer_across_reads(size: int) -> None:
    needle = hello_header(5, "a" * 32)
    noise = os.urandom(3000) + needle  # the header without a fitting prefix: not it
    answer = _hello_answer(5, "a" * 32)
    rest = encode({"type": "ok", "id": 6})
    read = _chunks(noise + answer + rest, size)
    found = scan_for(read, needle)
    assert found is not None
    tail = b"".join(iter(lambda: read(4096), b""))
    assert found + tail == answer + rest  # the bytes from the answer on, none lost


def test_scan_ends_with_the_stream() -> None:
    assert scan_for(_chunks(os.urandom(10000), 4096), hello_header(1, "b" * 16)) is None


def test_scan_holds_a_bounded_window() -> None:
    held: list[int] = []
    needle = hello_header(1, "c" * 16)
    stream = io.BytesIO(b"\x00" * 200_000 + _hello_answer(1, "c" * 16))

    def read(n: int) -> bytes:
        held.append(n)
        return stream.read(n)

    assert scan_for(read, needle) is not None
    assert max(held) <= 4096


class ResyncingFake(FakeSupervisor):
    """A fake supervisor for a channel that resynchronises: the channel is made in a
    thread, as its constructor waits for the hello answer."""

    def __init__(self) -> None:  # the pipes only: the test makes the channel
        req_r, req_w = os.pipe()
        resp_r, resp_w = os.pipe()
        self.requests = os.fdopen(req_r, "rb")
        self.out = os.fdopen(resp_w, "wb")
        self.ends = (os.fdopen(resp_r, "rb"), os.fdopen(req_w, "wb"))

    def hello(self) -> dict[str, Any]:
        """The next SYNC marker and hello request."""
        assert read_exactly(self.requests.read, len(SYNC)) == SYNC
        request: dict[str, Any] = json.loads(self.request()[4:])
        assert request["op"] == "hello"
        return request


def _open(fake: ResyncingFake, **kwargs: Any) -> tuple[threading.Thread, dict[str, Any]]:
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["channel"] = Channel(*fake.ends, timeout=5, resync=True, **kwargs)
        except ChannelClosed as exc:
            result["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    return t, result


def test_resync_skips_to_the_hello_answer() -> None:
    f = ResyncingFake()
    t, result = _open(f)
    first = f.hello()
    # The tail of some frame, a whole stale frame of another request, then the answer.
    f.send(b"\x12\x34" + encode({"type": "ok", "id": 3}) + b"x" * 10)
    second = f.hello()  # resent after a second without an answer
    assert (second["id"], second["nonce"]) == (first["id"], first["nonce"])
    f.send(_hello_answer(first["id"], first["nonce"], processes=2))
    t.join(5)
    ch = result["channel"]
    assert ch.info == {"version": "2", "pid": 7, "processes": 2, "uptime_s": 1.5}
    _serve(f, [REQ, _ok(first["id"] + 1, processes=[])])  # then framing as usual
    assert ch.processes() == []


def test_resync_gives_up_after_its_deadline() -> None:
    f = ResyncingFake()
    t, result = _open(f, resync_deadline=1.5)
    f.hello()
    t.join(5)
    assert isinstance(result.get("error"), ChannelClosed)


def test_a_hello_answer_with_another_nonce_closes() -> None:
    f = ResyncingFake()
    t, result = _open(f)
    request = f.hello()
    f.send(_hello_answer(request["id"], request["nonce"]))
    t.join(5)
    ch = result["channel"]
    other = _hello_answer(request["id"] + 1, "z" * 32)
    _serve(f, [REQ, other])
    with pytest.raises(ChannelClosed):
        ch.hello()


def test_closing_a_read_early_sends_cancel() -> None:
    f = FakeSupervisor()
    _serve(f, [REQ, encode({"type": "data", "id": 1}, b"abc")])
    chunks = f.channel.read_file("/x")
    assert next(chunks) == b"abc"
    chunks.close()
    assert json.loads(f.request()[4:]) == {"id": 2, "op": "cancel", "target": 1}


def test_watch_events() -> None:
    f = FakeSupervisor()
    event = {"type": "event", "id": 1, "is_dir": False}
    frames = [
        REQ,
        encode({"type": "watching", "id": 1, "dirs": 1}),
        encode({**event, "kind": "create", "path": "/d/a"}),
        encode({**event, "kind": "overflow", "path": ""}),
        _ok(1),
    ]
    _serve(f, frames)
    watch = f.channel.watch("/d")
    assert list(watch.events(timeout=5)) == [
        WatchEvent("create", "/d/a", False),
        WatchEvent("overflow", "", False),
    ]
    assert watch.ended


@pytest.mark.parametrize(
    ("header", "payload"),
    [
        ({"type": "event", "id": 1, "kind": "explode", "path": "/", "is_dir": False}, b""),
        ({"type": "event", "id": 1, "kind": "create", "path": "/", "is_dir": 1}, b""),
        ({"type": "watching", "id": 1, "dirs": 0}, b""),
        ({"id": 1, "nonce": "n", "type": "hello"}, b"[]"),
        ({"id": 1, "nonce": "n", "type": "hello"}, b'{"version": "2"}'),
        ({"id": 1, "nonce": "n", "type": "hello", "extra": 1}, b"{}"),
    ],
)
def test_invalid_new_frames(header: dict[str, object], payload: bytes) -> None:
    with pytest.raises(FrameError):
        _read(encode(header, payload))
