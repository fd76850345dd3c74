"""Generate the Python modules of the NRI wire contract from ``protos/nri/``.

Run from a checkout: ``python -m rktlet.nri.api.generate``. The proto files
``protos/nri/nri.proto`` (NRI's ``nri.pkg.api.v1alpha1``, the parts rktlet
uses) and ``protos/nri/ttrpc.proto`` (ttrpc's envelopes) are the source of
truth; ``nri_pb2.py`` and ``ttrpc_pb2.py`` here are their output and are never
edited by hand. ``tests/unit/test_nri_proto.py`` regenerates into a temporary
directory and fails when the committed modules differ. NRI speaks ttrpc, not
gRPC: no service stubs are generated (rktlet.nri.ttrpc dispatches by name).
"""

from __future__ import annotations

import pathlib
import sys
import tempfile

from rktlet import protogen

REPO = pathlib.Path(__file__).resolve().parents[3]
PROTO_ROOT = REPO / "protos" / "nri"
PROTO_FILES = ("nri.proto", "ttrpc.proto")
OUTPUT_ROOT = pathlib.Path(__file__).resolve().parent
GENERATED = ("nri_pb2.py", "ttrpc_pb2.py")


def generate(output_root: pathlib.Path) -> list[pathlib.Path]:
    """Run protoc (from grpcio-tools) and write the modules under *output_root*.

    :returns: the paths written.
    """
    from grpc_tools import protoc  # a build-time tool, not a runtime dependency

    with tempfile.TemporaryDirectory() as tmp:
        rc = protoc.main(
            ["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"--python_out={tmp}"]
            + [str(PROTO_ROOT / name) for name in PROTO_FILES]
        )
        if rc != 0:
            raise RuntimeError(f"protoc failed on {', '.join(PROTO_FILES)} with exit code {rc}")
        written = []
        for rel in GENERATED:
            target = output_root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text((pathlib.Path(tmp) / rel).read_text())
            written.append(target)
        return written


def main(argv: list[str] | None = None) -> int:
    return protogen.main(generate, __doc__, OUTPUT_ROOT, argv)


if __name__ == "__main__":
    sys.exit(main())
