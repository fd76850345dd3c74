"""The ``rktlet`` command line: help, --version, and the check and config
commands (run in-process; the checks themselves are tests/unit/test_preflight.py)."""

from __future__ import annotations

import re
import tomllib

import pytest

from rktlet import cli, preflight, tap
from rktlet.preflight.model import Report, fail, ok, warn


def run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        cli.main(list(argv))
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def descriptions_are_clean(text: str) -> list[str]:
    """Lines of the options table with a run of spaces inside a description."""
    bad = []
    for line in text.splitlines():
        if line.startswith(" ") and len(re.split(r"\s{2,}", line.strip())) > 2:
            bad.append(line)
    return bad


def test_help_reads_as_rktlet_s_own(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    lines = out.splitlines()
    assert lines[:3] == ["Usage: rktlet [options]", "       rktlet check [options]", "       rktlet config [options]"]
    assert "twistd [options]" not in out
    assert re.search(r"^    check +check what the daemon needs", out, re.M)
    assert re.search(r"^    config +print the effective configuration as TOML", out, re.M)
    assert descriptions_are_clean(out) == []
    for option in ("--insecure-registry=", "--registry-mirror=", "--runtime-handler=", "--version", "--root="):
        assert option in out
    assert "(repeatable; localhost and 127.0.0.1 always are)" in " ".join(out.split())


def test_command_help(capsys):
    for command in ("check", "config"):
        code, out, _ = run(capsys, command, "--help")
        assert code == 0
        assert out.splitlines()[0] == f"Usage: rktlet {command} [options]"
        assert descriptions_are_clean(out) == []
    assert "Exit status: 0 all passed; 1" in " ".join(run(capsys, "check", "--help")[1].split())


def test_twistd_plugin_help_is_clean():
    text = str(tap.Options())
    assert descriptions_are_clean(text) == []
    assert "close streaming sessions idle for this long (seconds, or 30s/5m/1h) [default: 4h]" in " ".join(text.split())


def test_version_uses_the_options_given_before_it(capsys, monkeypatch):
    seen = []

    def version_text(config):
        seen.append(config)
        return "rktlet 0.1.0\nruntime runc: fake"

    monkeypatch.setattr(preflight, "version_text", version_text)
    code, out, _ = run(capsys, "--runtime", "/opt/runc", "--version")
    assert code == 0 and out == "rktlet 0.1.0\nruntime runc: fake\n"
    assert seen[0].runtime == "/opt/runc"


def test_check_prints_a_line_per_check_and_exits_with_its_status(capsys, monkeypatch):
    seen = []
    reports = {
        0: Report((ok("root", "running as root"), ok("conmon", "conmon version 2.1.6"))),
        2: Report((ok("root", "running as root"), warn("cni", "plugin(s) bridge not found", "install them"))),
        1: Report((fail("runtime runc", "runc not found", "install runc"),)),
    }
    for status, report in reports.items():
        monkeypatch.setattr(preflight, "run_checks", lambda config, r=report: seen.append(config) or r)
        code, out, _ = run(capsys, "--root", "/srv/a", "check", "--socket", "/srv/b/s.sock")
        assert code == status
        assert out.splitlines() == report.lines()
    assert out == "FAIL runtime runc: runc not found; install runc\n"
    # Options before the command count; those after it win.
    assert seen[0].root == "/srv/a" and seen[0].socket == "/srv/b/s.sock"
    run(capsys, "--root", "/srv/a", "check", "--root", "/srv/c")
    assert seen[-1].root == "/srv/c"


def test_config_prints_a_toml_file_of_the_effective_values(capsys, tmp_path):
    path = tmp_path / "rktlet.toml"
    path.write_text('root = "/srv/rktlet"\ninsecure-registry = ["reg.example:5000"]\n')
    code, out, _ = run(capsys, "config", "--config", str(path), "--log-level", "debug")
    assert code == 0
    data = tomllib.loads(out)
    assert data["root"] == "/srv/rktlet"
    assert data["insecure-registry"] == ["reg.example:5000"]
    assert data["log-level"] == "debug"
    assert data["socket"] == "/run/rktlet/rktlet.sock"


@pytest.mark.parametrize("argv,message", [
    (["--bogus"], "rktlet: option --bogus not recognized\nTry 'rktlet --help'.\n"),
    (["check", "--bogus"], "rktlet check: option --bogus not recognized\nTry 'rktlet check --help'.\n"),
    (["lint"], "rktlet: Unknown command: lint\nTry 'rktlet --help'.\n"),
    (["config", "--log-level", "loud"], "rktlet config: --log-level: option 'log-level': expected one of debug, info, "
                                        "warn, error, critical, got 'loud'\nTry 'rktlet config --help'.\n"),
])
def test_usage_errors_are_one_line_and_status_2(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert (code, out, err) == (2, "", message)
