"""One-time tokens for streaming sessions (the reference server's request
cache): the Exec/Attach/PortForward RPCs store their request under a fresh
token, and the first HTTP request naming the token takes it out.

* token: 6 bytes from the OS CSPRNG, base64 URL-safe without padding — exactly
  8 characters of ``[A-Za-z0-9_-]``;
* expiry: ``ttl`` seconds (60) after insertion, measured on the injected clock;
* single use: a lookup removes the entry whether or not it matches (expired,
  wrong kind: the caller answers 404 all the same);
* capacity: at most ``capacity`` (1000) entries in flight; expired ones are
  pruned, oldest first, on every insert.

The RPC threads may insert while the reactor consumes, so the cache locks.
"""

from __future__ import annotations

import base64
import os
import threading
from collections import OrderedDict
from typing import Any, Callable

from rktlet.errors import NotFound, ResourceExhausted

KINDS = ("exec", "attach", "portforward")
TOKEN_BYTES = 6


def new_token(randbytes: Callable[[int], bytes] = os.urandom) -> str:
    """An 8-character URL-safe token from *randbytes* (a CSPRNG)."""
    return base64.urlsafe_b64encode(randbytes(TOKEN_BYTES)).decode("ascii")


class TokenCache:
    """Requests waiting for their streaming connection.

    :param now: the clock (``reactor.seconds``).
    :param ttl: seconds a token stays valid.
    :param capacity: most entries in flight.
    :param randbytes: the random source (tests inject a fixed one).
    """

    ATTEMPTS = 10

    def __init__(
        self,
        now: Callable[[], float],
        ttl: float = 60.0,
        capacity: int = 1000,
        randbytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._now = now
        self._ttl = ttl
        self._capacity = capacity
        self._randbytes = randbytes
        self._lock = threading.Lock()
        # token -> (expiry, kind, request); insertion order is expiry order.
        self._entries: OrderedDict[str, tuple[float, str, Any]] = OrderedDict()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def insert(self, kind: str, request: Any) -> str:
        """Store *request* for a *kind* session and return its token.

        :raises ResourceExhausted: ``capacity`` requests are in flight.
        """
        if kind not in KINDS:
            raise ValueError(f"unknown session kind {kind!r}")
        with self._lock:
            now = self._now()
            self._prune(now)
            if len(self._entries) >= self._capacity:
                raise ResourceExhausted(
                    f"maximum number of in-flight streaming requests exceeded ({self._capacity})"
                )
            for _ in range(self.ATTEMPTS):
                token = new_token(self._randbytes)
                if token not in self._entries:
                    break
            else:
                raise ResourceExhausted("could not find an unused streaming token")
            self._entries[token] = (now + self._ttl, kind, request)
            return token

    def consume(self, kind: str, token: str) -> Any:
        """Take the request stored under *token* out of the cache.

        :raises NotFound: unknown, already used, expired, or stored for
            another kind of session (the token is spent in every case).
        """
        with self._lock:
            entry = self._entries.pop(token, None)
            now = self._now()
        if entry is None:
            raise NotFound(f"unknown or already used streaming token {token!r}")
        expiry, stored_kind, request = entry
        if now >= expiry:
            raise NotFound(f"streaming token {token!r} expired")
        if stored_kind != kind:
            raise NotFound(f"streaming token {token!r} is not for {kind}")
        return request

    def _prune(self, now: float) -> None:
        while self._entries:
            token, (expiry, _, _) = next(iter(self._entries.items()))
            if expiry > now:
                return
            del self._entries[token]
