"""``rktlet config``: the effective configuration as TOML, read back the same."""

from __future__ import annotations

import dataclasses
import tomllib

from rktlet import config


def round_trip(c: config.Config, tmp_path) -> config.Config:
    path = tmp_path / "dumped.toml"
    path.write_text(config.dump_toml(c))
    return config.load({}, str(path))


def test_defaults_round_trip(tmp_path):
    c = config.load({})
    back = round_trip(c, tmp_path)
    assert dataclasses.replace(back, config_file=None) == c


def test_every_option_is_dumped_after_its_help():
    text = config.dump_toml(config.load({}))
    data = tomllib.loads(text)
    assert list(data) == [o.key for o in config.OPTIONS]
    for opt in config.OPTIONS:
        assert f"# {opt.help}.\n{opt.key} = " in text


def test_changed_values_round_trip(tmp_path):
    """Every kind of value: paths with quotes, backslashes and non-ASCII,
    lists, durations, sizes, counts."""
    flags = {
        "socket": str(tmp_path / 'odd "dir" \\ é' / "s.sock"),
        "cni-bin-dir": "/a:/b c",
        "runtime-handler": ["crun=/usr/bin/crun", "kata=/opt/kata/bin/kata-runtime"],
        "insecure-registry": ["reg.example:5000"],
        "registry-mirror": ["docker.io=http://127.0.0.1:5000", "docker.io=https://mirror.example"],
        "stream-idle-timeout": "90s",
        "pull-progress-timeout": "1.5",
        "max-image-bytes": "512Mi",
        "grpc-workers": "7",
        "nri-socket": "/run/nri/nri.sock",
        "log-level": "warning",
    }
    c = config.load(flags)
    back = round_trip(c, tmp_path)
    # command_line says which values were flags: not a setting, not dumped.
    assert dataclasses.replace(back, config_file=None, command_line=c.command_line) == c
    assert back.runtime_handler == ("crun=/usr/bin/crun", "kata=/opt/kata/bin/kata-runtime")
    assert back.stream_idle_timeout == 90.0 and back.max_image_bytes == 512 << 20 and back.log_level == "warn"


def test_file_then_flags_are_what_is_dumped(tmp_path):
    path = tmp_path / "rktlet.toml"
    path.write_text('root = "/srv/rktlet"\nlog-level = "debug"\n')
    c = config.load({"log-level": "error"}, str(path))
    text = config.dump_toml(c)
    assert f"then {path}, then the flags" in text.splitlines()[0]
    data = tomllib.loads(text)
    assert data["root"] == "/srv/rktlet" and data["log-level"] == "error"
    assert "config" not in data  # not an option of the file itself


def test_help_shows_defaults_as_they_are_written():
    texts = {o.key: o.default_text for o in config.OPTIONS}
    assert texts["stream-idle-timeout"] == "4h"
    assert texts["cni-del-retry-interval"] == "1m"
    assert texts["nri-request-timeout"] == "2s"
    assert texts["max-image-bytes"] == "32Gi"
    assert texts["max-manifest-size"] == "4Mi"
    assert texts["nri-socket"] == "none"
    assert texts["cni-bin-dir"] == "/usr/lib/cni:/opt/cni/bin"
    for opt in config.OPTIONS:  # what help shows is a value the option takes
        if not opt.repeatable and opt.default_text != "none":
            assert opt.parse(opt.default_text) == opt.default, opt.key
