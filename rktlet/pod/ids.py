"""Pod and container ids: 64 lowercase hex characters, like rkt's pod UUIDs
in the form the CRI tools expect; any unique prefix names one."""

from __future__ import annotations

import re
import secrets
from typing import Iterable
from urllib.parse import quote

from rktlet.errors import InvalidArgument

_HEX = re.compile(r"^[0-9a-f]+$")


def new_id() -> str:
    """A fresh random id."""
    return secrets.token_hex(32)


def resolve(prefix: str, ids: Iterable[str], kind: str = "pod sandbox") -> str | None:
    """The one id in *ids* that starts with *prefix*, or ``None`` if none does.

    A prefix that is not hex names nothing rktlet could have made (clients
    such as critest stop and remove made-up UUIDs to test idempotence), so it
    is simply not found.

    :raises InvalidArgument: more than one id has the prefix.
    """
    if not prefix or not _HEX.match(prefix):
        return None
    matches = [i for i in ids if i.startswith(prefix)]
    if len(matches) > 1:
        raise InvalidArgument(f"{kind} id prefix {prefix!r} is ambiguous ({len(matches)} match)")
    return matches[0] if matches else None


def pod_key(namespace: str, name: str, uid: str, attempt: int) -> str:
    """The name a pod attempt reserves: ``namespace/name/uid/attempt``, each
    part %-escaped so that a ``/`` inside one cannot make two pods' keys
    equal (``a/b`` + ``c`` against ``a`` + ``b/c``)."""
    return "/".join(quote(part, safe="") for part in (namespace, name, uid)) + f"/{attempt}"
