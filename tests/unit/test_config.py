"""Options, the TOML file and their precedence."""

from __future__ import annotations

import pytest
from twisted.python import usage

from rktlet import config
from rktlet.errors import ConfigError
from rktlet.tap import Options


def test_defaults_are_the_documented_ones():
    c = config.load({})
    assert c.socket == "/run/rktlet/rktlet.sock"
    assert c.root == "/var/lib/rktlet"
    assert c.run_dir == "/run/rktlet"
    assert c.stream_address == "127.0.0.1:10241"
    assert c.cni_conf_dir == "/etc/cni/net.d"
    assert c.cni_bin_dir == ("/usr/lib/cni", "/opt/cni/bin")
    assert c.runtime == "runc"
    assert c.insecure_registry == ()
    assert c.log_level == "info"


def test_file_then_flags(tmp_path):
    path = tmp_path / "rktlet.toml"
    path.write_text('socket = "/tmp/f.sock"\nrun_dir = "/tmp/run"\ncni-bin-dir = ["/a", "/b"]\nlog-level = "debug"\n')
    c = config.load({"log-level": "error", "root": None}, str(path))
    assert c.socket == "/tmp/f.sock"
    assert c.run_dir == "/tmp/run"
    assert c.cni_bin_dir == ("/a", "/b")
    assert c.log_level == "error"
    assert c.root == "/var/lib/rktlet"
    assert c.config_file == str(path)


def test_unknown_key_in_file_is_named(tmp_path):
    path = tmp_path / "rktlet.toml"
    path.write_text('sokcet = "/x"\n')
    with pytest.raises(ConfigError, match="unknown key 'sokcet'"):
        config.load({}, str(path))


def test_invalid_toml_and_missing_file(tmp_path):
    path = tmp_path / "rktlet.toml"
    path.write_text("socket = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load({}, str(path))
    with pytest.raises(ConfigError, match="cannot read config file"):
        config.load({}, str(tmp_path / "absent.toml"))


@pytest.mark.parametrize(
    "key,value",
    [("stream-address", "nohostport"), ("stream-address", "h:99999"), ("log-level", "loud"), ("insecure-registry", "a/b")],
)
def test_bad_values_name_the_option(key, value):
    with pytest.raises(ConfigError, match=f"--{key}"):
        config.load({key: [value] if key == "insecure-registry" else value})


def test_cni_bin_dir_flag_is_colon_separated():
    assert config.load({"cni-bin-dir": "/x:/y"}).cni_bin_dir == ("/x", "/y")


def test_insecure_registries():
    c = config.load({"insecure-registry": ["reg:5000", "other"]})
    assert c.is_insecure_registry("reg:5000")
    assert c.is_insecure_registry("other:443")
    assert not c.is_insecure_registry("reg:5001")
    assert not c.is_insecure_registry("docker.io")
    for host in ("localhost", "localhost:5000", "127.0.0.1", "127.0.0.1:37000"):
        assert c.is_insecure_registry(host)


def test_command_line_options():
    o = Options()
    o.parseOptions(
        ["--socket", "/tmp/s", "--insecure-registry", "a:1", "--insecure-registry", "b", "--log-level", "debug"]
    )
    assert o.config.socket == "/tmp/s"
    assert o.config.insecure_registry == ("a:1", "b")
    assert o.config.log_level == "debug"
    assert o.config.root == "/var/lib/rktlet"


def test_command_line_errors_are_usage_errors():
    with pytest.raises(usage.UsageError, match="stream-address"):
        Options().parseOptions(["--stream-address", "x"])


def test_every_option_is_a_flag_and_a_config_attribute():
    o = Options()
    flags = {p[0] for p in Options.optParameters} | {k for k in config.OPTIONS_BY_KEY if hasattr(o, "opt_" + k.replace("-", "_"))}
    for opt in config.OPTIONS:
        assert opt.key in flags
        assert hasattr(config.Config(), opt.attr)
        assert getattr(config.Config(), opt.attr) == opt.default


def test_registry_mirrors_and_pull_timeout(tmp_path):
    c = config.load({"registry-mirror": ["registry.k8s.io=http://127.0.0.1:5000/", "registry.k8s.io=https://m2"],
                     "pull-progress-timeout": "5m"})
    assert c.mirrors == {"registry.k8s.io": ["http://127.0.0.1:5000", "https://m2"]}
    assert c.pull_progress_timeout == 300
    with pytest.raises(ConfigError, match="--registry-mirror"):
        config.load({"registry-mirror": ["registry.k8s.io"]})
    with pytest.raises(ConfigError, match="--pull-progress-timeout"):
        config.load({"pull-progress-timeout": "soon"})
    path = tmp_path / "rktlet.toml"
    path.write_text('registry-mirror = ["gcr.io=http://127.0.0.1:1"]\npull-progress-timeout = 30\n')
    c = config.load({}, str(path))
    assert c.mirrors == {"gcr.io": ["http://127.0.0.1:1"]} and c.pull_progress_timeout == 30
