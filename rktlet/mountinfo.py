"""Reading ``/proc/self/mountinfo``."""

from __future__ import annotations

import os


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


def mount_points_under(directory: str, mountinfo: str | None = None) -> list[str]:
    """Mount points at or below *directory* (absolute), deepest first: the
    order to unmount them in.  *mountinfo* defaults to this process's table."""
    if mountinfo is None:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            mountinfo = f.read()
    top = os.path.normpath(directory)
    prefix = top.rstrip("/") + "/"
    found = []
    for line in mountinfo.splitlines():
        fields = line.split(" ")
        if len(fields) < 5:
            continue
        point = unescape(fields[4])
        if point == top or point.startswith(prefix):
            found.append(point)
    return sorted(set(found), key=lambda p: (-p.count("/"), p))
