"""crictl version / info against a running rktlet."""

from __future__ import annotations


def test_crictl_version(crictl):
    out = crictl.run("version").stdout
    fields = dict(line.split(":", 1) for line in out.strip().splitlines())
    assert fields["RuntimeName"].strip() == "rktlet"
    assert fields["RuntimeApiVersion"].strip() == "v1"


def test_crictl_info(crictl, daemon):
    info = crictl.json("info")
    conditions = {c["type"]: c for c in info["status"]["conditions"]}
    assert conditions["RuntimeReady"]["status"] is True
    assert conditions["NetworkReady"]["status"] is True  # rktlet's default network
    assert info["config"]["socket"] == daemon.socket
