"""Regenerate ``grpc_predict_v2.desc`` from ``grpc_predict_v2.proto`` with grpcio-tools' bundled protoc.

Run ``python -m adapterdeploy.serving.grpc_v2`` after editing the .proto (needs ``pip install grpcio-tools``,
part of the ``dev`` extra); ``--check`` only compares and exits 1 when the committed file is stale.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from adapterdeploy.serving.grpc_v2 import DESCRIPTOR_FILE, PROTO_FILE


def compile_descriptor() -> bytes:
    """The FileDescriptorSet protoc writes for the .proto (no source info, so it is stable)."""
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.desc"
        code = protoc.main(["protoc", f"-I{PROTO_FILE.parent}", f"--descriptor_set_out={out}", PROTO_FILE.name])
        if code != 0:
            raise SystemExit(f"protoc failed on {PROTO_FILE} (exit {code})")
        return out.read_bytes()


def main(argv: list[str]) -> int:
    data = compile_descriptor()
    if "--check" in argv:
        same = DESCRIPTOR_FILE.exists() and DESCRIPTOR_FILE.read_bytes() == data
        print(f"{DESCRIPTOR_FILE.name} is {'up to date' if same else 'STALE: regenerate it'}")
        return 0 if same else 1
    tmp = DESCRIPTOR_FILE.with_suffix(".desc.tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, DESCRIPTOR_FILE)
    print(f"wrote {DESCRIPTOR_FILE} ({len(data)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
