"""The envd protocol's generated modules (web/api/envd/gen/) are current with their sources
and speak the official E2B SDK's wire format: every message, field (name, number, type,
label), enum value and method of ours is the SDK's own, and ours lacks none of the SDK's."""

from __future__ import annotations

import hashlib
from typing import Any

from e2b.envd.filesystem import filesystem_pb as sdk_filesystem
from e2b.envd.process import process_pb as sdk_process

from web.api.envd import generate
from web.api.envd.gen import PROTO_SHA256
from web.api.envd.gen import filesystem_pb as ours_filesystem
from web.api.envd.gen import process_pb as ours_process


def test_generated_modules_are_current_with_their_protos() -> None:
    current = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in generate.sources()}
    assert current, "no .proto sources found"
    assert current == PROTO_SHA256, "a .proto changed: run `make proto`"
    assert generate.init_module().endswith("}\n")


def _fields(msg: Any) -> dict[str, Any]:
    return {
        "fields": sorted(
            (f.name, f.number, int(f.type), int(f.label), f.type_name, f.proto3_optional)
            for f in msg.field
        ),
        "nested": {n.name: _fields(n) for n in msg.nested_type},
        "oneofs": [o.name for o in msg.oneof_decl],
        "enums": {e.name: sorted((v.name, v.number) for v in e.value) for e in msg.enum_type},
    }


def _wire(file: Any) -> dict[str, Any]:
    """What of a FileDescriptorProto reaches the wire (not its file name, options, comments)."""
    return {
        "package": file.package,
        "messages": {m.name: _fields(m) for m in file.message_type},
        "enums": {e.name: sorted((v.name, v.number) for v in e.value) for e in file.enum_type},
        "services": {
            s.name: sorted(
                (m.name, m.input_type, m.output_type, m.client_streaming, m.server_streaming)
                for m in s.method
            )
            for s in file.service
        },
    }


def _same_wire_format(ours_file: Any, sdk_file: Any, package: str) -> None:
    ours, sdk = _wire(ours_file), _wire(sdk_file)
    assert ours["package"] == sdk["package"] == package
    assert ours["services"] == sdk["services"]
    assert ours["enums"] == sdk["enums"]
    assert set(ours["messages"]) == set(sdk["messages"])
    for name, shape in sdk["messages"].items():
        assert ours["messages"][name] == shape, name


def test_filesystem_proto_is_the_sdks_wire_format() -> None:
    _same_wire_format(ours_filesystem.desc().proto, sdk_filesystem.desc().proto, "filesystem")


def test_process_proto_is_the_sdks_wire_format() -> None:
    _same_wire_format(ours_process.desc().proto, sdk_process.desc().proto, "process")
