"""Dependencies point one way (DESIGN.md): cri and stream use pod; pod uses
oci, network, image; drivers never import upward."""

from __future__ import annotations

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "rktlet"

# For each layer, the rktlet layers it must not import.
# metrics sits beside tap: the layers it measures are handed its objects
# and never import it; it reads their snapshots and never the other way.
FORBIDDEN = {
    "pod": {"cri", "stream", "tap", "metrics"},
    "oci": {"cri", "stream", "pod", "tap", "network", "image", "nri", "metrics"},
    "network": {"cri", "stream", "pod", "tap", "oci", "image", "nri", "metrics"},
    "image": {"cri", "stream", "pod", "tap", "oci", "network", "nri", "metrics"},
    "nri": {"cri", "stream", "pod", "tap", "oci", "network", "image", "metrics"},
    "stream": {"cri", "tap", "nri", "metrics"},
    "cri": {"stream", "tap", "nri", "metrics"},
    "metrics": {"cri", "tap", "nri", "oci", "network", "image", "stream"},
    # The start-up checks look at the drivers' programs and the host, never at the engine or the servers.
    "preflight": {"cri", "stream", "pod", "tap", "nri", "image", "metrics"},
}
# The CRI RPCs that prepare streaming sessions build the session requests
# the streaming server defines: that one module of types is shared.
# The metrics endpoint is served by the streaming server's hardened HTTP
# site (no request bodies, bounded heads).
ALLOWED = {("cri", "rktlet.stream.session"), ("metrics", "rktlet.stream.httpchannel")}


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
