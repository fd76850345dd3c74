"""Small file-system helpers shared by every layer."""

from __future__ import annotations

import json
import os
from typing import Any


def write_atomic(path: str, data: bytes, mode: int = 0o644) -> None:
    """Replace *path* with *data* so that readers see the old or the new
    content, never a mix, even across a crash: temp file, fsync, rename,
    fsync of the directory."""
    directory = os.path.dirname(path) or "."
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_json_atomic(path: str, value: Any, mode: int = 0o644) -> None:
    """:func:`write_atomic` of *value* as indented JSON."""
    write_atomic(path, json.dumps(value, indent=2, sort_keys=True).encode() + b"\n", mode)


def read_json(path: str, default: Any = None) -> Any:
    """The JSON value in *path*, or *default* when the file does not exist."""
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except FileNotFoundError:
        return default
