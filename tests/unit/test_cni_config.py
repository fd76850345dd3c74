"""Which CNI network is in use and whether its plugins exist."""

from __future__ import annotations

import json
import os

import pytest

from rktlet.network import cni_config


def write(directory, name, doc):
    path = directory / name
    path.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    return str(path)


@pytest.fixture
def bin_dir(tmp_path):
    d = tmp_path / "bin"
    d.mkdir()
    for plugin in ("bridge", "portmap", "loopback"):
        p = d / plugin
        p.write_text("#!/bin/sh\n")
        p.chmod(0o755)
    return str(d)


def test_first_file_in_lexical_order(tmp_path):
    write(tmp_path, "20-b.conflist", {"name": "b", "cniVersion": "1.0.0", "plugins": [{"type": "bridge"}]})
    write(tmp_path, "10-a.conf", {"name": "a", "cniVersion": "0.4.0", "type": "bridge", "bridge": "cni0"})
    write(tmp_path, "00-readme.txt", "not a config")
    network = cni_config.find_network(str(tmp_path))
    assert network.name == "a"
    assert network.plugins == ({"type": "bridge", "bridge": "cni0"},)
    assert network.as_json()["plugins"][0]["bridge"] == "cni0"


def test_empty_or_missing_dir(tmp_path):
    assert cni_config.find_network(str(tmp_path)) is None
    assert cni_config.find_network(str(tmp_path / "absent")) is None


@pytest.mark.parametrize(
    "doc,message",
    [
        ("{", "not valid JSON"),
        ({"cniVersion": "1.0.0", "plugins": []}, "non-empty list"),
        ({"cniVersion": "1.0.0", "plugins": [{"type": "bridge"}]}, "missing network 'name'"),
        ({"name": "n", "plugins": [{"bridge": "x"}]}, "plugin 0 has no 'type'"),
        ({"name": "n", "plugins": [{"type": "../../../bin/sh"}]}, "is not a plugin name"),
        ({"name": "n", "plugins": [{"type": "bridge"}, {"type": ".."}]}, "plugin 1 type '..' is not a plugin name"),
    ],
)
def test_unusable_configs_are_named(tmp_path, bin_dir, doc, message):
    path = write(tmp_path, "10-x.conflist", doc)
    readiness = cni_config.check_readiness(str(tmp_path), [bin_dir])
    assert not readiness.ready
    assert message in readiness.message and path in readiness.message


def test_readiness(tmp_path, bin_dir):
    conf = tmp_path / "net.d"
    conf.mkdir()
    r = cni_config.check_readiness(str(conf), [bin_dir])
    assert (r.ready, r.reason) == (False, "NetworkPluginNotReady")
    assert str(conf) in r.message
    write(conf, "10-n.conflist", {"name": "n", "plugins": [{"type": "bridge"}, {"type": "firewall"}]})
    r = cni_config.check_readiness(str(conf), ["/nonexistent", bin_dir])
    assert not r.ready and "firewall" in r.message and "bridge" not in r.message.split("of network")[0]
    write(conf, "10-n.conflist", {"name": "n", "plugins": [{"type": "bridge"}, {"type": "portmap"}]})
    r = cni_config.check_readiness(str(conf), ["/nonexistent", bin_dir])
    assert r.ready and r.network.plugin_types == ("bridge", "portmap")


def test_find_plugin_needs_an_executable(tmp_path):
    (tmp_path / "bridge").write_text("")
    assert cni_config.find_plugin("bridge", [str(tmp_path)]) is None
    os.chmod(tmp_path / "bridge", 0o755)
    assert cni_config.find_plugin("bridge", [str(tmp_path)]) == str(tmp_path / "bridge")
