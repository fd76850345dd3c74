"""Wire-independent pieces of exec/attach: status payloads per protocol
version and the resize channel decoder."""

from __future__ import annotations

import json

import pytest

from rktlet.stream.command import ResizeDecoder, status_payload


@pytest.mark.parametrize("version", [4, 5])
def test_v4_success(version):
    assert status_payload(version, exit_code=0) == b'{"metadata":{},"status":"Success"}'


@pytest.mark.parametrize("code", [1, 3, 127, 137, 255])
def test_v4_non_zero_exit_carries_the_code_as_an_exit_code_cause(code):
    status = json.loads(status_payload(4, exit_code=code))
    assert status["status"] == "Failure"
    assert status["reason"] == "NonZeroExitCode"
    # The cause's type goes under "reason" (metav1.StatusCause), its message
    # is the decimal code the client parses as a uint8.
    assert status["details"]["causes"] == [{"reason": "ExitCode", "message": str(code)}]
    assert status["message"].startswith("command terminated with non-zero exit code")


@pytest.mark.parametrize("code", [-1, 256, 1000])
def test_exit_codes_the_client_cannot_parse_become_internal_errors(code):
    status = json.loads(status_payload(4, exit_code=code))
    assert status["reason"] == "InternalError" and status["code"] == 500
    assert str(code) in status["message"]


def test_internal_error():
    status = json.loads(status_payload(5, error="runc exec failed"))
    assert status == {
        "metadata": {},
        "status": "Failure",
        "message": "Internal error occurred: runc exec failed",
        "reason": "InternalError",
        "details": {"causes": [{"message": "runc exec failed"}]},
        "code": 500,
    }


@pytest.mark.parametrize("version", [1, 2, 3])
def test_before_v4_success_is_nothing_and_failures_are_plain_text(version):
    assert status_payload(version, exit_code=0) is None
    assert status_payload(version, exit_code=2) == b"command terminated with non-zero exit code: exit status 2"
    assert status_payload(version, error="boom") == b"Internal error occurred: boom"


def test_resize_objects_packed_and_split_anywhere():
    stream = b'{"Width":80,"Height":24}\n{"Width":100,"Height":30}\n  {"width":1,"HEIGHT":2}\n'
    for cut in range(len(stream) + 1):
        decoder = ResizeDecoder()
        assert decoder.feed(stream[:cut]) + decoder.feed(stream[cut:]) == [(80, 24), (100, 30), (1, 2)], cut
    decoder = ResizeDecoder()
    sizes = []
    for i in range(len(stream)):
        sizes += decoder.feed(stream[i : i + 1])
    assert sizes == [(80, 24), (100, 30), (1, 2)]


def test_missing_keys_are_zero_like_go():
    assert ResizeDecoder().feed(b'{"Width":5}{}') == [(5, 0), (0, 0)]


@pytest.mark.parametrize(
    "bad",
    [b"[1,2]", b'{"Width":-1,"Height":1}', b'{"Width":70000,"Height":1}', b'{"Width":"80"}', b'{"Width":true}', b"garbage"],
)
def test_decoding_stops_for_good_at_the_first_bad_object(bad):
    decoder = ResizeDecoder()
    assert decoder.feed(b'{"Width":1,"Height":1}' + bad) == [(1, 1)]
    assert decoder.broken
    assert decoder.feed(b'{"Width":2,"Height":2}') == []


def test_an_endless_object_is_given_up():
    decoder = ResizeDecoder()
    assert decoder.feed(b'{"Width":' + b" " * 5000) == []
    assert decoder.broken
