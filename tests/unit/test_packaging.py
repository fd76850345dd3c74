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
