"""The one-time token cache."""

from __future__ import annotations

import re
import threading

import pytest
from twisted.internet.task import Clock

from rktlet.errors import NotFound, ResourceExhausted
from rktlet.stream.session import AttachRequest, ExecRequest
from rktlet.stream.tokens import TokenCache, new_token

EXEC = ExecRequest("c1", ("ls",))


def test_tokens_are_8_url_safe_characters_and_unique():
    tokens = {new_token() for _ in range(5000)}
    assert len(tokens) == 5000
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{8}", t) for t in tokens)


def test_token_encodes_six_random_bytes_without_padding():
    assert new_token(lambda n: b"\xff" * n) == "________"
    assert new_token(lambda n: b"\x00" * n) == "AAAAAAAA"


def test_consume_returns_the_request_once():
    cache = TokenCache(Clock().seconds)
    token = cache.insert("exec", EXEC)
    assert cache.consume("exec", token) is EXEC
    with pytest.raises(NotFound):
        cache.consume("exec", token)
    assert len(cache) == 0


def test_unknown_token():
    with pytest.raises(NotFound):
        TokenCache(Clock().seconds).consume("exec", "AAAAAAAA")


def test_token_expires_after_the_ttl_on_the_injected_clock():
    clock = Clock()
    cache = TokenCache(clock.seconds, ttl=60)
    early = cache.insert("exec", EXEC)
    late = cache.insert("exec", EXEC)
    clock.advance(59.9)
    assert cache.consume("exec", early) is EXEC
    clock.advance(0.1)
    with pytest.raises(NotFound, match="expired"):
        cache.consume("exec", late)


def test_wrong_kind_is_not_found_and_spends_the_token():
    cache = TokenCache(Clock().seconds)
    token = cache.insert("exec", EXEC)
    with pytest.raises(NotFound):
        cache.consume("attach", token)
    with pytest.raises(NotFound):
        cache.consume("exec", token)


def test_kinds_are_checked_at_insert():
    with pytest.raises(ValueError):
        TokenCache(Clock().seconds).insert("shell", EXEC)


def test_capacity_then_room_again_once_tokens_expire():
    clock = Clock()
    cache = TokenCache(clock.seconds, ttl=60, capacity=1000)
    first = cache.insert("attach", AttachRequest("c"))
    clock.advance(1)
    for _ in range(999):
        cache.insert("exec", EXEC)
    with pytest.raises(ResourceExhausted, match="in-flight"):
        cache.insert("exec", EXEC)
    cache.consume("attach", first)  # using one frees one
    cache.insert("exec", EXEC)
    with pytest.raises(ResourceExhausted):
        cache.insert("exec", EXEC)
    clock.advance(60)  # all expired: pruned on the next insert
    cache.insert("exec", EXEC)
    assert len(cache) == 1


def test_a_colliding_random_source_retries_then_gives_up():
    clock = Clock()
    values = iter([b"\x01" * 6, b"\x01" * 6, b"\x02" * 6])
    cache = TokenCache(clock.seconds, randbytes=lambda n: next(values))
    a = cache.insert("exec", EXEC)
    b = cache.insert("exec", EXEC)
    assert a != b
    stuck = TokenCache(clock.seconds, randbytes=lambda n: b"\x03" * n)
    stuck.insert("exec", EXEC)
    with pytest.raises(ResourceExhausted):
        stuck.insert("exec", EXEC)


def test_insert_and_consume_from_several_threads():
    cache = TokenCache(Clock().seconds, capacity=100000)
    tokens: list[str] = []
    lock = threading.Lock()

    def worker():
        mine = [cache.insert("exec", EXEC) for _ in range(500)]
        with lock:
            tokens.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(tokens)) == 4000
    for t in tokens:
        cache.consume("exec", t)
