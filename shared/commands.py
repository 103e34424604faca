"""The commands the web (and the control worker) send to a sandbox host, and their results: one
dataclass each, used by both sides, so that what is sent and what is parsed cannot drift.

A command travels as the Celery task's keyword arguments (``to_kwargs``: a JSON object) under
its task name (``name``, from shared/tasks.py); the host parses it back with ``from_kwargs``
(workers/host/tasks.py) and answers with the command's ``Result`` as JSON (``to_json``), which
the web reads back with ``Result.from_json``. The JSON of both is the same as before these
classes existed, so a web and a worker of different versions still understand each other.
Both are checked field by field and type by type when read back (``_parse``): what comes out
of Redis is not trusted to be well-formed.

Every host command names its sandbox and the sandbox's tenant (for the tenant's share of the
worker; a message without one, from an older web, is looked up by the host).
"""

from __future__ import annotations

import base64
import types
from dataclasses import asdict, dataclass, field, fields
from functools import cache
from typing import Any, ClassVar, TypeVar, Union, get_args, get_origin, get_type_hints

from shared import tasks

C = TypeVar("C", bound="Command")
R = TypeVar("R", bound="Reply")


@cache
def _hints(cls: Any) -> dict[str, Any]:
    """The dataclass's fields and their types (resolved once per class)."""
    hints = get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value has a field's type: plain types, unions (None too) and dicts, the
    kinds the fields below use."""
    if hint is Any:
        return True
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(_fits(value, h) for h in get_args(hint))
    if origin is dict:
        k, v = get_args(hint)
        return isinstance(value, dict) and all(
            _fits(a, k) and _fits(b, v) for a, b in value.items()
        )
    if origin is list:
        (item,) = get_args(hint)
        return isinstance(value, list) and all(_fits(v, item) for v in value)
    return isinstance(value, hint)


def _parse(cls: Any, raw: Any) -> Any:
    """An instance of the dataclass ``cls`` from the JSON object ``raw``, each value checked
    against its field's type; keys it does not know are ignored (a newer sender's). Raises
    TypeError when ``raw`` is not an object, a required field is missing or a value has the
    wrong type: Redis data is checked before it is used, whoever wrote it."""
    if not isinstance(raw, dict):
        raise TypeError(f"{cls.__name__}: not a JSON object")
    hints = _hints(cls)
    values = {k: v for k, v in raw.items() if k in hints}
    for name, value in values.items():
        if not _fits(value, hints[name]):
            want = getattr(hints[name], "__name__", hints[name])
            raise TypeError(f"{cls.__name__}.{name}: not a {want}")
    return cls(**values)


@dataclass(frozen=True, kw_only=True)
class Command:
    """A message for one Celery task: its kwargs are this dataclass's fields."""

    name: ClassVar[str]

    def to_kwargs(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_kwargs(cls: type[C], kwargs: dict[str, Any]) -> C:
        """The command from a task's kwargs (see _parse). Raises TypeError when a required
        field is missing or a value has the wrong type."""
        parsed: C = _parse(cls, kwargs)
        return parsed


@dataclass(frozen=True)
class Reply:
    """A host's answer whose JSON is its fields by name."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls: type[R], raw: Any) -> R:
        """Raises TypeError when ``raw`` does not have this reply's fields and types."""
        parsed: R = _parse(cls, raw)
        return parsed


@dataclass(frozen=True, kw_only=True)
class HostCommand(Command):
    sandbox_id: str
    tenant_id: str = ""


# -- sandboxes -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Created(Reply):
    host: str


@dataclass(frozen=True, kw_only=True)
class SandboxCreate(HostCommand):
    """Start a sandbox from ``template`` with ``network`` (NetworkPolicy.to_json(); None from
    an older web: no network)."""

    name: ClassVar[str] = tasks.SANDBOX_CREATE
    template: str
    network: dict[str, Any] | None = None
    # Placement claimed this warm pool's sandbox (started already: the host hands it over),
    # and the warm sandbox the host removes first to free the slot ("": none). (shared/pools.py)
    warm: bool = False
    evict: str = ""


@dataclass(frozen=True)
class Destroyed(Reply):
    pass


@dataclass(frozen=True, kw_only=True)
class SandboxDestroy(HostCommand):
    """Remove a sandbox and everything of it."""

    name: ClassVar[str] = tasks.SANDBOX_DESTROY


@dataclass(frozen=True)
class Port:
    ip: str
    port: int
    state: str = "LISTEN"

    def to_json(self) -> dict[str, Any]:
        return {"State": self.state, "Ip": self.ip, "Port": self.port}


@dataclass(frozen=True)
class Ports:
    ports: list[Port] = field(default_factory=list)

    def to_json(self) -> list[dict[str, Any]]:
        return [p.to_json() for p in self.ports]

    @classmethod
    def from_json(cls, raw: Any) -> Ports:
        return cls([Port(str(p["Ip"]), int(p["Port"]), str(p["State"])) for p in raw])


@dataclass(frozen=True, kw_only=True)
class SandboxPorts(HostCommand):
    name: ClassVar[str] = tasks.SANDBOX_PORTS


@dataclass(frozen=True)
class Paused(Reply):
    """``changed``: False when the sandbox was already in the state asked for."""

    changed: bool


@dataclass(frozen=True, kw_only=True)
class SandboxPause(HostCommand):
    """Freeze every process of the sandbox (the cgroup freezer); nothing is written to disk."""

    name: ClassVar[str] = tasks.SANDBOX_PAUSE


@dataclass(frozen=True, kw_only=True)
class SandboxResume(HostCommand):
    """Let a paused sandbox's processes run on."""

    name: ClassVar[str] = tasks.SANDBOX_RESUME


@dataclass(frozen=True)
class Usage(Reply):
    """What a sandbox uses now, read by its host from the container's cgroup and storage
    (where the tenant cannot fake it). CPU in percent of the sandbox's CPUs over a short
    sample; bytes otherwise."""

    cpu_used_pct: float
    mem_used: int
    mem_total: int
    mem_cache: int
    disk_used: int
    disk_total: int


@dataclass(frozen=True, kw_only=True)
class SandboxUsage(HostCommand):
    name: ClassVar[str] = tasks.SANDBOX_USAGE


# -- files ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DirEntry:
    name: str
    is_dir: bool


@dataclass(frozen=True)
class Listing:
    entries: list[DirEntry] = field(default_factory=list)

    def to_json(self) -> list[dict[str, Any]]:
        return [{"name": e.name, "isDir": e.is_dir} for e in self.entries]

    @classmethod
    def from_json(cls, raw: Any) -> Listing:
        return cls([DirEntry(str(e["name"]), bool(e["isDir"])) for e in raw])


@dataclass(frozen=True, kw_only=True)
class FsList(HostCommand):
    name: ClassVar[str] = tasks.FS_LIST
    path: str


@dataclass(frozen=True, kw_only=True)
class FsMkdir(HostCommand):
    name: ClassVar[str] = tasks.FS_MKDIR
    path: str


@dataclass(frozen=True, kw_only=True)
class FsRemove(HostCommand):
    name: ClassVar[str] = tasks.FS_REMOVE
    path: str


@dataclass(frozen=True)
class FileData:
    """A file's bytes; base64 on the wire (the reply channel is JSON)."""

    data: bytes

    def to_json(self) -> dict[str, Any]:
        return {"data": base64.b64encode(self.data).decode()}

    @classmethod
    def from_json(cls, raw: Any) -> FileData:
        return cls(base64.b64decode(raw["data"]))


@dataclass(frozen=True, kw_only=True)
class FsRead(HostCommand):
    name: ClassVar[str] = tasks.FS_READ
    path: str


@dataclass(frozen=True, kw_only=True)
class FsWrite(HostCommand):
    """``data`` is base64 (the message is JSON): build it with ``FsWrite.of``."""

    name: ClassVar[str] = tasks.FS_WRITE
    path: str
    data: str

    @classmethod
    def of(cls, sandbox_id: str, tenant_id: str, path: str, data: bytes) -> FsWrite:
        encoded = base64.b64encode(data).decode()
        return cls(sandbox_id=sandbox_id, tenant_id=tenant_id, path=path, data=encoded)

    def content(self) -> bytes:
        return base64.b64decode(self.data)


# -- files, whole entries (the envd protocol: web/api/envd) ---------------------------------------
ENTRY_TYPES = ("file", "dir", "symlink", "other")


@dataclass(frozen=True)
class FsEntry:
    """One entry as the sandbox's supervisor reports it (never following symlinks): ``type``
    one of ENTRY_TYPES, ``mode`` the permission bits, ``mtime`` Unix seconds, ``target`` a
    symlink's target ("" otherwise)."""

    name: str
    path: str
    type: str
    size: int
    mode: int
    mtime: float
    target: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: Any) -> FsEntry:
        """Raises TypeError for a malformed entry (a sandbox's words are untrusted)."""
        if isinstance(raw, dict) and isinstance(raw.get("mtime"), int):
            raw = {**raw, "mtime": float(raw["mtime"])}
        entry: FsEntry = _parse(cls, raw)
        if entry.type not in ENTRY_TYPES:
            raise TypeError(f"FsEntry.type: not one of {ENTRY_TYPES}")
        return entry


@dataclass(frozen=True)
class EntryReply(Reply):
    entry: FsEntry

    def to_json(self) -> dict[str, Any]:
        return {"entry": self.entry.to_json()}

    @classmethod
    def from_json(cls, raw: Any) -> EntryReply:
        if not isinstance(raw, dict):
            raise TypeError("EntryReply: not a JSON object")
        return cls(FsEntry.from_json(raw.get("entry")))


@dataclass(frozen=True)
class Entries(Reply):
    entries: list[FsEntry] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"entries": [e.to_json() for e in self.entries]}

    @classmethod
    def from_json(cls, raw: Any) -> Entries:
        if not isinstance(raw, dict) or not isinstance(raw.get("entries"), list):
            raise TypeError("Entries: not a JSON object with a list of entries")
        return cls([FsEntry.from_json(e) for e in raw["entries"]])


@dataclass(frozen=True, kw_only=True)
class FsStat(HostCommand):
    """The entry at ``path`` (a symlink itself, not its target)."""

    name: ClassVar[str] = tasks.FS_STAT
    path: str


@dataclass(frozen=True, kw_only=True)
class FsMove(HostCommand):
    """Rename ``path`` to ``dst`` (same filesystem); answers the moved entry."""

    name: ClassVar[str] = tasks.FS_MOVE
    path: str
    dst: str


@dataclass(frozen=True, kw_only=True)
class FsEntries(HostCommand):
    """The entries under directory ``path``, ``depth`` levels down (1: its children)."""

    name: ClassVar[str] = tasks.FS_ENTRIES
    path: str
    depth: int = 1


@dataclass(frozen=True, kw_only=True)
class FsWatch(HostCommand):
    """Follow directory ``path`` for watcher ``watcher_id``, whose record the web made first
    (shared/watches.py): the host drains its events into that record's stream until the
    record is gone. Answers once the watch is in place."""

    name: ClassVar[str] = tasks.FS_WATCH
    watcher_id: str
    path: str
    recursive: bool = False


# -- processes -----------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class ProcessCommand(HostCommand):
    """A host command about one process of the sandbox."""

    process_id: str


@dataclass(frozen=True, kw_only=True)
class ProcessStart(ProcessCommand):
    """Start ``cmd`` (``bash -c``). The envd protocol's options (workers/backends/base.py
    SpawnOptions), each absent from an older web's message: ``argv`` a program and its
    arguments to run instead (``cmd`` then describes it: an older worker runs that), a
    terminal of ``pty_cols`` x ``pty_rows`` (0: none), ``stdin`` open, ``timeout_ms`` (0:
    none) after which the group is killed, and ``envd``: an opaque string kept in the
    process's record (the web's sealed config, for the envd List)."""

    name: ClassVar[str] = tasks.PROCESS_START
    cmd: str
    env: dict[str, str]
    cwd: str
    argv: list[str] = field(default_factory=list)
    pty_cols: int = 0
    pty_rows: int = 0
    stdin: bool = True
    timeout_ms: int = 0
    envd: str = ""


@dataclass(frozen=True)
class Started(Reply):
    """``pid``: the process's pid (its group) inside the sandbox when the backend knows it
    at start, else 0. (An older worker answers no value at all.)"""

    pid: int = 0


@dataclass(frozen=True)
class Written(Reply):
    written: bool


@dataclass(frozen=True, kw_only=True)
class ProcessStdin(ProcessCommand):
    """``data`` as text; input that is not UTF-8 goes base64 in ``data_b64`` instead (an
    older worker, which knows only ``data``, writes nothing then)."""

    name: ClassVar[str] = tasks.PROCESS_STDIN
    data: str
    data_b64: str = ""

    @classmethod
    def of(cls, sandbox_id: str, tenant_id: str, process_id: str, data: bytes) -> ProcessStdin:
        ids = {"sandbox_id": sandbox_id, "tenant_id": tenant_id, "process_id": process_id}
        try:
            return cls(**ids, data=data.decode())
        except UnicodeDecodeError:
            return cls(**ids, data="", data_b64=base64.b64encode(data).decode())

    def content(self) -> bytes:
        return base64.b64decode(self.data_b64) if self.data_b64 else self.data.encode()


@dataclass(frozen=True, kw_only=True)
class ProcessCloseStdin(ProcessCommand):
    """End the process's input (Written: False when it has none open or is not running)."""

    name: ClassVar[str] = tasks.PROCESS_CLOSE_STDIN


@dataclass(frozen=True)
class Resized(Reply):
    resized: bool


@dataclass(frozen=True, kw_only=True)
class ProcessResize(ProcessCommand):
    """A new size for the process's terminal (False: it is not running)."""

    name: ClassVar[str] = tasks.PROCESS_RESIZE
    cols: int
    rows: int


# The signals a client may send through ProcessSignal.
SIGNALS = ("SIGTERM", "SIGKILL")


@dataclass(frozen=True, kw_only=True)
class ProcessSignal(ProcessCommand):
    """Send ``signal`` (one of SIGNALS) to the process group; unlike ProcessKill its output
    and end are kept as for any exit (Killed: False when it is not running)."""

    name: ClassVar[str] = tasks.PROCESS_SIGNAL
    signal: str


@dataclass(frozen=True)
class Killed(Reply):
    killed: bool


@dataclass(frozen=True, kw_only=True)
class ProcessKill(ProcessCommand):
    name: ClassVar[str] = tasks.PROCESS_KILL


# -- agent ---------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class AgentDrain(Command):
    """Run the queued prompts of an agent session (no reply: fire and forget)."""

    name: ClassVar[str] = tasks.AGENT_DRAIN
    session_id: str
