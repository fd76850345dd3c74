"""The reaper run around ``runc exec --detach`` (see the package
documentation): its script, the command that runs it, and its report."""

from __future__ import annotations

import functools
import os
import shutil
import sys

#: The reaper run around ``runc exec --detach`` (argv: pid file, then runc's
#: argv). It must become a subreaper before runc starts the command, reaps
#: whatever it inherits, and writes one line on fd 3: ``exit <code>`` (128 +
#: N after signal N), ``runc <status>`` (runc failed: see its log), or
#: ``lost <why>``. Its own stdio is closed once runc is started, so only
#: the command holds our pipes.
SCRIPT = r"""
import ctypes, os, sys
def report(line):
    os.write(3, line.encode() + b"\n")
    os._exit(0)
def code(status):
    c = os.waitstatus_to_exitcode(status)
    return c if c >= 0 else 128 - c
os.set_inheritable(3, False)
if ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
    report("lost prctl(PR_SET_CHILD_SUBREAPER) failed")
pid_file, argv = sys.argv[1], sys.argv[2:]
try:
    runc = os.posix_spawn(argv[0], argv, os.environ)
except OSError as e:
    report("lost cannot run %s: %s" % (argv[0], e.strerror))
os.closerange(0, 3)
reaped = {}  # a quick command may be handed over, and reaped, before runc
while runc not in reaped:
    pid, status = os.waitpid(-1, 0)
    reaped[pid] = status
if code(reaped[runc]) != 0:
    report("runc %d" % code(reaped[runc]))
try:
    with open(pid_file) as f:
        target = int(f.read().strip())
except (OSError, ValueError) as e:
    report("lost no pid from runc: %s" % e)
while target not in reaped:
    try:
        pid, status = os.waitpid(-1, 0)
    except ChildProcessError:
        report("lost the command was not handed to the reaper")
    reaped[pid] = status
report("exit %d" % code(reaped[target]))
"""

COMPILED_REAPER = "rktlet-exec-reaper"
#: Where the package build (setup.py ``build_reaper``) puts the compiled
#: reaper: in this package, beside this module.
PACKAGED_REAPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), COMPILED_REAPER)


def find_compiled_reaper() -> str | None:
    """The compiled reaper (``reaper.c``): the one the package build put in
    this package; else one beside this interpreter or on ``PATH``
    (installed by hand); None when there is none."""
    beside = os.path.join(os.path.dirname(sys.executable or ""), COMPILED_REAPER)
    for candidate in (PACKAGED_REAPER, beside):
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which(COMPILED_REAPER)


@functools.lru_cache(maxsize=1)
def reaper_command() -> tuple[str, ...]:
    """The reaper to run: the compiled one starts in about a millisecond;
    else this interpreter with ``-I -S`` (no site packages, no
    environment), which takes 10–20 ms to start."""
    found = find_compiled_reaper()
    if found:
        return (found,)
    return (sys.executable or "python3", "-I", "-S", "-c", SCRIPT)


def describe_reaper() -> str:
    """Which reaper ExecSync uses, for the log and ``Status`` verbose info:
    ``compiled <path>`` or ``python (...)``."""
    command = reaper_command()
    if len(command) == 1:
        return f"compiled {command[0]}"
    return (f"python ({COMPILED_REAPER} not found in the package, beside {sys.executable} or on PATH: "
            f"the package was built without a C compiler)")


def parse_reaper_report(data: bytes) -> tuple[str, int | None, str]:
    """The reaper's line as ``(kind, number, text)``: ``("exit", code, "")``,
    ``("runc", status, "")``, ``("lost", None, why)``; ``("lost", None,
    …)`` also for nothing or garbage (the reaper was killed)."""
    line = data.split(b"\n", 1)[0].decode("utf-8", "replace").strip()
    kind, _, rest = line.partition(" ")
    if kind in ("exit", "runc") and rest.lstrip("-").isdigit():
        return kind, int(rest), ""
    if kind == "lost":
        return kind, None, rest
    return "lost", None, "the reaper ended without reporting" if not line else f"unreadable report {line[:100]!r}"

