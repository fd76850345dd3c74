"""The shipped config documents every option; the systemd unit keeps
containers alive across daemon restarts."""

from __future__ import annotations

import pathlib
import re
import tomllib

from rktlet import config

PACKAGING = pathlib.Path(__file__).resolve().parents[2] / "packaging"
README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def test_default_config_documents_every_option_with_its_default():
    text = (PACKAGING / "rktlet.toml").read_text()
    uncommented = "\n".join(re.sub(r"^#(?=[a-z])", "", line) for line in text.splitlines())
    values = tomllib.loads(uncommented)
    for opt in config.OPTIONS:
        assert opt.key in values, f"{opt.key} is not documented in packaging/rktlet.toml"
        if not opt.repeatable:
            default = list(opt.default) if isinstance(opt.default, tuple) else opt.default
            assert values[opt.key] == default, opt.key


def test_shipped_config_is_the_generated_one():
    assert (PACKAGING / "rktlet.toml").read_text() == config.default_config_text(), (
        "packaging/rktlet.toml is stale: python -m rktlet.config > packaging/rktlet.toml"
    )


def test_readme_lists_every_option():
    text = README.read_text()
    for opt in config.OPTIONS:
        assert f"`--{opt.key}" in text, f"--{opt.key} missing from the README"


def test_systemd_unit():
    unit = (PACKAGING / "rktlet.service").read_text()
    for line in ("KillMode=process", "Delegate=yes", "Type=notify"):
        assert line in unit.splitlines()


def test_pyproject_lists_every_package_and_no_test_code():
    """The package list is explicit: a new rktlet package must be added to
    it, and the test code (tests/, harness/, bench/) is never installed."""
    root = README.parent
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        ".".join(init.parent.relative_to(root).parts)
        for init in (root / "rktlet").rglob("__init__.py")
    }
    assert found <= listed, f"packages missing from pyproject.toml: {sorted(found - listed)}"
    assert not {p for p in listed if p.split(".")[0] in ("tests", "harness", "bench")}


def test_debian_package_version_is_the_project_version():
    root = README.parent
    version = tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]
    first = (PACKAGING / "debian" / "changelog").read_text().splitlines()[0]
    assert first.startswith(f"rktlet ({version}) "), first


def test_debian_package_depends_on_what_rktlet_runs():
    control = (PACKAGING / "debian" / "control").read_text()
    binary = control.split("\nPackage: rktlet\n", 1)[1]
    for package in ("runc", "conmon", "containernetworking-plugins", "catatonit", "iptables"):
        assert re.search(rf"^\s+{re.escape(package)},?$", binary, re.M), package


def test_debian_rules_rewrite_the_units_command():
    """debian/rules points the unit at /usr/bin/rktlet by replacing the
    command packaging/install.sh installs."""
    unit = (PACKAGING / "rktlet.service").read_text()
    assert "ExecStart=/opt/rktlet/bin/rktlet --config /etc/rktlet/rktlet.toml" in unit.splitlines()
    assert "s|^ExecStart=/opt/rktlet/bin/rktlet |ExecStart=/usr/bin/rktlet |" in (
        PACKAGING / "debian" / "rules").read_text()


def test_the_packaged_reaper_comes_first(tmp_path, monkeypatch):
    from rktlet.oci.exec import reaper

    packaged = tmp_path / reaper.COMPILED_REAPER
    packaged.write_text("#!/bin/sh\n")
    packaged.chmod(0o755)
    monkeypatch.setattr(reaper, "PACKAGED_REAPER", str(packaged))
    reaper.reaper_command.cache_clear()
    try:
        assert reaper.reaper_command() == (str(packaged),)
        assert reaper.describe_reaper() == f"compiled {packaged}"
    finally:
        reaper.reaper_command.cache_clear()


def test_without_a_compiled_reaper_the_python_one_is_used_and_said(tmp_path, monkeypatch):
    from rktlet.oci.exec import reaper

    monkeypatch.setattr(reaper, "PACKAGED_REAPER", str(tmp_path / "missing"))
    monkeypatch.setattr(reaper.sys, "executable", str(tmp_path / "python3"))
    monkeypatch.setenv("PATH", str(tmp_path))
    reaper.reaper_command.cache_clear()
    try:
        command = reaper.reaper_command()
        assert command[1:4] == ("-I", "-S", "-c")
        assert reaper.describe_reaper().startswith("python (rktlet-exec-reaper not found")
    finally:
        reaper.reaper_command.cache_clear()
