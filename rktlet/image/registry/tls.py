"""TLS for registries: verified by default, unverified (with a handshake
deadline) for the registries the operator marked insecure."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import CertificateOptions
from twisted.web.client import BrowserLikePolicyForHTTPS
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

__all__ = ["TLSPolicy"]


@implementer(IOpenSSLClientConnectionCreator)
class _UnverifiedTLS:
    """TLS without certificate checks, for registries the operator marked
    insecure (they may be reached over plain HTTP anyway, so this is no
    weaker).  The handshake has a deadline so that probing a plain-HTTP
    server that waits silently for a request line falls back to HTTP soon."""

    def __init__(self, context: SSL.Context, hostname: str, reactor: Any, handshake_timeout: float) -> None:
        self._context = context
        self._hostname = hostname
        self._reactor = reactor
        self._handshake_timeout = handshake_timeout

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        """Make the OpenSSL connection for *tlsProtocol* (Twisted calls this)."""
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        if not _is_ip(self._hostname):
            connection.set_tlsext_host_name(self._hostname.encode("idna"))
        state: dict[str, Any] = {"done": False}

        def expire() -> None:
            transport = getattr(tlsProtocol, "transport", None)
            if not state["done"] and transport is not None:
                transport.abortConnection()

        timer = self._reactor.callLater(self._handshake_timeout, expire)
        state["timer"] = timer

        def info(conn: SSL.Connection, where: int, ret: int) -> None:
            if where & SSL.SSL_CB_HANDSHAKE_DONE and not state["done"]:
                state["done"] = True
                if timer.active():
                    timer.cancel()

        connection.set_info_callback(info)
        return connection


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


@implementer(IPolicyForHTTPS)
class TLSPolicy:
    """Verified TLS (system trust store, hostname check) unless the host is
    an insecure registry."""

    def __init__(self, is_insecure: Callable[[str], bool], reactor: Any, handshake_timeout: float) -> None:
        self._is_insecure = is_insecure
        self._reactor = reactor
        self._handshake_timeout = handshake_timeout
        self._verified = BrowserLikePolicyForHTTPS()
        self._unverified_context: SSL.Context | None = None

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        """The connection creator for ``hostname:port`` (Twisted's agent calls this)."""
        host = hostname.decode("ascii")
        shown = f"[{host}]" if ":" in host else host
        if self._is_insecure(f"{shown}:{port}") or self._is_insecure(shown):
            if self._unverified_context is None:
                self._unverified_context = CertificateOptions(verify=False).getContext()
            return _UnverifiedTLS(self._unverified_context, host, self._reactor, self._handshake_timeout)
        return self._verified.creatorForNetloc(hostname, port)
