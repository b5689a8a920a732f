"""The contract file: committed generated code matches protos/, and every element of the .proto is documented."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2 as d

from server._proto import posters_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
CONTRACT = "posters/v1/posters.proto"
SERVICE = pb.DESCRIPTOR.services_by_name["PosterSimilarity"]


def test_generated_code_is_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, "scripts/gen_protos.py", "--check"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr + result.stdout


def parse_with_comments(proto_root: Path, name: str) -> d.FileDescriptorProto:
    """Parse a .proto with protoc (the pinned grpcio-tools), keeping comments (source info).

    protoc runs in a child process: its bundled libprotobuf crashes a process that has loaded TensorFlow's."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "descriptors.pb"
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "grpc_tools.protoc",
                f"-I{proto_root}",
                "--include_source_info",
                f"--descriptor_set_out={out}",
                name,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, f"protoc could not parse {name}: {result.stderr}"
        files = d.FileDescriptorSet.FromString(out.read_bytes()).file
    return next(f for f in files if f.name == name)


def undocumented(proto: d.FileDescriptorProto) -> list[str]:
    """Every service, rpc, message, field, oneof, enum and enum value without a leading or trailing comment."""
    comments = {
        tuple(loc.path)
        for loc in proto.source_code_info.location
        if loc.leading_comments.strip() or loc.trailing_comments.strip()
    }
    bare: list[str] = []

    def check(path: list[int], name: str) -> None:
        if tuple(path) not in comments:
            bare.append(name)

    def enum(e: d.EnumDescriptorProto, path: list[int], name: str) -> None:
        check(path, name)
        for i, v in enumerate(e.value):
            check(path + [d.EnumDescriptorProto.VALUE_FIELD_NUMBER, i], f"{name}.{v.name}")

    def message(m: d.DescriptorProto, path: list[int], name: str) -> None:
        check(path, name)
        for i, f in enumerate(m.field):
            check(path + [d.DescriptorProto.FIELD_FIELD_NUMBER, i], f"{name}.{f.name}")
        synthetic = {f.oneof_index for f in m.field if f.proto3_optional}  # `optional` makes a hidden oneof
        for i, o in enumerate(m.oneof_decl):
            if i not in synthetic:
                check(path + [d.DescriptorProto.ONEOF_DECL_FIELD_NUMBER, i], f"{name}.{o.name}")
        for i, n in enumerate(m.nested_type):
            message(n, path + [d.DescriptorProto.NESTED_TYPE_FIELD_NUMBER, i], f"{name}.{n.name}")
        for i, e in enumerate(m.enum_type):
            enum(e, path + [d.DescriptorProto.ENUM_TYPE_FIELD_NUMBER, i], f"{name}.{e.name}")

    for i, s in enumerate(proto.service):
        path = [d.FileDescriptorProto.SERVICE_FIELD_NUMBER, i]
        check(path, s.name)
        for j, rpc in enumerate(s.method):
            check(path + [d.ServiceDescriptorProto.METHOD_FIELD_NUMBER, j], f"{s.name}.{rpc.name}")
    for i, m in enumerate(proto.message_type):
        message(m, [d.FileDescriptorProto.MESSAGE_TYPE_FIELD_NUMBER, i], m.name)
    for i, e in enumerate(proto.enum_type):
        enum(e, [d.FileDescriptorProto.ENUM_TYPE_FIELD_NUMBER, i], e.name)
    return bare


def test_the_checker_finds_bare_elements(tmp_path: Path) -> None:
    (tmp_path / "t.proto").write_text("""syntax = "proto3";
package t;
// A service.
service S {
  // Documented.
  rpc A(M) returns (M);
  rpc B(M) returns (M);
}
// A message.
message M {
  int32 documented = 1;  // trailing comments count
  int32 bare = 2;
  // Documented.
  optional float maybe = 3;
  // Documented.
  oneof choice {
    // Documented.
    string a = 4;
    string b = 5;
  }
  message Inner { int32 x = 1; }  // the comment belongs to the nested message, not its field
  enum Color {
    // Documented.
    COLOR_UNSPECIFIED = 0;
    RED = 1;
  }
}
message Bare {}
""")
    assert undocumented(parse_with_comments(tmp_path, "t.proto")) == [
        "S.B",
        "M.bare",
        "M.b",
        "M.Inner",
        "M.Inner.x",
        "M.Color",
        "M.Color.RED",
        "Bare",
    ]


def test_every_rpc_is_documented() -> None:
    proto = parse_with_comments(PROTO_ROOT, CONTRACT)
    assert [m.name for m in proto.service[0].method] == list(SERVICE.methods_by_name)  # the parse saw every rpc
    assert [name for name in undocumented(proto) if name.startswith("PosterSimilarity")] == []


def test_every_message_and_field_is_documented() -> None:
    bare = undocumented(parse_with_comments(PROTO_ROOT, CONTRACT))
    assert bare == [], f"{len(bare)} undocumented elements in {CONTRACT}: {bare}"
