"""Pod and container ids: 64 lowercase hex characters, like rkt's pod UUIDs
in the form the CRI tools expect; any unique prefix names one."""

from __future__ import annotations

import re
import secrets
from typing import Iterable

from rktlet.errors import InvalidArgument

_HEX = re.compile(r"^[0-9a-f]+$")


def new_id() -> str:
    """A fresh random id."""
    return secrets.token_hex(32)


def resolve(prefix: str, ids: Iterable[str], kind: str = "pod sandbox") -> str | None:
    """The one id in *ids* that starts with *prefix*, or ``None`` if none does.

    :raises InvalidArgument: the prefix is not hex, or more than one id has it.
    """
    if not prefix:
        return None
    if not _HEX.match(prefix):
        raise InvalidArgument(f"{kind} id {prefix!r} is not a hexadecimal id or prefix")
    matches = [i for i in ids if i.startswith(prefix)]
    if len(matches) > 1:
        raise InvalidArgument(f"{kind} id prefix {prefix!r} is ambiguous ({len(matches)} match)")
    return matches[0] if matches else None
