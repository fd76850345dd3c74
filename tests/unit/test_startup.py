"""Start-up refusals: not root, socket owned by a live daemon, stale socket."""

from __future__ import annotations

import os
import socket

import pytest

from rktlet import config, sdnotify
from rktlet.cri.socket_claim import claim_socket
from rktlet.errors import StartupError
from rktlet.tap import build_service


def test_non_root_is_refused(tmp_path):
    c = config.load({"socket": str(tmp_path / "s.sock")})
    with pytest.raises(StartupError, match="must run as root.*uid 1000"):
        build_service(c, reactor=object(), euid=1000)
    assert not os.path.exists(tmp_path / "s.sock.lock")


def test_second_claim_is_refused_naming_the_owner(tmp_path):
    path = str(tmp_path / "run" / "s.sock")
    first = claim_socket(path)
    try:
        with pytest.raises(StartupError, match=rf"another rktlet \(pid {os.getpid()}\) is serving {path}"):
            claim_socket(path)
    finally:
        first.release()
    claim_socket(path).release()


def test_stale_socket_is_removed_and_release_cleans_up(tmp_path):
    path = str(tmp_path / "s.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()
    claim = claim_socket(path)
    assert not os.path.exists(path)
    claim.release()
    claim.release()  # idempotent
    assert not os.path.exists(path + ".lock")


def test_sd_notify(tmp_path):
    address = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(address)
        assert sdnotify.notify("READY=1", {"NOTIFY_SOCKET": address})
        assert listener.recv(64) == b"READY=1"
    assert not sdnotify.notify("READY=1", {})


def test_building_the_service_changes_nothing_on_the_host(tmp_path, monkeypatch):
    """Checks and construction only: the socket is claimed and the state
    loaded when the service starts (rktlet.tap.Daemon), not before."""
    from twisted.internet import reactor

    from rktlet import tap
    from rktlet.preflight.model import Report

    monkeypatch.setattr(tap.preflight, "run_checks", lambda config, host: Report(()))
    c = config.load({"socket": str(tmp_path / "run" / "s.sock"), "root": str(tmp_path / "root"),
                     "run-dir": str(tmp_path / "run")})
    try:
        service = build_service(c, reactor=reactor, euid=0)
    except StartupError as e:  # a host without a usable cgroup layout
        pytest.skip(str(e))
    assert service.claim is None
    assert not os.path.exists(tmp_path / "run" / "s.sock.lock")
    assert not os.path.exists(tmp_path / "root" / "pods")
