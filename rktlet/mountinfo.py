"""Reading ``/proc/self/mountinfo``."""

from __future__ import annotations


def unescape(field: str) -> str:
    r"""Undo the octal escapes of a mountinfo path field (``\040`` is a space)."""
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        chunk = field[i + 1 : i + 4]
        if field[i] == "\\" and len(chunk) == 3 and chunk.isdigit():
            out.append(chr(int(chunk, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)
