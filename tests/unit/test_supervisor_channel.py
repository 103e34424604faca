"""The supervisor channel's framing and validation, against a fake supervisor on a pipe."""

from __future__ import annotations

import io
import os
import struct
import threading

import pytest

from workers.backends.supervisor.channel import (
    Channel,
    ChannelClosed,
    Exit,
    Output,
    SupervisorError,
)
from workers.backends.supervisor.frames import (
    MAX_CHUNK,
    MAX_FRAME,
    FrameError,
    encode,
    read_exactly,
    read_frame,
)


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
        self.channel = Channel(os.fdopen(resp_r, "rb"), os.fdopen(req_w, "wb"), timeout=5)

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
