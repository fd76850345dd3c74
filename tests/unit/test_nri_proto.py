"""The NRI protos are the source of truth for the generated modules, and
every message, field, enum and RPC they declare is upstream's NRI contract."""

from __future__ import annotations

import glob
import os
import pathlib

import pytest
from google.protobuf import descriptor_pb2

from rktlet.nri.api import generate, nri_pb2

UPSTREAM_PROTO = sorted(glob.glob(os.path.expanduser("~/go/pkg/mod/github.com/containerd/nri@v0.12.*/pkg/api/api.proto")))


def test_generated_modules_match_the_protos(tmp_path):
    generate.generate(tmp_path)
    for rel in generate.GENERATED:
        fresh = (tmp_path / rel).read_text()
        committed = (generate.OUTPUT_ROOT / rel).read_text()
        assert fresh == committed, f"{rel} is stale: run python -m rktlet.nri.api.generate"


def test_generated_files_are_marked():
    for rel in generate.GENERATED:
        head = "".join(pathlib.Path(generate.OUTPUT_ROOT / rel).read_text().splitlines()[:3])
        assert "DO NOT EDIT" in head


def _upstream_file(tmp_path: pathlib.Path, proto: str) -> descriptor_pb2.FileDescriptorProto:
    from grpc_tools import protoc

    out = tmp_path / "upstream.pb"
    rc = protoc.main(["protoc", f"-I{os.path.dirname(proto)}", f"--descriptor_set_out={out}", proto])
    assert rc == 0
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    return files.file[0]


@pytest.mark.skipif(not UPSTREAM_PROTO, reason="containerd/nri v0.12 not in the Go module cache")
def test_what_rktlet_declares_is_the_upstream_contract(tmp_path):
    upstream = _upstream_file(tmp_path, UPSTREAM_PROTO[-1])
    ours = descriptor_pb2.FileDescriptorProto()
    nri_pb2.DESCRIPTOR.CopyToProto(ours)
    assert ours.package == upstream.package == "nri.pkg.api.v1alpha1"

    theirs_messages = {m.name: m for m in upstream.message_type}
    for message in ours.message_type:
        assert message.name in theirs_messages, f"message {message.name} is not upstream's"
        theirs = {f.number: f for f in theirs_messages[message.name].field}
        for field in message.field:
            assert field.number in theirs, f"{message.name}.{field.name} (#{field.number}) is not upstream's"
            t = theirs[field.number]
            assert (field.name, field.type, field.label, field.type_name) == (t.name, t.type, t.label, t.type_name), (
                f"{message.name}.{field.name} differs from upstream's {t.name}"
            )

    theirs_enums = {e.name: {v.name: v.number for v in e.value} for e in upstream.enum_type}
    for enum in ours.enum_type:
        assert {v.name: v.number for v in enum.value} == theirs_enums[enum.name]

    theirs_services = {s.name: {m.name: (m.input_type, m.output_type) for m in s.method} for s in upstream.service}
    for service in ours.service:
        for method in service.method:
            assert theirs_services[service.name][method.name] == (method.input_type, method.output_type), (
                f"{service.name}/{method.name} differs from upstream"
            )
