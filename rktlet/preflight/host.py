"""The parts of the machine the checks look at, gathered in one object so
that tests can put fakes in their place (paths under a temporary directory,
a program runner that answers from a table, another uid...).

Programs are run with :mod:`subprocess` here, not through the reactor: the
checks run before the reactor does (the daemon must not start at all when
they fail) and in the ``rktlet check`` and ``--version`` commands, which
have no reactor. Each run is bounded in time and in the output kept.
"""

from __future__ import annotations

import os
import stat
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from typing import Callable, Sequence

#: Seconds one program may take before it is killed (version queries answer in milliseconds).
PROGRAM_TIMEOUT = 5.0
#: Bytes of each output stream kept; more is a broken program.
OUTPUT_LIMIT = 256 << 10

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class ProgramOutput:
    """What a program run by a check left behind.

    :ivar exit_code: its exit status; None when it could not be started,
        was killed by a signal or ran past its timeout.
    :ivar error: why it did not run to its end (empty when it did).
    """

    stdout: bytes = b""
    stderr: bytes = b""
    exit_code: int | None = 0
    error: str = ""

    def first_line(self) -> str:
        """The first line of stdout, else of stderr, else the error."""
        for data in (self.stdout, self.stderr):
            text = data.decode("utf-8", "replace").strip()
            if text:
                return text.splitlines()[0].strip()
        return self.error or f"exit status {self.exit_code}"


def run_program(argv: Sequence[str], env: dict[str, str], stdin: bytes = b"",
                timeout: float = PROGRAM_TIMEOUT) -> ProgramOutput:
    """Run *argv* with exactly *env*; keep at most :data:`OUTPUT_LIMIT`
    bytes of each stream; kill it after *timeout* seconds."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=out, stderr=err, env=env,
                                    close_fds=True, start_new_session=True)
        except OSError as e:
            return ProgramOutput(exit_code=None, error=f"cannot run {argv[0]}: {e.strerror or e}")
        try:
            try:
                proc.communicate(stdin, timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                return ProgramOutput(exit_code=None, error=f"{argv[0]} did not answer within {timeout:g}s")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        # Output goes to files, not pipes: a program that writes without end
        # fills a file until its timeout instead of this process's memory.
        out.seek(0)
        err.seek(0)
        code = proc.returncode
        return ProgramOutput(out.read(OUTPUT_LIMIT), err.read(OUTPUT_LIMIT), code if code >= 0 else None,
                             "" if code >= 0 else f"{argv[0]} was killed by signal {-code}")


def _pidfd_supported() -> bool:
    try:
        fd = os.pidfd_open(os.getpid())
    except (AttributeError, OSError):
        return False
    os.close(fd)
    return True


def _effective_access(path: str, mode: int) -> bool:
    return os.access(path, mode, effective_ids=os.access in os.supports_effective_ids)


def _is_char_device(path: str) -> bool:
    try:
        return stat.S_ISCHR(os.stat(path).st_mode)
    except OSError:
        return False


@dataclass
class Host:
    """The machine as the checks see it; every part replaceable in tests.

    :ivar euid: the effective uid the daemon runs as.
    :ivar proc: where procfs is mounted (``self/mountinfo``, ``filesystems``,
        ``self/ns``, ``self/status`` are read below it).
    :ivar kernel_release: ``uname -r``.
    :ivar modules: where the kernel's modules are (``<modules>/<release>``).
    :ivar path: the ``PATH`` programs are looked up in and run with.
    :ivar run: runs one program (see :func:`run_program`).
    :ivar statvfs: ``os.statvfs``.
    :ivar access: ``os.access`` with the effective uid.
    :ivar pidfd_supported: whether ``pidfd_open`` works on this kernel.
    :ivar dev: where the host's device nodes are.
    :ivar char_device: whether a path is a character device.
    """

    euid: int = field(default_factory=os.geteuid)
    proc: str = "/proc"
    kernel_release: str = field(default_factory=lambda: os.uname().release)
    modules: str = "/lib/modules"
    path: str = field(default_factory=lambda: os.environ.get("PATH") or DEFAULT_PATH)
    run: Callable[..., ProgramOutput] = run_program
    statvfs: Callable[[str], os.statvfs_result] = os.statvfs
    access: Callable[[str, int], bool] = _effective_access
    pidfd_supported: Callable[[], bool] = _pidfd_supported
    dev: str = "/dev"
    char_device: Callable[[str], bool] = _is_char_device

    def find(self, program: str) -> str | None:
        """The executable *program* names: a path as given, or a name
        looked up in :attr:`path`."""
        if os.sep in program:
            return program if os.path.isfile(program) and self.access(program, os.X_OK) else None
        return shutil.which(program, path=self.path)

    def execute(self, argv: Sequence[str], stdin: bytes = b"", env: dict[str, str] | None = None) -> ProgramOutput:
        """Run *argv* with only ``PATH`` (and *env*) in its environment."""
        return self.run(argv, {"PATH": self.path, **(env or {})}, stdin=stdin)

    def read(self, relative: str) -> str:
        """A file below :attr:`proc`, as text ('' when unreadable)."""
        try:
            with open(os.path.join(self.proc, relative), encoding="utf-8", errors="surrogateescape") as f:
                return f.read()
        except OSError:
            return ""

