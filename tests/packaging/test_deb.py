"""The Debian package: built with dpkg-buildpackage (packaging/build-deb),
installed with apt into a throwaway root (an overlayfs over this machine's
/, in its own mount, network and PID namespaces: see in-fresh-root), where
the daemon starts as its systemd unit says and runs a pod."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from harness.crictl import find_crictl
from tests.packaging.conftest import REPO, offline_env, run

pytestmark = pytest.mark.root

CGROUP_ROOT = "/sys/fs/cgroup"


@pytest.fixture(scope="module")
def deb(wheelhouse: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.geteuid() != 0:
        pytest.skip("building and installing the .deb needs root")
    for tool in ("dpkg-buildpackage", "dh", "unshare", "chroot"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} is not installed (tests/run installs dpkg-dev and debhelper)")
    out = tmp_path_factory.mktemp("deb")
    run([REPO / "packaging" / "build-deb", out], offline_env(wheelhouse))
    (built,) = out.glob("rktlet_*.deb")
    return built


def field(deb: Path, name: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), name], check=True, capture_output=True, text=True).stdout.strip()


def test_the_deb_depends_on_debian_runtime_parts(deb):
    assert re.fullmatch(r"rktlet_0\.1\.0_\w+\.deb", deb.name), deb.name
    depends = {d.split()[0] for d in field(deb, "Depends").split(", ")}
    assert {"runc", "conmon", "containernetworking-plugins", "catatonit", "iptables"} <= depends
    assert any(re.fullmatch(r"python3\.\d+", d) for d in depends), depends


def test_the_deb_installs_command_unit_config_and_reaper(deb):
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], check=True, capture_output=True, text=True).stdout
    paths = {line.split()[5].removeprefix(".") for line in listing.splitlines()}
    assert {"/usr/bin/rktlet", "/lib/systemd/system/rktlet.service", "/etc/rktlet/rktlet.toml",
            "/usr/lib/rktlet/bin/twistd", "/usr/lib/rktlet/pyvenv.cfg"} <= paths
    assert [p for p in paths if p.endswith("site-packages/rktlet/oci/exec/rktlet-exec-reaper")]
    assert [p for p in paths if p.endswith("site-packages/twisted/plugins/rktlet_plugin.py")]
    assert not [p for p in paths if "__pycache__" in p], "bytecode is compiled at install, not shipped"
    control = subprocess.run(["dpkg-deb", "-I", str(deb), "conffiles"], check=True, capture_output=True,
                             text=True).stdout
    assert "/etc/rktlet/rktlet.toml" in control.split()


def _remove_cgroups(parent: str) -> None:
    """The pod cgroups the daemon made under *parent* in every hierarchy
    (the throwaway root shares this machine's cgroup file system)."""
    for hierarchy in Path(CGROUP_ROOT).iterdir():
        top = hierarchy / parent.strip("/")
        if not top.is_dir():
            continue
        for directory, _, _ in sorted(os.walk(top), key=lambda entry: -len(entry[0])):
            try:
                os.rmdir(directory)
            except OSError:
                pass


def test_apt_install_in_a_fresh_root_gives_a_working_daemon(deb, tmp_path):
    crictl = find_crictl()
    if crictl is None:
        pytest.skip("crictl is not installed (tests/run builds it)")
    scratch = tmp_path / "root"
    scratch.mkdir()
    cgroup_parent = f"/rktlet-deb-test-{uuid.uuid4().hex[:8]}"
    try:
        result = subprocess.run(
            ["unshare", "--mount", "--net", "--pid", "--fork", "--kill-child", "--propagation", "private",
             str(REPO / "tests" / "packaging" / "in-fresh-root"), str(scratch), str(deb), crictl, cgroup_parent],
            capture_output=True, text=True, timeout=600,
        )
    finally:
        _remove_cgroups(cgroup_parent)
    out = result.stdout
    assert result.returncode == 0 and "DONE" in out, out[-6000:] + result.stderr[-3000:]
    checks = [line for line in out.splitlines() if line.startswith("CHECK ")]
    text = "\n".join(checks)
    assert "CHECK installed rktlet 0.1.0 install ok installed" in text
    assert "CHECK unit enabled" in text
    assert "CHECK ExecStart /usr/bin/rktlet --config /etc/rktlet/rktlet.toml" in text
    assert "CHECK rktlet --help" in text and "CHECK twistd rktlet --help" in text
    assert "CHECK version RuntimeName:  rktlet" in text
    assert '"execReaper": "compiled /usr/lib/rktlet/lib/python3' in text
    assert "CHECK default CNI network written" in text
    assert re.search(r"CHECK RunPodSandbox [0-9a-f]{64}", text)
    assert '"state": "SANDBOX_READY"' in text and re.search(r'"ip": "10\.88\.\d+\.\d+"', text)
    assert "CHECK pod removed" in text and "CHECK daemon stopped" in text
    assert "CHECK log: exec reaper: compiled /usr/lib/rktlet/" in text
    # Nothing of the throwaway root is left on the machine.
    assert not os.path.exists("/usr/lib/rktlet") or os.path.exists("/var/lib/dpkg/info/rktlet.list")
    assert not any(scratch.iterdir())
