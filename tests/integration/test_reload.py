"""SIGHUP makes a running daemon read its config file again: mirrors,
insecure registries, the pull progress timeout and the log level change
behaviour at once; other options are reported as needing a restart; a
broken file changes nothing."""

from __future__ import annotations

import json
import signal
import time
from typing import Any, Callable

import grpc
import pytest

from rktlet.cri.proto import pb
from harness.daemon import Daemon, free_port
from harness.images import busybox_image, push_image

pytestmark = pytest.mark.root


def pull(d: Daemon, ref: str) -> str:
    return d.images().PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=ref)), timeout=60).image_ref


def wait_for_record(d: Daemon, since: int, match: Callable[[dict[str, Any]], bool], what: str,
                    timeout: float = 20) -> list[dict[str, Any]]:
    """The records after the first *since* once one matches *match*."""
    deadline = time.monotonic() + timeout
    while True:
        records = d.log_records()[since:]
        if any(match(r) for r in records):
            return records
        assert time.monotonic() < deadline, f"no log record for {what}:\n{d.log()}"
        time.sleep(0.05)


def reloaded(d: Daemon, path: str, text: str) -> list[dict[str, Any]]:
    """Write *text* to the config file, send SIGHUP, wait for the reload's
    last line; returns the reload's records (the ``rktlet.reload`` ones)."""
    since = len(d.log_records())
    with open(path, "w") as f:
        f.write(text)
    d.send_signal(signal.SIGHUP)
    # A reload logs all its lines in one reactor turn: once the first is
    # there, a call served on the reactor after it (Status) sees them all.
    wait_for_record(d, since, lambda r: r["logger"] == "rktlet.reload", "the reload")
    effective(d)
    return [r for r in d.log_records()[since:] if r["logger"] == "rktlet.reload"]


def rktlet_debug_lines(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r["level"] == "debug" and r["logger"].startswith("rktlet.")]


def effective(d: Daemon) -> dict[str, Any]:
    info = d.runtime().Status(pb.StatusRequest(verbose=True), timeout=10).info
    return json.loads(info["config"])


def test_sighup_reloads_mirrors_insecure_registries_timeout_and_log_level(registry, tmp_path):
    image = busybox_image()
    push_image(registry, "reload/busybox", "1", image)
    # Named after a loopback host where nothing listens: only a mirror can serve it.
    upstream = f"127.0.0.9:{free_port()}"
    through_mirror = f"{upstream}/reload/busybox:1"
    # The test registry under a name that is not always insecure ("127.1"
    # is 127.0.0.1): it speaks plain HTTP, so it must be marked insecure.
    plain_host = f"127.1:{registry.port}"
    plain = f"{plain_host}/reload/busybox:1"
    path = str(tmp_path / "rktlet.toml")
    with open(path, "w") as f:
        f.write('log-level = "info"\npull-progress-timeout = "5m"\n')
    d = Daemon(log_level=None, log_format="json", extra_args=["--config", path])
    try:
        d.start()
        for ref in (through_mirror, plain):
            with pytest.raises(grpc.RpcError) as refused:
                pull(d, ref)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value.details()
        assert rktlet_debug_lines(d.log_records()) == []

        changed = reloaded(d, path, f'''
log-level = "debug"
pull-progress-timeout = "2m"
registry-mirror = ["{upstream}={registry.url}"]
insecure-registry = ["{plain_host}"]
max-image-layers = 64
''')
        said = {(r["level"], r["key"]): r for r in changed}
        assert set(said) == {("info", "log-level"), ("info", "pull-progress-timeout"), ("info", "registry-mirror"),
                             ("info", "insecure-registry"), ("warn", "max-image-layers")}, changed
        assert (said["info", "pull-progress-timeout"]["old"], said["info", "pull-progress-timeout"]["new"]) == (300.0, 120.0)
        assert said["info", "registry-mirror"]["new"] == [f"{upstream}={registry.url}"]
        restart = said["warn", "max-image-layers"]
        assert (restart["old"], restart["new"]) == (128, 64) and "restart" in restart["msg"]

        since = len(d.log_records())
        assert pull(d, through_mirror) == image.image_id
        assert pull(d, plain) == image.image_id
        records = d.log_records()[since:]
        assert rktlet_debug_lines(records)  # the level took effect
        assert any(r.get("image") == through_mirror and r["msg"].startswith("pulled ") for r in records)
        config = effective(d)
        assert config["pull-progress-timeout"] == 120.0 and config["log-level"] == "debug"
        assert config["max-image-layers"] == 128  # not applied: needs a restart

        # A broken file: logged, and nothing changes.
        broken = reloaded(d, path, 'log-level = "info"\nregistry-mirror = [\n')
        assert [r["level"] for r in broken] == ["error"], broken
        assert "not valid TOML" in broken[0]["msg"] and "running configuration is kept" in broken[0]["msg"]
        assert effective(d) == config
        since = len(d.log_records())
        d.images().RemoveImage(pb.RemoveImageRequest(image=pb.ImageSpec(image=through_mirror)), timeout=30)
        assert pull(d, through_mirror) == image.image_id  # the mirror still serves
        assert rktlet_debug_lines(d.log_records()[since:])  # still debug

        # Back to info: debug lines stop; the timeout and mirrors are as the file says.
        back = reloaded(d, path, f'registry-mirror = ["{upstream}={registry.url}"]\n')
        assert sorted((r["level"], r["key"]) for r in back) == [
            ("info", "insecure-registry"), ("info", "log-level"), ("info", "pull-progress-timeout")]
        since = len(d.log_records())
        d.runtime().Version(pb.VersionRequest(), timeout=10)
        assert rktlet_debug_lines(d.log_records()[since:]) == []
        with pytest.raises(grpc.RpcError):
            pull(d, plain)  # no longer insecure
    finally:
        d.cleanup()


def test_flags_on_the_command_line_win_over_the_file_on_reload(tmp_path):
    path = str(tmp_path / "rktlet.toml")
    with open(path, "w") as f:
        f.write('log-level = "warn"\n')
    d = Daemon(log_level="debug", log_format="json", extra_args=["--config", path])
    try:
        d.start()
        said = reloaded(d, path, 'log-level = "error"\n')
        assert [(r["level"], r["key"]) for r in said] == [("info", "log-level")]
        assert "--log-level was given on the command line" in said[0]["msg"]
        since = len(d.log_records())
        d.runtime().Version(pb.VersionRequest(), timeout=10)
        assert rktlet_debug_lines(d.log_records()[since:])  # still debug, as the flag says
    finally:
        d.cleanup()
