"""The commands the web (and the control worker) send to a sandbox host, and their results: one
dataclass each, used by both sides, so that what is sent and what is parsed cannot drift.

A command travels as the Celery task's keyword arguments (``to_kwargs``: a JSON object) under
its task name (``name``, from shared/tasks.py); the host parses it back with ``from_kwargs``
(workers/host/tasks.py) and answers with the command's ``Result`` as JSON (``to_json``), which
the web reads back with ``Result.from_json``. The JSON of both is the same as before these
classes existed, so a web and a worker of different versions still understand each other.

Every host command names its sandbox and the sandbox's tenant (for the tenant's share of the
worker; a message without one, from an older web, is looked up by the host).
"""

from __future__ import annotations

import base64
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, TypeVar

from shared import tasks

C = TypeVar("C", bound="Command")


@dataclass(frozen=True, kw_only=True)
class Command:
    """A message for one Celery task: its kwargs are this dataclass's fields."""

    name: ClassVar[str]

    def to_kwargs(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_kwargs(cls: type[C], kwargs: dict[str, Any]) -> C:
        """The command from a task's kwargs; keys it does not know are ignored (a newer
        sender's). Raises TypeError when a required field is missing."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in kwargs.items() if k in known})


@dataclass(frozen=True, kw_only=True)
class HostCommand(Command):
    sandbox_id: str
    tenant_id: str = ""


# -- sandboxes -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Created:
    host: str

    def to_json(self) -> dict[str, Any]:
        return {"host": self.host}

    @classmethod
    def from_json(cls, raw: Any) -> Created:
        return cls(str(raw["host"]))


@dataclass(frozen=True, kw_only=True)
class SandboxCreate(HostCommand):
    """Start a sandbox from ``template`` with ``network`` (NetworkPolicy.to_json(); None from
    an older web: no network)."""

    name: ClassVar[str] = tasks.SANDBOX_CREATE
    template: str
    network: dict[str, Any] | None = None


@dataclass(frozen=True)
class Destroyed:
    def to_json(self) -> dict[str, Any]:
        return {}


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


# -- processes -----------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class ProcessStart(HostCommand):
    name: ClassVar[str] = tasks.PROCESS_START
    process_id: str
    cmd: str
    env: dict[str, str]
    cwd: str


@dataclass(frozen=True)
class Written:
    written: bool

    def to_json(self) -> dict[str, Any]:
        return {"written": self.written}

    @classmethod
    def from_json(cls, raw: Any) -> Written:
        return cls(bool(raw["written"]))


@dataclass(frozen=True, kw_only=True)
class ProcessStdin(HostCommand):
    name: ClassVar[str] = tasks.PROCESS_STDIN
    process_id: str
    data: str


@dataclass(frozen=True)
class Killed:
    killed: bool

    def to_json(self) -> dict[str, Any]:
        return {"killed": self.killed}

    @classmethod
    def from_json(cls, raw: Any) -> Killed:
        return cls(bool(raw["killed"]))


@dataclass(frozen=True, kw_only=True)
class ProcessKill(HostCommand):
    name: ClassVar[str] = tasks.PROCESS_KILL
    process_id: str


# -- agent ---------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class AgentDrain(Command):
    """Run the queued prompts of an agent session (no reply: fire and forget)."""

    name: ClassVar[str] = tasks.AGENT_DRAIN
    session_id: str
