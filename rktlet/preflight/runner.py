"""Running every check: at once, in threads (most of the time goes to
waiting for the programs asked for their versions), results in a fixed order."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from rktlet import __version__
from rktlet.config import Config
from rktlet.preflight import programs, socket_path, system
from rktlet.preflight.host import Host
from rktlet.preflight.model import Outcome, Report, Result, fail

Check = Callable[[Config, Host], list[Result]]

#: Checks whose failure makes the others meaningless (as another user, every
#: path and program would be judged by that user's rights): run first, alone.
GATES: tuple[Check, ...] = (system.check_root,)

#: Every other check, in the order they are printed.
CHECKS: tuple[Check, ...] = (
    programs.check_runtimes,
    programs.check_conmon,
    programs.check_cni,
    system.check_cgroups,
    system.check_overlay,
    system.check_kernel,
    system.check_devices,
    system.check_disk,
    socket_path.check_socket_path,
    socket_path.check_other_instance,
)


def _guarded(check: Check, config: Config, host: Host) -> list[Result]:
    try:
        return check(config, host)
    except Exception as e:  # a check's own bug must not hide the others' findings
        name = check.__name__.removeprefix("check_").replace("_", " ")
        return [fail(name, f"the check itself failed: {type(e).__name__}: {e}", "report this as a bug")]


def run_checks(config: Config, host: Host | None = None, checks: tuple[Check, ...] = CHECKS,
               gates: tuple[Check, ...] = GATES) -> Report:
    """Run *gates*, then, when they pass, *checks* against *config* on
    *host* (default: this machine)."""
    host = host or Host()
    first = tuple(r for gate in gates for r in _guarded(gate, config, host))
    if any(r.outcome is Outcome.FAIL for r in first):
        return Report(first)
    with ThreadPoolExecutor(max_workers=len(checks)) as pool:
        found = list(pool.map(lambda c: _guarded(c, config, host), checks))
    return Report(first + tuple(r for results in found for r in results))


def version_lines(config: Config, host: Host | None = None) -> list[str]:
    """What ``rktlet --version`` prints after rktlet's own version: each
    runtime's, conmon's and the CNI plugins' answers, with their paths."""
    host = host or Host()
    parts: tuple[Callable[[], list[str]], ...] = (
        lambda: programs.runtime_version_lines(config, host),
        lambda: [programs.conmon_version_line(host)],
        lambda: programs.cni_version_lines(config, host),
    )
    with ThreadPoolExecutor(max_workers=len(parts)) as pool:
        return [line for lines in pool.map(lambda f: f(), parts) for line in lines]


def version_text(config: Config, host: Host | None = None) -> str:
    """``rktlet --version``: rktlet's version, then :func:`version_lines`."""
    return "\n".join([f"rktlet {__version__}", *version_lines(config, host)])
