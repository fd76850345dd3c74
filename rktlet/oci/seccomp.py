"""rktlet's RuntimeDefault seccomp profile, and loading Localhost profiles.

The default profile is an allow-list: every system call not named below
fails with EPERM.  It lets ordinary programs (shells, servers, language
runtimes, runc's own init, which finishes under the filter) do their work,
and leaves out what only the host's administrator should do, whatever
capabilities the container was given:

* kernel and boot: kexec_load, kexec_file_load, reboot, init_module,
  finit_module, delete_module (and the obsolete module calls), acct,
  swapon, swapoff, syslog;
* mounts and namespaces: mount, umount, umount2, pivot_root, the new mount
  API (fsopen, fsmount, move_mount, open_tree, ...), unshare, setns, and
  ``clone`` with any CLONE_NEW* flag — a container cannot make a user
  namespace (a large kernel attack surface) or escape its namespaces;
* clocks: settimeofday, stime, clock_settime, clock_adjtime, adjtimex
  (the clock is the host's);
* kernel-wide interfaces with a history of exploits: bpf, perf_event_open,
  userfaultfd, io_uring_*, keyctl / add_key / request_key (the keyring is
  not namespaced), lookup_dcookie, quotactl, fanotify_init,
  open_by_handle_at / name_to_handle_at (open any inode by handle, bypassing
  the mount namespace), iopl / ioperm, modify_ldt, vm86, vhangup,
  migrate_pages / move_pages (act on other processes' memory placement),
  memfd_secret, uselib, ustat, sysfs, _sysctl, nfsservctl.

Decisions:

* **ptrace** (and process_vm_readv/writev, kcmp, pidfd_getfd,
  process_madvise, which check the same ptrace access rules) is allowed
  when the kernel is 4.8 or newer.  Before 4.8 a traced process could
  change a system call after seccomp had checked it, bypassing the filter;
  from 4.8 seccomp re-checks.  Debuggers and strace need it, and the
  kernel's own ptrace access checks (plus the PID namespace) still decide
  what can be traced.
* **clone3** fails with ENOSYS rather than EPERM: its flags are in a
  struct in memory, which seccomp cannot inspect, so it cannot get the
  namespace-flag rule ``clone`` has.  ENOSYS makes glibc (and Go) fall back
  to ``clone``, which is checked.
* **personality** is allowed only with the harmless personas: PER_LINUX,
  PER_LINUX32 (32-bit uname), UNAME26 on either, and 0xffffffff (query).
  Others (e.g. READ_IMPLIES_EXEC, ADDR_NO_RANDOMIZE) weaken ASLR and NX.
* sethostname / setdomainname, chroot, mknod, setuid & co. are allowed:
  the kernel checks the matching capability (CAP_SYS_ADMIN in the UTS
  namespace's owner, CAP_SYS_CHROOT, CAP_MKNOD + the devices cgroup,
  CAP_SETUID), and whether the container has it is what the capability
  lists decide.

Names that a libseccomp version does not know are skipped by runc, so the
list can name new system calls and the 32-bit ones (resolved for
SCMP_ARCH_X86 / SCMP_ARCH_ARM by libseccomp).

Pure data and JSON reading; no Twisted.
"""

from __future__ import annotations

import json
import os
import platform
from typing import Any

from rktlet.errors import InvalidArgument

__all__ = ["default_profile", "load_localhost", "ALLOWED_SYSCALLS", "CLONE_NAMESPACE_FLAGS"]

EPERM = 1
ENOSYS = 38

# CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER
# | CLONE_NEWPID | CLONE_NEWNET.  (CLONE_NEWTIME, 0x80, only exists for
# clone3/unshare; in clone(2)'s flags those bits are the exit signal.)
CLONE_NAMESPACE_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000

# personality(2) values allowed: PER_LINUX, PER_LINUX32, UNAME26,
# PER_LINUX32|UNAME26, and 0xffffffff which only queries the persona.
_PERSONAS = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)

#: System calls allowed unconditionally, by what they are for.
ALLOWED_SYSCALLS: tuple[str, ...] = (
    # files: open, read, write, metadata
    "access", "faccessat", "faccessat2", "open", "openat", "openat2", "creat", "close", "close_range",
    "read", "readv", "pread64", "preadv", "preadv2", "write", "writev", "pwrite64", "pwritev", "pwritev2",
    "lseek", "_llseek", "dup", "dup2", "dup3", "fcntl", "fcntl64", "ioctl", "flock",
    "fsync", "fdatasync", "sync", "syncfs", "sync_file_range", "sync_file_range2", "arm_sync_file_range",
    "fadvise64", "fadvise64_64", "arm_fadvise64_64", "readahead", "fallocate",
    "truncate", "truncate64", "ftruncate", "ftruncate64",
    "stat", "stat64", "lstat", "lstat64", "fstat", "fstat64", "newfstatat", "fstatat64", "statx",
    "statfs", "statfs64", "fstatfs", "fstatfs64",
    "getdents", "getdents64", "readdir",
    "chdir", "fchdir", "getcwd", "chroot", "umask",
    "mkdir", "mkdirat", "rmdir", "mknod", "mknodat",
    "link", "linkat", "symlink", "symlinkat", "readlink", "readlinkat",
    "unlink", "unlinkat", "rename", "renameat", "renameat2",
    "chmod", "fchmod", "fchmodat", "fchmodat2",
    "chown", "fchown", "fchownat", "lchown", "chown32", "fchown32", "lchown32",
    "utime", "utimes", "utimensat", "utimensat_time64", "futimesat",
    "getxattr", "lgetxattr", "fgetxattr", "listxattr", "llistxattr", "flistxattr",
    "setxattr", "lsetxattr", "fsetxattr", "removexattr", "lremovexattr", "fremovexattr",
    "sendfile", "sendfile64", "splice", "tee", "vmsplice", "copy_file_range",
    "inotify_init", "inotify_init1", "inotify_add_watch", "inotify_rm_watch",
    "memfd_create", "pipe", "pipe2",
    # waiting for I/O, events, timers as files
    "select", "_newselect", "pselect6", "pselect6_time64", "poll", "ppoll", "ppoll_time64",
    "epoll_create", "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "epoll_pwait2",
    "eventfd", "eventfd2", "signalfd", "signalfd4",
    "timerfd_create", "timerfd_settime", "timerfd_settime64", "timerfd_gettime", "timerfd_gettime64",
    # asynchronous I/O (the old AIO interface; io_uring is not allowed)
    "io_setup", "io_destroy", "io_submit", "io_cancel", "io_getevents", "io_pgetevents", "io_pgetevents_time64",
    # memory
    "brk", "mmap", "mmap2", "munmap", "mremap", "mprotect", "madvise", "mincore", "msync",
    "mlock", "mlock2", "munlock", "mlockall", "munlockall", "remap_file_pages",
    "get_mempolicy", "set_mempolicy", "mbind", "set_mempolicy_home_node", "membarrier",
    "pkey_alloc", "pkey_free", "pkey_mprotect", "map_shadow_stack",
    # processes and threads
    "fork", "vfork", "execve", "execveat", "exit", "exit_group", "wait4", "waitid", "waitpid",
    "getpid", "getppid", "gettid", "getpgid", "setpgid", "getpgrp", "getsid", "setsid",
    "set_tid_address", "set_robust_list", "get_robust_list", "rseq",
    "futex", "futex_time64", "futex_waitv", "futex_wake", "futex_wait", "futex_requeue",
    "arch_prctl", "prctl", "seccomp", "capget", "capset", "get_thread_area", "set_thread_area",
    "getpriority", "setpriority", "nice", "getrlimit", "ugetrlimit", "setrlimit", "prlimit64", "getrusage",
    "sched_yield", "sched_getaffinity", "sched_setaffinity", "sched_getattr", "sched_setattr",
    "sched_getparam", "sched_setparam", "sched_getscheduler", "sched_setscheduler",
    "sched_get_priority_max", "sched_get_priority_min", "sched_rr_get_interval", "sched_rr_get_interval_time64",
    "ioprio_get", "ioprio_set", "getcpu", "uname", "sysinfo", "times", "getrandom",
    "landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self",
    # signals
    "kill", "tkill", "tgkill", "pidfd_open", "pidfd_send_signal", "pause", "restart_syscall",
    "rt_sigaction", "rt_sigprocmask", "rt_sigpending", "rt_sigqueueinfo", "rt_tgsigqueueinfo",
    "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait", "rt_sigtimedwait_time64",
    "sigaction", "signal", "sigprocmask", "sigpending", "sigreturn", "sigsuspend", "sigaltstack",
    "alarm", "getitimer", "setitimer",
    # credentials (the kernel checks CAP_SETUID / CAP_SETGID)
    "getuid", "getuid32", "geteuid", "geteuid32", "getgid", "getgid32", "getegid", "getegid32",
    "getresuid", "getresuid32", "getresgid", "getresgid32", "getgroups", "getgroups32",
    "setuid", "setuid32", "setgid", "setgid32", "setreuid", "setreuid32", "setregid", "setregid32",
    "setresuid", "setresuid32", "setresgid", "setresgid32", "setgroups", "setgroups32",
    "setfsuid", "setfsuid32", "setfsgid", "setfsgid32",
    # time (reading it, sleeping, per-process timers)
    "time", "gettimeofday", "clock_gettime", "clock_gettime64", "clock_getres", "clock_getres_time64",
    "nanosleep", "clock_nanosleep", "clock_nanosleep_time64",
    "timer_create", "timer_delete", "timer_getoverrun", "timer_gettime", "timer_gettime64",
    "timer_settime", "timer_settime64",
    # sockets
    "socket", "socketpair", "bind", "connect", "listen", "accept", "accept4", "shutdown",
    "getsockname", "getpeername", "getsockopt", "setsockopt",
    "send", "sendto", "sendmsg", "sendmmsg", "recv", "recvfrom", "recvmsg", "recvmmsg", "recvmmsg_time64",
    "socketcall",
    # System V and POSIX IPC (namespaced)
    "ipc", "shmget", "shmat", "shmdt", "shmctl", "semget", "semop", "semctl", "semtimedop",
    "semtimedop_time64", "msgget", "msgsnd", "msgrcv", "msgctl",
    "mq_open", "mq_unlink", "mq_timedsend", "mq_timedsend_time64", "mq_timedreceive",
    "mq_timedreceive_time64", "mq_notify", "mq_getsetattr",
    # the UTS namespace's names (CAP_SYS_ADMIN is checked by the kernel)
    "sethostname", "setdomainname",
    # arm / aarch64 specifics
    "breakpoint", "cacheflush", "set_tls",
)

#: Allowed when the kernel re-checks seccomp after ptrace (4.8 and newer).
PTRACE_SYSCALLS: tuple[str, ...] = (
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd", "process_madvise",
)

# libseccomp architecture names per machine: the native one first, then the
# compat ABIs a 64-bit kernel runs (32-bit x86 and x32; 32-bit ARM).
_ARCHES = {
    "x86_64": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
    "amd64": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
    "aarch64": ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
    "arm64": ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
    "ppc64le": ["SCMP_ARCH_PPC64LE"],
    "s390x": ["SCMP_ARCH_S390X", "SCMP_ARCH_S390"],
    "riscv64": ["SCMP_ARCH_RISCV64"],
}

# Which clone(2) argument holds the flags: s390 swaps the first two.
_CLONE_FLAGS_ARG = {"s390x": 1}

_ACTIONS = frozenset({
    "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_TRAP",
    "SCMP_ACT_ERRNO", "SCMP_ACT_TRACE", "SCMP_ACT_ALLOW", "SCMP_ACT_LOG", "SCMP_ACT_NOTIFY",
})


def _kernel_at_least(release: str, major: int, minor: int) -> bool:
    """Whether a ``uname -r`` string is version major.minor or newer (an
    unparsable one is assumed new: every kernel a current runc supports is)."""
    parts = release.split(".")
    try:
        found = (int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0))
    except (IndexError, ValueError):
        return True
    return found >= (major, minor)


def default_profile(machine: str | None = None, kernel_release: str | None = None) -> dict[str, Any]:
    """rktlet's RuntimeDefault profile as an OCI ``linux.seccomp`` object.

    :param machine: ``uname -m`` of the host (default: this one's); selects
        the architectures and clone's argument layout.
    :param kernel_release: ``uname -r`` (default: this kernel's); decides
        whether the ptrace family is allowed (see the module docstring).
    """
    machine = machine or platform.machine()
    kernel_release = kernel_release or os.uname().release
    allowed = list(ALLOWED_SYSCALLS)
    if _kernel_at_least(kernel_release, 4, 8):
        allowed += PTRACE_SYSCALLS
    syscalls: list[dict[str, Any]] = [{"names": allowed, "action": "SCMP_ACT_ALLOW"}]
    # clone only without namespace flags: (flags & mask) == 0.
    syscalls.append({
        "names": ["clone"],
        "action": "SCMP_ACT_ALLOW",
        "args": [{
            "index": _CLONE_FLAGS_ARG.get(machine, 0),
            "value": CLONE_NAMESPACE_FLAGS,
            "valueTwo": 0,
            "op": "SCMP_CMP_MASKED_EQ",
        }],
    })
    syscalls.append({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS})
    # Arguments within one rule are ANDed, so each allowed persona is a rule.
    for persona in _PERSONAS:
        syscalls.append({
            "names": ["personality"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": persona, "valueTwo": 0, "op": "SCMP_CMP_EQ"}],
        })
    profile: dict[str, Any] = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": EPERM,
        "syscalls": syscalls,
    }
    arches = _ARCHES.get(machine)
    if arches:
        profile["architectures"] = list(arches)
    return profile


def _native_arches(arch_map: Any) -> list[str]:
    """The architectures a Docker-format ``archMap`` lists for this machine."""
    native = _ARCHES.get(platform.machine(), [])
    if not native or not isinstance(arch_map, list):
        return []
    for item in arch_map:
        if isinstance(item, dict) and item.get("architecture") == native[0]:
            return [native[0], *[a for a in item.get("subArchitectures") or [] if isinstance(a, str)]]
    return []


def load_localhost(path: str) -> dict[str, Any]:
    """A Localhost seccomp profile read from the absolute *path*.

    The file holds an OCI ``linux.seccomp`` object, or the Docker-format
    profile many tools write (``archMap``; syscall entries with ``name``
    rather than ``names``), which is converted: ``archMap`` → the native
    ``architectures``; entries restricted by ``includes`` / ``excludes``
    (capability, architecture or kernel conditions) are left out, which
    only ever allows less.

    :raises InvalidArgument: the path is not absolute, the file is missing,
        unreadable or not a valid profile; the message names the path.
    """
    if path.startswith("localhost/"):
        path = path[len("localhost/"):]  # the pre-CRI-field annotation spelling
    if not path or not os.path.isabs(path):
        raise InvalidArgument(f"seccomp localhost profile {path!r}: must be an absolute path")
    try:
        with open(path, "rb") as f:
            raw = f.read(16 << 20)
    except FileNotFoundError:
        raise InvalidArgument(f"seccomp localhost profile {path} does not exist") from None
    except OSError as e:
        raise InvalidArgument(f"seccomp localhost profile {path}: {os.strerror(e.errno or 0)}") from None
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise InvalidArgument(f"seccomp localhost profile {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise InvalidArgument(f"seccomp localhost profile {path}: expected a JSON object")
    action = data.get("defaultAction")
    if action not in _ACTIONS:
        raise InvalidArgument(f"seccomp localhost profile {path}: defaultAction {action!r} is not a seccomp action")
    profile: dict[str, Any] = {"defaultAction": action}
    for key in ("defaultErrnoRet", "flags", "listenerPath", "listenerMetadata"):
        if key in data:
            profile[key] = data[key]
    architectures = data.get("architectures")
    if not architectures and "archMap" in data:
        architectures = _native_arches(data["archMap"])
    if architectures:
        if not isinstance(architectures, list) or not all(isinstance(a, str) for a in architectures):
            raise InvalidArgument(f"seccomp localhost profile {path}: architectures must be a list of names")
        profile["architectures"] = architectures
    syscalls = data.get("syscalls") or []
    if not isinstance(syscalls, list):
        raise InvalidArgument(f"seccomp localhost profile {path}: syscalls must be a list")
    converted = []
    for index, rule in enumerate(syscalls):
        if not isinstance(rule, dict):
            raise InvalidArgument(f"seccomp localhost profile {path}: syscalls[{index}] is not an object")
        if rule.get("includes") or rule.get("excludes"):
            continue
        names = rule.get("names")
        if names is None and isinstance(rule.get("name"), str):
            names = [rule["name"]]
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise InvalidArgument(f"seccomp localhost profile {path}: syscalls[{index}] has no names")
        if rule.get("action") not in _ACTIONS:
            raise InvalidArgument(
                f"seccomp localhost profile {path}: syscalls[{index}] action {rule.get('action')!r} is not a seccomp action"
            )
        out = {"names": names, "action": rule["action"]}
        for key in ("errnoRet", "args"):
            if rule.get(key) is not None:
                out[key] = rule[key]
        converted.append(out)
    profile["syscalls"] = converted
    return profile
