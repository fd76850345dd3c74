"""Dependencies point one way (DESIGN.md): cri and stream use pod; pod uses
oci, network, image; drivers never import upward."""

from __future__ import annotations

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "rktlet"

# For each layer, the rktlet layers it must not import.
FORBIDDEN = {
    "pod": {"cri", "stream", "tap"},
    "oci": {"cri", "stream", "pod", "tap", "network", "image", "nri"},
    "network": {"cri", "stream", "pod", "tap", "oci", "image", "nri"},
    "image": {"cri", "stream", "pod", "tap", "oci", "network", "nri"},
    "nri": {"cri", "stream", "pod", "tap", "oci", "network", "image"},
    "stream": {"cri", "tap", "nri"},
    "cri": {"stream", "tap", "nri"},
    # The start-up checks look at the drivers' programs and the host, never at the engine or the servers.
    "preflight": {"cri", "stream", "pod", "tap", "nri", "image"},
}
# The CRI RPCs that prepare streaming sessions build the session requests
# the streaming server defines: that one module of types is shared.
ALLOWED = {("cri", "rktlet.stream.session")}


def imported_layers(path: pathlib.Path, layer: str = "") -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    layers = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            if (layer, name) in ALLOWED:
                continue
            parts = name.split(".")
            if parts[0] == "rktlet" and len(parts) > 1:
                layers.add(parts[1])
    return layers


def test_no_upward_imports():
    problems = []
    for layer, forbidden in FORBIDDEN.items():
        for path in (PACKAGE / layer).rglob("*.py"):
            bad = imported_layers(path, layer) & forbidden
            if bad:
                problems.append(f"{path.relative_to(PACKAGE.parent)} imports {sorted(bad)}")
    assert not problems, "\n".join(problems)
