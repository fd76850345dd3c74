"""The streaming server over SPDY, served from memory: tokens, negotiation,
the exec/attach protocol versions and their closing order."""

from __future__ import annotations

import pytest

from rktlet.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from rktlet.stream import spdyframes as f
from rktlet.stream.server import check_request, parse_address
from rktlet.stream.session import AttachRequest, ExecRequest, PortForwardRequest
from rktlet.stream.testing import ALL_COMMAND_VERSIONS, MemoryServer, RecordingProducer, upgrade_request
from rktlet.stream.tokens import TokenCache

ALL_VERSIONS = ALL_COMMAND_VERSIONS
Harness = MemoryServer


def http_status(out: bytes) -> int:
    return int(out.split(b" ", 2)[1])


# -- tokens and negotiation -----------------------------------------------------


def test_unknown_used_and_wrong_kind_tokens_are_404():
    h = Harness()
    assert http_status(h.send_http(upgrade_request("/exec/AAAAAAAA", ALL_VERSIONS))) == 404
    path = h.url_path(ExecRequest("c", ("ls",)))
    attach_path = path.replace("/exec/", "/attach/")
    assert http_status(h.send_http(upgrade_request(attach_path, ALL_VERSIONS))) == 404
    assert http_status(h.send_http(upgrade_request(path, ALL_VERSIONS))) == 404  # spent


def test_expired_token_is_404():
    h = Harness()
    path = h.url_path(ExecRequest("c", ("ls",)))
    h.clock.advance(61)
    h.connect()  # the first one was closed, silent for that long
    assert http_status(h.send_http(upgrade_request(path, ALL_VERSIONS))) == 404


@pytest.mark.parametrize("path", ["/", "/exec", "/exec/a/b", "/shell/AAAAAAAA"])
def test_other_paths_are_404(path):
    assert http_status(Harness().send_http(upgrade_request(path, ALL_VERSIONS))) == 404


def test_only_get_and_post():
    h = Harness()
    out = h.send_http(b"PUT /exec/AAAAAAAA HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    assert http_status(out) == 405


def test_missing_protocol_header_is_400():
    h = Harness()
    out = h.send_http(upgrade_request(h.url_path(ExecRequest("c", ("ls",))), []))
    assert http_status(out) == 400


def test_no_common_protocol_is_403_listing_what_the_server_accepts():
    h = Harness()
    out = h.send_http(upgrade_request(h.url_path(ExecRequest("c", ("ls",))), ["v5.channel.k8s.io", "v9"]))
    assert http_status(out) == 403
    accepted = [line.split(b": ", 1)[1] for line in out.split(b"\r\n") if line.startswith(b"X-Accepted-Stream-Protocol-Versions")]
    assert accepted == [b"v4.channel.k8s.io", b"v3.channel.k8s.io", b"v2.channel.k8s.io", b"channel.k8s.io"]


def test_missing_upgrade_headers_is_400():
    h = Harness()
    path = h.url_path(ExecRequest("c", ("ls",)))
    raw = f"POST {path} HTTP/1.1\r\nHost: x\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\nContent-Length: 0\r\n\r\n"
    assert http_status(h.send_http(raw.encode())) == 400


def test_101_echoes_the_first_supported_version_in_client_order_without_a_body():
    h = Harness()
    head = h.upgrade(ExecRequest("c", ("ls",)), ALL_VERSIONS)
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 101 Switching Protocols"
    assert set(lines[1:]) == {b"Connection: Upgrade", b"Upgrade: SPDY/3.1", b"X-Stream-Protocol-Version: v4.channel.k8s.io"}
    h2 = Harness()
    path = h2.url_path(ExecRequest("c", ("ls",)))
    raw = upgrade_request(path, ["v2.channel.k8s.io, v4.channel.k8s.io"])  # one comma-separated line
    assert b"X-Stream-Protocol-Version: v2.channel.k8s.io" in h2.send_http(raw)


def test_portforward_negotiates_only_its_protocol():
    h = Harness()
    path = h.url_path(PortForwardRequest("pod"))
    assert b"X-Stream-Protocol-Version: portforward.k8s.io" in h.send_http(upgrade_request(path, ["portforward.k8s.io"]))
    h2 = Harness()
    assert http_status(h2.send_http(upgrade_request(h2.url_path(PortForwardRequest("pod")), ["v4.channel.k8s.io"]))) == 403


def test_frames_sent_right_behind_the_request_are_not_lost():
    h = Harness()
    sid, syn = h.client.open({"streamtype": "error"})
    h.upgrade(ExecRequest("c", ("ls",), stdout=False, stderr=False, stdin=True), extra=syn)
    assert sid in h.client.replied


# -- request validation ---------------------------------------------------------


@pytest.mark.parametrize(
    "request_, message",
    [
        (ExecRequest("", ("ls",)), "container_id"),
        (ExecRequest("c", ()), "cmd"),
        (ExecRequest("c", ("ls",), tty=True, stderr=True), "tty and stderr"),
        (ExecRequest("c", ("ls",), stdout=False, stderr=False), "one of stdin"),
        (AttachRequest(""), "container_id"),
        (PortForwardRequest(""), "pod_sandbox_id"),
        (PortForwardRequest("p", (0,)), "port"),
    ],
)
def test_invalid_requests(request_, message):
    with pytest.raises(InvalidArgument, match=message):
        check_request(request_)


def test_store_asks_the_backend_to_validate():
    h = Harness()
    h.backend.missing.add("gone")
    with pytest.raises(NotFound):
        h.server.store(ExecRequest("gone", ("ls",)))

    def not_running(request):
        raise FailedPrecondition("container is not running")

    h.backend.validate = not_running
    with pytest.raises(FailedPrecondition):
        h.server.store(AttachRequest("c"))


def test_store_is_bounded():
    h = Harness()
    h.server.tokens = TokenCache(h.clock.seconds, capacity=2)
    h.server.store(AttachRequest("c"))
    h.server.store(AttachRequest("c"))
    with pytest.raises(ResourceExhausted):
        h.server.store(AttachRequest("c"))


def test_parse_address():
    assert parse_address("127.0.0.1:10241") == ("127.0.0.1", 10241)
    assert parse_address("[::1]:0") == ("::1", 0)
    assert parse_address(":80") == ("", 80)
    with pytest.raises(InvalidArgument):
        parse_address("localhost")


# -- exec and attach over SPDY ----------------------------------------------------


def test_exec_v4_non_tty_full_session_in_closing_order():
    h = Harness()
    h.upgrade(ExecRequest("c", ("sh",), stdin=True))
    s = h.open_all("error", "stdin", "stdout")
    assert h.backend.processes == []  # stderr still missing
    s["stderr"] = h.open("stderr")
    (proc,) = h.backend.processes
    assert proc.request.cmd == ("sh",)

    h.send(h.client.data(s["stdin"], b"input") + h.client.data(s["stdin"], b"", fin=True))
    assert proc.stdin_data == b"input" and proc.stdin_closed
    proc.write_stdout(b"out")
    proc.write_stderr(b"err")
    h.pull()
    proc.exit(3)
    frames = h.pull()
    assert h.client.streams[s["stdout"]] == b"out" and h.client.streams[s["stderr"]] == b"err"
    assert h.status(s["error"]) == {
        "metadata": {},
        "status": "Failure",
        "message": "command terminated with non-zero exit code: exit status 3",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": "3"}]},
    }
    # status before FIN of error; every output stream ended; the server waits
    # for the client to close.
    status_at = next(i for i, fr in enumerate(frames) if isinstance(fr, f.Data) and fr.stream_id == s["error"] and fr.data)
    fins = [i for i, fr in enumerate(frames) if isinstance(fr, f.Data) and fr.fin]
    assert all(h.client.ended(s[k]) for k in ("stdout", "stderr", "error"))
    assert status_at < max(fins)
    assert not h.transport.disconnecting
    assert not proc.terminated
    h.send(h.client.encode(f.GoAway(0)))
    assert h.transport.disconnecting


def test_exec_success_is_a_success_status():
    h = Harness()
    h.upgrade(ExecRequest("c", ("true",)))
    s = h.open_all("error", "stdout", "stderr")
    h.backend.processes[0].exit(0)
    h.pull()
    assert h.status(s["error"]) == {"metadata": {}, "status": "Success"}


def test_exec_tty_v4_waits_for_resize_not_stderr_and_parses_sizes():
    h = Harness()
    h.upgrade(ExecRequest("c", ("sh",), tty=True, stdin=True, stderr=False))
    s = h.open_all("error", "stdin", "stdout")
    assert h.backend.processes == []
    s["resize"] = h.open("resize")
    (proc,) = h.backend.processes
    msg = b'{"Width":80,"Height":24}\n{"width":100,'
    h.send(h.client.data(s["resize"], msg))
    h.send(h.client.data(s["resize"], b'"HEIGHT":30}\n'))
    assert proc.sizes == [(80, 24), (100, 30)]


def test_exec_tty_v2_expects_no_resize_stream():
    h = Harness()
    h.upgrade(ExecRequest("c", ("sh",), tty=True, stdin=True, stderr=False), ["v2.channel.k8s.io"])
    h.open_all("error", "stdin", "stdout")
    assert len(h.backend.processes) == 1


def test_exec_v3_failure_is_plain_text_and_success_is_nothing():
    h = Harness()
    h.upgrade(ExecRequest("c", ("x",)), ["v3.channel.k8s.io"])
    s = h.open_all("error", "stdout", "stderr")
    h.backend.processes[0].exit(2)
    h.pull()
    assert h.client.streams[s["error"]] == b"command terminated with non-zero exit code: exit status 2"
    h2 = Harness()
    h2.upgrade(ExecRequest("c", ("x",)), ["v2.channel.k8s.io"])
    s2 = h2.open_all("error", "stdout", "stderr")
    h2.backend.processes[0].exit(0)
    h2.pull()
    assert h2.client.streams[s2["error"]] == b"" and h2.client.ended(s2["error"])


def test_exec_v1_half_closes_stdin_and_resets_error_at_setup():
    h = Harness()
    h.upgrade(ExecRequest("c", ("x",), stdin=True), ["channel.k8s.io"])
    s = h.open_all("error", "stdin", "stdout", "stderr")
    assert s["stdin"] in h.client.finished
    assert h.client.reset.get(s["error"]) == f.CANCEL
    h.backend.processes[0].exit(0)
    h.pull()
    assert h.client.ended(s["stdout"])


def test_start_failure_is_an_internal_error_status():
    h = Harness()
    h.backend.start_error = FailedPrecondition("container c is not running")
    h.upgrade(ExecRequest("c", ("x",)))
    s = h.open_all("error", "stdout", "stderr")
    status = h.status(s["error"])
    assert status["reason"] == "InternalError" and status["code"] == 500
    assert "container c is not running" in status["message"]
    assert h.client.ended(s["stdout"])


@pytest.mark.parametrize("code", [None, -1, 256])
def test_unknown_exit_codes_are_internal_errors(code):
    h = Harness()
    h.upgrade(ExecRequest("c", ("x",)))
    s = h.open_all("error", "stdout", "stderr")
    h.backend.processes[0].exit(code)
    h.pull()
    assert h.status(s["error"])["reason"] == "InternalError"


def test_attach_ending_is_success_whatever_the_exit_code():
    h = Harness()
    h.upgrade(AttachRequest("c", stdin=True))
    s = h.open_all("error", "stdin", "stdout", "stderr")
    h.backend.processes[0].exit(7)
    h.pull()
    assert h.status(s["error"]) == {"metadata": {}, "status": "Success"}


def test_client_gone_mid_session_terminates_the_process():
    h = Harness()
    h.upgrade(ExecRequest("c", ("sleep",)))
    h.open_all("error", "stdout", "stderr")
    proc = h.backend.processes[0]
    h.lose()
    assert proc.terminated
    proc.write_stdout(b"late")  # ignored, no error
    proc.exit(137)


def test_streams_not_created_in_time_close_the_connection():
    h = Harness(stream_creation_timeout=30)
    h.upgrade(ExecRequest("c", ("x",)))
    h.open("error")
    h.clock.advance(30)
    assert h.transport.disconnecting
    assert h.backend.processes == []


def test_duplicate_and_unknown_streams():
    h = Harness()
    h.upgrade(ExecRequest("c", ("x",)))
    h.open("error")
    sid, syn = h.client.open({"streamtype": "error"})
    assert h.send(syn) == [f.RstStream(sid, f.CANCEL)]
    h.open("bogus")  # replied, ignored
    h.open_all("stdout", "stderr")
    assert len(h.backend.processes) == 1


def test_output_back_pressure_and_stdin_pause_reach_the_client_socket():
    h = Harness()
    h.upgrade(ExecRequest("c", ("cat",), stdin=True))
    h.open_all("error", "stdin", "stdout", "stderr")
    proc = h.backend.processes[0]
    producer = RecordingProducer()
    proc.terminal.set_output_producer(producer)
    h.transport.producer.pauseProducing()
    assert producer.state == "paused"
    h.transport.producer.resumeProducing()
    assert producer.state == "producing"
    proc.terminal.pause_input()
    assert h.transport.producerState == "paused"
    proc.terminal.resume_input()
    assert h.transport.producerState == "producing"
    proc.terminal.set_output_producer(None)
    h.transport.producer.pauseProducing()
    assert producer.state == "producing"


def test_idle_sessions_are_closed():
    h = Harness(idle_timeout=50)
    h.upgrade(ExecRequest("c", ("x",)))
    h.open_all("error", "stdout", "stderr")
    h.clock.advance(51)
    assert h.transport.disconnecting
    h.proto.connectionLost(None)
    assert h.backend.processes[0].terminated
