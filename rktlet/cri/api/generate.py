"""Generate the Python modules of the CRI wire contract from ``protos/``.

Run from a checkout: ``python -m rktlet.cri.api.generate``. The proto file in
``protos/runtime/v1/api.proto`` is the one source of truth; the modules under
``rktlet/cri/api/runtime/v1/`` are its output and are never edited by hand.
``tests/unit/test_proto_generated.py`` regenerates into a temporary directory
and fails when the committed modules differ.
"""

from __future__ import annotations

import pathlib
import sys
import tempfile

from rktlet import protogen

REPO = pathlib.Path(__file__).resolve().parents[3]
PROTO_ROOT = REPO / "protos"
PROTO_FILE = "runtime/v1/api.proto"
OUTPUT_ROOT = pathlib.Path(__file__).resolve().parent
GENERATED = ("runtime/v1/api_pb2.py", "runtime/v1/api_pb2_grpc.py")

# protoc writes imports as if protos/ were on sys.path; rktlet keeps the
# modules inside its own package, so the one cross-module import is rewritten.
_ABSOLUTE_IMPORT = "from runtime.v1 import api_pb2"
_PACKAGE_IMPORT = "from rktlet.cri.api.runtime.v1 import api_pb2"


def generate(output_root: pathlib.Path) -> list[pathlib.Path]:
    """Run protoc (from grpcio-tools) and write the modules under *output_root*.

    :returns: the paths written.
    """
    from grpc_tools import protoc  # a build-time tool, not a runtime dependency

    with tempfile.TemporaryDirectory() as tmp:
        proto_include = pathlib.Path(protoc.__file__).parent / "_proto"
        rc = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{PROTO_ROOT}",
                f"-I{proto_include}",
                f"--python_out={tmp}",
                f"--grpc_python_out={tmp}",
                str(PROTO_ROOT / PROTO_FILE),
            ]
        )
        if rc != 0:
            raise RuntimeError(f"protoc failed on {PROTO_FILE} with exit code {rc}")
        written = []
        for rel in GENERATED:
            text = (pathlib.Path(tmp) / rel).read_text()
            text = text.replace(_ABSOLUTE_IMPORT, _PACKAGE_IMPORT)
            target = output_root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            written.append(target)
        return written


def main(argv: list[str] | None = None) -> int:
    return protogen.main(generate, __doc__, OUTPUT_ROOT, argv)


if __name__ == "__main__":
    sys.exit(main())
