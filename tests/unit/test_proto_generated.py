"""The proto is the one source of truth: generated modules must match it,
and it must state the upstream runtime.v1 wire contract exactly."""

from __future__ import annotations

import hashlib
import pathlib

from rktlet.cri.api import generate

# sha256 of the FileDescriptorSet (no source info) that protoc makes of the
# upstream kubernetes/cri-api runtime.v1 api.proto at commit 791729b
# (v0.37.0-beta.0 era, 37 RuntimeService + 6 ImageService RPCs). Equal bytes
# mean equal package, services, RPCs, messages, enums, names, numbers, types.
# When the upstream contract moves, update the proto and this fingerprint together.
UPSTREAM_DESCRIPTOR_SHA256 = "23e45125b1d0d377ae6be8c029c4d0a60f620ecad470a7b8efd6b4ff18fb9470"


def test_generated_modules_match_the_proto(tmp_path):
    generate.generate(tmp_path)
    for rel in generate.GENERATED:
        fresh = (tmp_path / rel).read_text()
        committed = (generate.OUTPUT_ROOT / rel).read_text()
        assert fresh == committed, f"{rel} is stale: run python -m rktlet.cri.api.generate"


def test_proto_is_the_upstream_wire_contract(tmp_path):
    from grpc_tools import protoc

    out = tmp_path / "api.pb"
    rc = protoc.main(
        ["protoc", f"-I{generate.PROTO_ROOT}", f"--descriptor_set_out={out}", str(generate.PROTO_ROOT / generate.PROTO_FILE)]
    )
    assert rc == 0
    assert hashlib.sha256(out.read_bytes()).hexdigest() == UPSTREAM_DESCRIPTOR_SHA256


def test_generated_files_are_marked():
    for rel in generate.GENERATED:
        head = "".join(pathlib.Path(generate.OUTPUT_ROOT / rel).read_text().splitlines()[:3])
        assert "DO NOT EDIT" in head
