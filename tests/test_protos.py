"""The committed generated code matches protos/v1/*.proto (run `make protos` if not)."""

from __future__ import annotations

from pathlib import Path

from quarry.cli.protos_codegen import PROTO_DIR, generate_to_temp


def test_generated_code_is_current() -> None:
    fresh = generate_to_temp()
    assert fresh, "protoc generated nothing"
    committed = {p.name: p.read_bytes() for p in PROTO_DIR.glob("*_pb2*.py*")}
    stale = sorted(name for name in fresh if committed.get(name) != fresh[name])
    extra = sorted(set(committed) - set(fresh))
    assert not stale, f"stale generated code, run `make protos`: {stale}"
    assert not extra, f"generated files without a .proto: {extra}"


def test_every_proto_declares_the_versioned_package() -> None:
    for proto in Path(PROTO_DIR).glob("*.proto"):
        assert "package quarry.v1;" in proto.read_text(), proto.name
