"""StreamService: listening, URLs, sessions (on a memory reactor)."""

from __future__ import annotations

import re

import pytest
from twisted.internet.testing import MemoryReactorClock

from rktlet.errors import InvalidArgument, NotFound
from rktlet.stream.server import StreamService
from rktlet.stream.session import AttachRequest, ExecRequest, PortForwardRequest
from rktlet.stream.testing import FakeBackend


def service(address="127.0.0.1:10241", **kwargs) -> tuple[StreamService, MemoryReactorClock]:
    reactor = MemoryReactorClock()
    svc = StreamService(reactor, address, FakeBackend(), **kwargs)
    svc.startService()
    return svc, reactor


def test_listens_on_the_address_and_hands_out_urls():
    svc, reactor = service()
    ((port, factory, _backlog, interface),) = reactor.tcpServers
    assert (port, interface) == (10241, "127.0.0.1")
    url = svc.new_session(ExecRequest("c1", ("ls",)))
    assert re.fullmatch(r"http://127\.0\.0\.1:10241/exec/[A-Za-z0-9_-]{8}", url)
    assert svc.new_session(AttachRequest("c1")).startswith("http://127.0.0.1:10241/attach/")
    assert svc.new_session(PortForwardRequest("p1")).startswith("http://127.0.0.1:10241/portforward/")
    assert svc.url("exec", "AbCd_-12") == "http://127.0.0.1:10241/exec/AbCd_-12"


def test_the_token_lives_in_the_server_until_used():
    svc, _ = service()
    url = svc.new_session(ExecRequest("c1", ("ls",)))
    token = url.rsplit("/", 1)[1]
    assert svc.server.tokens.consume("exec", token) == ExecRequest("c1", ("ls",))


@pytest.mark.parametrize(
    "address, base",
    [
        ("0.0.0.0:80", "http://127.0.0.1:80"),
        (":80", "http://127.0.0.1:80"),
        ("[::]:80", "http://[::1]:80"),
        ("[::1]:81", "http://[::1]:81"),
    ],
)
def test_wildcard_addresses_are_advertised_as_loopback(address, base):
    svc, _ = service(address)
    assert svc.base_url == base


def test_new_session_validates_and_asks_the_backend():
    svc, _ = service()
    with pytest.raises(InvalidArgument):
        svc.new_session(ExecRequest("c1", ("sh",), tty=True, stderr=True))
    svc.server.backend.missing.add("gone")
    with pytest.raises(NotFound):
        svc.new_session(AttachRequest("gone"))


def test_tls_needs_both_files_and_a_backend_is_required():
    reactor = MemoryReactorClock()
    with pytest.raises(InvalidArgument):
        StreamService(reactor, "127.0.0.1:0", FakeBackend(), tls_cert="/x.crt")
    with pytest.raises(InvalidArgument):
        StreamService(reactor, "127.0.0.1:0")


def test_stop_stops_listening():
    svc, reactor = service()
    d = svc.stopService()
    assert d.called and not svc.running
