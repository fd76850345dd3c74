"""``pip install .``, the wheel, the sdist and ``pip install -e .`` give a
complete installation: the ``rktlet`` command, the twistd plugin and the
compiled exec reaper, which the daemon reports using."""

from __future__ import annotations

import json
import os
import stat
import time
import zipfile
from pathlib import Path

import pytest

from harness.daemon import Daemon
from rktlet.cri.proto import pb
from tests.packaging.conftest import copy_source, make_venv, offline_env, run, sdist_names

REAPER = "rktlet/oci/exec/rktlet-exec-reaper"
PLUGIN = "twisted/plugins/rktlet_plugin.py"


def reaper_in(venv: Path, env: dict[str, str]) -> str:
    """What the installed rktlet says of its exec reaper."""
    return run([venv / "bin" / "python", "-c",
                "from rktlet.oci.exec.reaper import describe_reaper; print(describe_reaper())"],
               env, cwd=venv).stdout.strip()


def test_the_wheel_is_for_the_platform_and_carries_reaper_and_plugin(built_wheel):
    assert built_wheel.name.startswith("rktlet-0.1.0-py3-none-linux_"), built_wheel.name
    with zipfile.ZipFile(built_wheel) as wheel:
        names = set(wheel.namelist())
        reaper = wheel.getinfo(REAPER)
        assert (reaper.external_attr >> 16) & stat.S_IXUSR, "the reaper is not executable in the wheel"
        wheel_file = wheel.read("rktlet-0.1.0.dist-info/WHEEL").decode()
    assert {PLUGIN, "rktlet/packaging/cni/10-rktlet.conflist", "rktlet/packaging/rktlet.toml"} <= names
    assert "Root-Is-Purelib: false" in wheel_file
    assert not [n for n in names if n.split("/")[0] in ("tests", "harness", "bench")]


@pytest.fixture(scope="module")
def wheel_venv(built_wheel, wheelhouse, tmp_path_factory) -> Path:
    """A fresh virtualenv with the wheel installed, with no compiler on PATH."""
    venv = make_venv(tmp_path_factory.mktemp("wheel-venv") / "venv")
    run([venv / "bin" / "pip", "install", built_wheel], offline_env(wheelhouse, path=str(venv / "bin")))
    return venv


def test_the_wheel_installs_and_runs_without_a_compiler(wheel_venv, wheelhouse):
    venv = wheel_venv
    no_cc = offline_env(wheelhouse, path=str(venv / "bin"))
    assert "--socket" in run([venv / "bin" / "rktlet", "--help"], no_cc).stdout
    assert "--socket" in run([venv / "bin" / "twistd", "rktlet", "--help"], no_cc).stdout
    reaper = reaper_in(venv, no_cc)
    assert reaper.startswith(f"compiled {venv}/lib/") and reaper.endswith(REAPER), reaper
    assert os.access(reaper.split(" ", 1)[1], os.X_OK)


@pytest.mark.root
def test_the_daemon_from_the_wheel_uses_the_compiled_reaper(wheel_venv):
    if os.geteuid() != 0:
        pytest.skip("the daemon needs root")
    venv = wheel_venv
    d = Daemon(command=[str(venv / "bin" / "rktlet")])
    d.env = {"PYTHONPATH": ""}  # the installed package, not this checkout
    try:
        d.start()
        assert d.runtime().Version(pb.VersionRequest(), timeout=10).runtime_name == "rktlet"
        # Versions are collected once the reactor runs: wait for them.
        versions: dict = {}
        for _ in range(100):
            status = d.runtime().Status(pb.StatusRequest(verbose=True), timeout=10)
            versions = json.loads(status.info["versions"])
            if versions:
                break
            time.sleep(0.1)
        log = d.log()
    finally:
        d.cleanup()
    expected = f"compiled {venv}/lib/"
    assert f"exec reaper: {expected}" in log
    assert versions["execReaper"].startswith(expected) and versions["execReaper"].endswith(REAPER)


def test_editable_install_finds_the_twistd_plugin_and_builds_the_reaper(wheelhouse, tmp_path):
    source = copy_source(tmp_path / "rktlet")
    venv = make_venv(tmp_path / "venv")
    env = offline_env(wheelhouse)
    run([venv / "bin" / "pip", "install", "-e", source], env)
    helped = run([venv / "bin" / "twistd", "rktlet", "--help"], env, cwd=tmp_path)
    assert "--socket" in helped.stdout, helped.stdout[-2000:]
    # Built into the source tree, where the code runs from.
    assert os.access(source / REAPER, os.X_OK)
    assert reaper_in(venv, env).startswith("compiled ")
    # The code is the source tree's: a change shows without reinstalling.
    with open(source / "rktlet" / "__init__.py", "a") as f:
        f.write("\nEDITED = True\n")
    assert run([venv / "bin" / "python", "-c", "import rktlet; print(rktlet.EDITED)"], env,
               cwd=tmp_path).stdout.strip() == "True"


def test_the_sdist_carries_the_reaper_source(built_sdist):
    names = sdist_names(built_sdist)
    assert "rktlet-0.1.0/rktlet/oci/reaper.c" in names
    assert "rktlet-0.1.0/setup.py" in names
    assert "rktlet-0.1.0/twisted/plugins/rktlet_plugin.py" in names


def test_the_sdist_without_a_compiler_installs_with_the_python_reaper(built_sdist, wheelhouse, venv):
    """The decision: a build without a C compiler still installs (the
    Python reaper works, only slower) and the daemon warns at start-up."""
    no_cc = offline_env(wheelhouse, path=str(venv / "bin"), CC="cc")
    run([venv / "bin" / "pip", "install", built_sdist], no_cc)
    assert reaper_in(venv, no_cc).startswith("python (rktlet-exec-reaper not found")
    assert "--socket" in run([venv / "bin" / "twistd", "rktlet", "--help"], no_cc).stdout


def test_the_sdist_without_a_compiler_fails_when_the_reaper_is_required(built_sdist, wheelhouse, venv):
    no_cc = offline_env(wheelhouse, path=str(venv / "bin"), CC="cc", RKTLET_REQUIRE_REAPER="1")
    result = run([venv / "bin" / "pip", "install", "-v", built_sdist], no_cc, check=False)
    assert result.returncode != 0
    assert "cannot compile rktlet/oci/reaper.c (RKTLET_REQUIRE_REAPER=1)" in result.stdout + result.stderr
