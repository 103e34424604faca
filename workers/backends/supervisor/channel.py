"""A typed client of the supervisor: one channel, every operation multiplexed by request id.

A reader thread reads and validates every frame (frames.py) and hands it to the waiter of its
request id. Each waiter holds at most 256 frames and 8 MiB: when one is full the reader waits
(the supervisor then blocks on its own stdout, and the process on its pipe) but only for
``stall`` seconds; then that request fails with SupervisorError ``overflow`` and its frames
are dropped, so a request nobody reads holds up the others on the channel once and briefly,
and the worker's memory stays bounded. Any invalid frame ends the channel: every waiter gets
ChannelClosed, and later calls raise it at once.

Reattaching (``resync=True``): a worker that attaches to a supervisor another worker talked to
may start reading in the middle of a frame, and the old worker may have left half a frame on
the supervisor's stdin. The channel then sends the SYNC marker and a ``hello`` with a random
nonce (again every second, for at most ``resync_deadline`` seconds), discards what it reads
until the exact bytes of the answer's header, and frames normally from there. Request ids
start at a random number, so frames still in flight for an earlier worker's requests never
meet this channel's (they are dropped as unknown).

Stopping early: closing a read_file or events generator, or releasing a Process or closing a
Watch before its end, sends ``cancel``, so the supervisor stops streaming that request (a
process keeps running)."""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import secrets
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import IO, Any

from workers.backends.supervisor.frames import (
    MAX_CHUNK,
    MAX_HELLO,
    SYNC,
    Frame,
    FrameError,
    encode,
    hello_header,
    read_frame,
)

logger = logging.getLogger(__name__)

_QUEUE_FRAMES = 256  # frames held per request before the reader thread waits
_QUEUE_BYTES = 8 << 20  # bytes held per request (a frame may be 1 MiB)
_STALL = 2.0  # seconds the reader waits for a request's consumer before failing it
_RESYNC_DEADLINE = 10.0  # more than the supervisor's 5 s for a half frame to be discarded
_RESYNC_EVERY = 1.0  # seconds between SYNC + hello sends while resynchronising
_SCAN_READ = 4096  # bytes read at a time while looking for the hello answer


class SupervisorError(Exception):
    """The supervisor refused a request: ``code`` (e.g. not_found, invalid) and message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class ChannelClosed(SupervisorError):
    """The channel is gone: the supervisor exited, or sent an invalid frame."""

    def __init__(self, message: str) -> None:
        super().__init__("closed", message)


@dataclass(frozen=True)
class Output:
    stream: str
    seq: int
    data: bytes


@dataclass(frozen=True)
class WatchEvent:
    """A change under a watched directory. ``kind``: create, write, remove, rename (the old
    name of a move; the new name comes as create), chmod, or overflow (events were lost;
    ``path`` is empty)."""

    kind: str
    path: str
    is_dir: bool


class _Pushback:
    """A read function that returns ``data`` first, then reads on from ``read``."""

    def __init__(self, data: bytes, read: Callable[[int], bytes]) -> None:
        self._data = data
        self._read = read

    def read(self, n: int) -> bytes:
        if self._data:
            chunk, self._data = self._data[:n], self._data[n:]
            return chunk
        return self._read(n)


def scan_for(read: Callable[[int], bytes], needle: bytes) -> bytes | None:
    """Discard bytes until a frame whose header is exactly ``needle`` (the hello answer):
    the bytes from that frame's length prefix on, or None if the stream ends first.
    ``read(n)`` must return what is available (at most n bytes), not wait for all n. Only
    a window of len(needle) + 7 bytes plus one read is held."""
    keep = len(needle) + 7
    window = b""
    while chunk := read(_SCAN_READ):
        window += chunk
        at = window.find(needle, 8)
        while at >= 0:
            size, head = struct.unpack(">II", window[at - 8 : at])
            if head == len(needle) and 4 + head <= size <= 4 + head + MAX_HELLO:
                return window[at - 8 :]
            at = window.find(needle, at + 1)
        window = window[-keep:]
    return None


@dataclass(frozen=True)
class Exit:
    code: int | None
    signal: str | None
    timed_out: bool
    started_at: float
    ended_at: float
    duration_ms: float


class _Waiter:
    """One request's frames in arrival order, bounded in count and bytes, then its end."""

    def __init__(self) -> None:
        self._frames: deque[Frame] = deque()
        self._bytes = 0
        self._error: SupervisorError | None = None  # raised once the frames are consumed
        self._cond = threading.Condition()

    def _room(self, size: int) -> bool:
        return (
            self._error is not None
            or not self._frames
            or (len(self._frames) < _QUEUE_FRAMES and self._bytes + size <= _QUEUE_BYTES)
        )

    def put(self, frame: Frame, stall: float) -> bool:
        """Queue a frame (dropped once ended); False when no room came within ``stall`` s."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._room(frame.size), stall):
                return False
            if self._error is None:
                self._frames.append(frame)
                self._bytes += frame.size
                self._cond.notify_all()
            return True

    def end(self, error: SupervisorError, drop: bool = False) -> None:
        """Raise ``error`` after the queued frames (or at once with ``drop``)."""
        with self._cond:
            self._error = self._error or error
            if drop:
                self._frames.clear()
                self._bytes = 0
            self._cond.notify_all()

    def pending(self) -> bool:
        return bool(self._frames)

    def get(self, timeout: float | None) -> Frame:
        """Raises the end's error, TimeoutError."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._frames or self._error, timeout):
                raise TimeoutError("the supervisor did not answer in time")
            if not self._frames:
                assert self._error is not None
                raise self._error
            frame = self._frames.popleft()
            self._bytes -= frame.size
            self._cond.notify_all()
            return frame


class Channel:
    """The worker's end of a supervisor's stdio: ``reader`` is its stdout, ``writer`` its stdin.
    ``timeout`` bounds each wait for an answer; ``stall`` how long the reader waits for one
    request's consumer to make room (see the module's docstring).

    With ``resync``, the constructor resynchronises first (see the module's docstring) and
    raises ChannelClosed when no hello answer came within ``resync_deadline`` seconds or the
    stream ended; the caller then closes ``reader`` and ``writer`` (the reader thread may be
    blocked on them). While it scans, the reader is read with ``read1(n)`` when it has one,
    else ``read(n)``, which must then return what is available rather than wait for n bytes
    (a raw stream, a socket). ``info`` is the supervisor's hello answer (version, pid,
    processes, uptime_s) after a resync, else None. ``first_id`` fixes the first request id
    (tests); by default it is random."""

    def __init__(
        self,
        reader: IO[bytes],
        writer: IO[bytes],
        timeout: float = 30.0,
        stall: float = _STALL,
        resync: bool = False,
        resync_deadline: float = _RESYNC_DEADLINE,
        first_id: int | None = None,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.timeout = timeout
        self.stall = stall
        # Below 2**53, so the ids stay exact wherever JSON numbers are doubles.
        start = secrets.randbelow(1 << 50) + (1 << 32) if first_id is None else first_id
        self._ids = itertools.count(start)
        self._lock = threading.Lock()  # guards _waiters and _closed
        # Writes have their own lock: a write blocked on a full stdin (the supervisor busy
        # writing its stdout) must not keep the reader thread from draining that stdout.
        self._wlock = threading.Lock()
        self._waiters: dict[int, _Waiter] = {}
        self._closed: str | None = None
        self._violated = False  # it ended because the supervisor broke the protocol
        self._ended = threading.Event()  # set once _closed is
        self._cancels: deque[int] = deque()  # cancels to send once the writer is free
        self.info: dict[str, Any] | None = None
        hello_id, hello_waiter, nonce = 0, _Waiter(), ""
        self._needle: bytes | None = None
        if resync:
            nonce = secrets.token_hex(16)
            hello_id, hello_waiter = self._open()
            self._needle = hello_header(hello_id, nonce)
        self._thread = threading.Thread(
            target=self._read_loop, name="supervisor-channel", daemon=True
        )
        self._thread.start()
        if resync:
            try:
                self.info = self._resync(hello_id, hello_waiter, nonce, resync_deadline)
            finally:
                self._forget(hello_id)

    def _resync(
        self, request_id: int, waiter: _Waiter, nonce: str, deadline: float
    ) -> dict[str, Any]:
        message = SYNC + encode({"id": request_id, "op": "hello", "nonce": nonce})
        end = time.monotonic() + deadline
        while True:
            self._write(message)
            try:
                frame = self._next(waiter, max(0.0, min(_RESYNC_EVERY, end - time.monotonic())))
            except TimeoutError:
                if time.monotonic() < end:
                    continue
                raise self._violation(
                    f"no hello answer from the supervisor within {deadline} s"
                ) from None
            return self._hello_info(frame, nonce)

    def _hello_info(self, frame: Frame, nonce: str) -> dict[str, Any]:
        if self._expect(frame, "hello").header["nonce"] != nonce:
            raise self._violation("a hello answer with another nonce")
        info: dict[str, Any] = json.loads(frame.payload)  # validated by frames.validate
        return info

    def hello(self, timeout: float | None = None) -> dict[str, Any]:
        """The supervisor's info: version, pid, processes (running), uptime_s. Raises
        ChannelClosed, TimeoutError."""
        nonce = secrets.token_hex(16)
        request_id, waiter = self._open()
        try:
            self._send({"id": request_id, "op": "hello", "nonce": nonce})
            return self._hello_info(self._next(waiter, timeout), nonce)
        finally:
            self._forget(request_id)

    @property
    def closed(self) -> str | None:
        """Why the channel ended, or None while it is open."""
        return self._closed

    @property
    def violated(self) -> bool:
        """Whether the channel ended because the supervisor broke the protocol (an invalid or
        unexpected frame, a hello it did not answer): nothing it says can be trusted. An end
        of the connection or a close by the worker is not one."""
        return self._violated

    def wait_closed(self, timeout: float | None = None) -> str | None:
        """Wait until the channel ends; why it did (None when ``timeout`` passed first)."""
        self._ended.wait(timeout)
        return self._closed

    def _read_loop(self) -> None:
        try:
            read: Callable[[int], bytes] = self._reader.read
            if self._needle is not None:
                start = scan_for(getattr(self._reader, "read1", read), self._needle)
                if start is None:
                    self._end("the supervisor closed its stdout")
                    return
                read = _Pushback(start, read).read
            while (frame := read_frame(read)) is not None:
                with self._lock:
                    waiter = self._waiters.get(frame.id)
                if frame.id == 0:
                    logger.warning("supervisor: %s", frame.header.get("message"))
                elif waiter is not None and not waiter.put(frame, self.stall):
                    self._overflow(frame.id, waiter)
            self._end("the supervisor closed its stdout")
        except FrameError as exc:
            self._end(f"invalid frame from the supervisor: {exc}", violation=True)
        except (OSError, ValueError) as exc:
            self._end(f"reading from the supervisor failed: {exc}")

    def _overflow(self, request_id: int, waiter: _Waiter) -> None:
        self._forget(request_id)
        message = (
            f"request {request_id} was not read: {_QUEUE_FRAMES} frames or {_QUEUE_BYTES} bytes"
            f" waited {self.stall} s; its frames are dropped"
        )
        logger.warning("supervisor: %s", message)
        waiter.end(SupervisorError("overflow", message), drop=True)

    def _end(self, reason: str, violation: bool = False) -> None:
        with self._lock:
            if self._closed is None:
                self._closed = reason
                self._violated = violation
            reason = self._closed
            waiters = list(self._waiters.values())
            self._waiters.clear()
        for waiter in waiters:
            waiter.end(ChannelClosed(reason))
        self._ended.set()

    def _violation(self, reason: str) -> ChannelClosed:
        """End the channel as broken by the supervisor; the error to raise."""
        self._end(reason, violation=True)
        return ChannelClosed(self._closed or reason)

    def close(self, reason: str = "closed by the worker") -> None:
        """Close the supervisor's stdin (it then kills its processes and exits); ``reason``
        is what ``closed`` says from now on (unless it had ended already)."""
        with contextlib.suppress(OSError):
            self._writer.close()
        self._end(reason)

    def _open(self) -> tuple[int, _Waiter]:
        request_id = next(self._ids)
        waiter = _Waiter()
        with self._lock:
            if self._closed is not None:
                raise ChannelClosed(self._closed)
            self._waiters[request_id] = waiter
        return request_id, waiter

    def _forget(self, request_id: int) -> None:
        # No lock: dict.pop is atomic, and this runs in generators' finally blocks, which a
        # garbage collection may run in a thread that holds a lock.
        self._waiters.pop(request_id, None)

    def _send(self, header: dict[str, Any], payload: bytes = b"") -> None:
        self._write(encode(header, payload))

    def _write(self, data: bytes) -> None:
        with self._wlock:
            if self._closed is not None:
                raise ChannelClosed(self._closed)
            try:
                self._flush_cancels()
                self._writer.write(data)
                self._writer.flush()
            except (OSError, ValueError) as exc:
                raise ChannelClosed(f"writing to the supervisor failed: {exc}") from None

    def _flush_cancels(self) -> None:
        """Send the queued cancels; self._wlock is held."""
        if not self._cancels:
            return
        while self._cancels:
            target = self._cancels.popleft()
            request = {"id": next(self._ids), "op": "cancel", "target": target}
            self._writer.write(encode(request))
        self._writer.flush()

    def _cancel(self, target: int) -> None:
        """Ask the supervisor to stop request ``target``; its answer is not waited for. Sent
        now when the writer is free, else with the next write: this runs in finally blocks,
        possibly inside a write of the same thread (a garbage collection)."""
        if self._closed is not None:
            return
        self._cancels.append(target)
        if not self._wlock.acquire(blocking=False):
            return
        try:
            if self._closed is None:
                self._flush_cancels()
        except (OSError, ValueError):
            pass  # the reader thread sees the channel end
        finally:
            self._wlock.release()

    def _next(self, waiter: _Waiter, timeout: float | None) -> Frame:
        frame = waiter.get(self.timeout if timeout is None else timeout)
        if frame.type == "error":
            raise SupervisorError(frame.header["code"], frame.header["message"])
        return frame

    def _expect(self, frame: Frame, *types: str) -> Frame:
        if frame.type not in types:
            raise self._violation(f"a {frame.type!r} frame where {types} was expected")
        return frame

    def call(
        self, op: str, timeout: float | None = None, payload: bytes = b"", **fields: Any
    ) -> dict[str, Any]:
        """One request answered by one ``ok`` frame (its header). Raises SupervisorError,
        ChannelClosed, TimeoutError."""
        request_id, waiter = self._open()
        try:
            self._send({"id": request_id, "op": op, **fields}, payload)
            return self._expect(self._next(waiter, timeout), "ok").header
        finally:
            self._forget(request_id)

    # Processes

    def spawn(
        self,
        argv: list[str] | None = None,
        cmd: str | None = None,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        stdin: bool = False,
        timeout: float | None = None,
        pty: tuple[int, int] | None = None,
    ) -> Process:
        """Start a process (argv, or cmd for ``/bin/sh -c``) in its own process group.
        ``pty`` (cols, rows) runs it on a pseudo-terminal: its output comes on stream "pty"
        and write_stdin always goes to the terminal (eof sends ^D).
        Raises SupervisorError (not_found, invalid, busy), ChannelClosed, TimeoutError."""
        fields: dict[str, Any] = {"argv": argv} if cmd is None else {"cmd": cmd}
        if pty is not None:
            fields["pty"] = {"cols": pty[0], "rows": pty[1]}
        if env:
            fields["env"] = env
        if cwd:
            fields["cwd"] = cwd
        if timeout:
            fields["timeout"] = timeout
        request_id, waiter = self._open()
        try:
            self._send({"id": request_id, "op": "proc.spawn", "stdin": stdin, **fields})
            started = self._expect(self._next(waiter, None), "started")
        except BaseException:
            self._forget(request_id)
            raise
        return Process(self, request_id, waiter, started.header["pid"], started.header["pgid"])

    def processes(self) -> list[dict[str, Any]]:
        """The running and recently exited processes (pid, pgid, argv, started_at, stdin,
        exited, last_seq)."""
        return list(self.call("proc.list")["processes"])

    def attach(self, pid: int, after_seq: int = 0) -> Process:
        """Follow a process again: the output still kept with seq > ``after_seq``, then the
        live output and the exit. ``truncated`` on the result says older output was dropped
        (``first_seq`` is the first kept). Raises SupervisorError (no_such_process, invalid),
        ChannelClosed, TimeoutError."""
        request_id, waiter = self._open()
        try:
            self._send({"id": request_id, "op": "proc.attach", "pid": pid, "after_seq": after_seq})
            h = self._expect(self._next(waiter, None), "attached").header
        except BaseException:
            self._forget(request_id)
            raise
        if h["pid"] != pid or h["last_seq"] < after_seq:
            self._forget(request_id)
            raise self._violation(f"an attach answer for pid {h['pid']} that does not fit")
        seq = max(after_seq, h["first_seq"] - 1)
        return Process(
            self, request_id, waiter, h["pid"], h["pgid"], h["truncated"], h["first_seq"], seq
        )

    # Files

    def stat(self, path: str) -> dict[str, Any]:
        """Raises SupervisorError (not_found, permission, ...)."""
        return dict(self.call("fs.stat", path=path)["entry"])

    def list_dir(self, path: str, depth: int = 1) -> list[dict[str, Any]]:
        """Entries under ``path`` down to ``depth`` levels (symlinks not followed)."""
        request_id, waiter = self._open()
        entries: list[dict[str, Any]] = []
        try:
            self._send({"id": request_id, "op": "fs.list", "path": path, "depth": depth})
            while (
                frame := self._expect(self._next(waiter, None), "entries", "ok")
            ).type == "entries":
                entries.extend(frame.header["entries"])
            return entries
        finally:
            self._forget(request_id)

    def read_file(self, path: str) -> Iterator[bytes]:
        """The file's bytes, chunk by chunk, to its end (pseudo-files whose size says 0 too).
        Closing the generator early cancels the read. Raises SupervisorError (not_found,
        is_dir, invalid: not a regular file, ...)."""
        request_id, waiter = self._open()
        ended = False
        try:
            self._send({"id": request_id, "op": "fs.read", "path": path})
            while True:
                try:
                    frame = self._expect(self._next(waiter, None), "data", "ok")
                except SupervisorError:
                    ended = True
                    raise
                if frame.type == "ok":
                    ended = True
                    return
                yield frame.payload
        finally:
            self._forget(request_id)
            if not ended:
                self._cancel(request_id)

    def write_file(self, path: str, data: bytes | Iterable[bytes], mode: int | None = None) -> int:
        """Write a whole file (it replaces the old one atomically); the size written."""
        chunks = [data] if isinstance(data, bytes) else data
        request_id, waiter = self._open()
        ended = False
        try:
            header: dict[str, Any] = {
                "id": request_id,
                "op": "fs.write",
                "path": path,
                "more": True,
            }
            if mode is not None:
                header["mode"] = mode
            for chunk in chunks:
                for start in range(0, len(chunk), MAX_CHUNK):
                    self._send(header, chunk[start : start + MAX_CHUNK])
                    header = {"id": request_id, "op": "fs.write", "more": True}
                    if waiter.pending():  # an early error: end the stream, then raise it
                        ended = True
                        self._send({"id": request_id, "op": "fs.write", "more": False})
                        self._next(waiter, None)
            self._send({**header, "more": False})
            ended = True
            size = self._expect(self._next(waiter, None), "ok").header.get("size")
            if type(size) is not int:
                raise self._violation("an fs.write answer without a size")
            return size
        finally:
            self._forget(request_id)
            if not ended:  # the data failed midway: the supervisor removes its temporary file
                self._cancel(request_id)

    def watch(self, path: str, recursive: bool = False) -> Watch:
        """Follow changes under directory ``path`` (and with ``recursive`` its subdirectories,
        also those created later; at most 4096 directories), from the moment this returns.
        Raises SupervisorError (not_found, not_dir, busy: more than 64 watches or too many
        directories), ChannelClosed, TimeoutError."""
        request_id, waiter = self._open()
        try:
            self._send({"id": request_id, "op": "fs.watch", "path": path, "recursive": recursive})
            h = self._expect(self._next(waiter, None), "watching").header
        except BaseException:
            self._forget(request_id)
            raise
        return Watch(self, request_id, waiter, h["dirs"])

    def mkdir(self, path: str, parents: bool = False) -> None:
        self.call("fs.mkdir", path=path, parents=parents)

    def move(self, path: str, dst: str) -> None:
        self.call("fs.move", path=path, dst=dst)

    def remove(self, path: str, recursive: bool = False) -> None:
        self.call("fs.remove", path=path, recursive=recursive)


@dataclass(eq=False)
class Process:
    """A process started by Channel.spawn or followed by Channel.attach: its events, stdin and
    signals."""

    _channel: Channel
    _id: int
    _waiter: _Waiter
    pid: int
    pgid: int
    truncated: bool = False  # attach only: output before first_seq was dropped
    first_seq: int = 1
    _seq: int = 0
    _ended: bool = False  # the exit or an error came: nothing to cancel

    def events(self, timeout: float | None = None) -> Generator[Output | Exit, None, None]:
        """Output chunks in order, then the Exit. Raises ChannelClosed, TimeoutError,
        SupervisorError ``overflow`` when they were not read in time (Channel.attach with
        ``after_seq`` the last seq seen follows on from the supervisor's replay ring)."""
        try:
            while not isinstance(event := self.next_event(timeout), Exit):
                yield event
            yield event
        finally:
            self.release()

    def next_event(self, timeout: float | None = None) -> Output | Exit:
        """The next output chunk or the Exit. TimeoutError (nothing came within ``timeout``)
        leaves the process followed, so a caller can wait again; other errors as ``events``.
        Call ``release`` when done."""
        try:
            frame = self._channel._expect(
                self._channel._next(self._waiter, timeout), "output", "exit"
            )
        except SupervisorError:
            self._ended = True
            raise
        h = frame.header
        if h["pid"] != self.pid:
            raise self._channel._violation(f"a frame of pid {h['pid']} for process {self.pid}")
        if frame.type == "exit":
            self._ended = True
            return Exit(
                h["code"],
                h["signal"],
                h["timed_out"],
                h["started_at"],
                h["ended_at"],
                h["duration_ms"],
            )
        if h["seq"] != self._seq + 1:
            raise self._channel._violation(f"output seq {h['seq']} after {self._seq}")
        self._seq = h["seq"]
        return Output(h["stream"], h["seq"], frame.payload)

    def ready(self) -> bool:
        """Whether a frame is already here (``next_event`` would not wait)."""
        return self._waiter.pending()

    def release(self) -> None:
        """Stop following the process's frames (it runs on). Before its exit this tells the
        supervisor to stop sending them (``cancel``); frames already on the way are dropped."""
        self._channel._forget(self._id)
        if not self._ended:
            self._ended = True
            self._channel._cancel(self._id)

    def wait(self, timeout: float | None = None) -> tuple[bytes, bytes, Exit]:
        """Collect the whole output: (stdout, stderr, exit); a pty's output counts as stdout."""
        out: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
        for event in self.events(timeout):
            if isinstance(event, Exit):
                return b"".join(out["stdout"]), b"".join(out["stderr"]), event
            out["stderr" if event.stream == "stderr" else "stdout"].append(event.data)
        raise ChannelClosed("no exit")

    def write_stdin(self, data: bytes, eof: bool = False) -> None:
        """Raises SupervisorError (closed, no_such_process)."""
        for start in range(0, max(len(data), 1), MAX_CHUNK):
            last = start + MAX_CHUNK >= len(data)
            chunk = data[start : start + MAX_CHUNK]
            self._channel.call("proc.stdin", pid=self.pid, eof=eof and last, payload=chunk)

    def close_stdin(self) -> None:
        self.write_stdin(b"", eof=True)

    def resize(self, cols: int, rows: int) -> None:
        """Set the size of the process's pty. Raises SupervisorError (invalid, no_such_process)."""
        self._channel.call("proc.resize", pid=self.pid, cols=cols, rows=rows)

    def signal(self, name: str) -> None:
        """Send a signal (e.g. "SIGTERM") to the process group."""
        self._channel.call("proc.signal", pid=self.pid, signal=name)


@dataclass(eq=False)
class Watch:
    """A directory followed by Channel.watch; ``dirs`` is how many directories it watched at
    the start. A context manager: leaving it closes the watch."""

    _channel: Channel
    _id: int
    _waiter: _Waiter
    dirs: int
    ended: bool = False  # the watch is over: closed, the directory went away, or an error

    def events(self, timeout: float | None = None) -> Generator[WatchEvent, None, None]:
        """The events as they come; returns when none came for ``timeout`` seconds (None: the
        channel's timeout; 0: only those already here) or when the watch ends (then ``ended``:
        the directory went away). Events not read pile up to the channel's per-request bound,
        after which the watch fails with ``overflow``. Raises SupervisorError (busy: a new
        subdirectory beyond the limit), ChannelClosed."""
        while not self.ended:
            try:
                frame = self._channel._expect(
                    self._channel._next(self._waiter, timeout), "event", "ok"
                )
            except TimeoutError:
                return
            except SupervisorError as exc:
                self._end()
                if exc.code == "overflow":
                    # The channel dropped the frames, but the supervisor still watches: tell
                    # it to stop (no cancel is sent for a request that failed).
                    self._channel._cancel(self._id)
                raise
            if frame.type == "ok":
                self._end()
                return
            h = frame.header
            yield WatchEvent(h["kind"], h["path"], h["is_dir"])

    def _end(self) -> None:
        self.ended = True
        self._channel._forget(self._id)

    def close(self) -> None:
        """Stop watching (the supervisor is told to; events still queued are dropped)."""
        if not self.ended:
            self._end()
            self._channel._cancel(self._id)

    def __enter__(self) -> Watch:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
