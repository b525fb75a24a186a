"""Generates the Python code for protos/v1/*.proto (what `make protos` runs).

The generated modules are committed so that an install needs no protoc;
tests/test_protos.py regenerates into a temporary folder and fails when the
committed files differ.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROTO_DIR = REPO / "protos" / "v1"


def generate(out_dir: Path) -> list[Path]:
    """Run protoc on every .proto, writing the modules under out_dir/protos/v1."""
    import grpc_tools
    from grpc_tools import protoc  # dev dependency: only needed to regenerate

    include = Path(grpc_tools.__file__).parent / "_proto"
    protos = sorted(PROTO_DIR.glob("*.proto"))
    (out_dir / "protos" / "v1").mkdir(parents=True, exist_ok=True)
    for proto in protos:
        args = [
            "protoc",
            f"-I{REPO}",
            f"-I{include}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            str(proto.relative_to(REPO)),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {proto}")
    return sorted((out_dir / "protos" / "v1").glob("*_pb2*.py*"))


def main() -> int:
    generated = generate(REPO)
    for path in generated:
        print(f"generated {path.relative_to(REPO)}")
    return 0


def generate_to_temp() -> dict[str, bytes]:
    """Generated file name -> content, produced in a scratch folder."""
    with tempfile.TemporaryDirectory() as scratch:
        return {p.name: p.read_bytes() for p in generate(Path(scratch))}


if __name__ == "__main__":
    sys.exit(main())
