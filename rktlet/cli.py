"""The ``rktlet`` command.

* ``rktlet [options]`` runs the daemon: the same service as ``twistd -n
  rktlet``, in the foreground, logging to stdout, without a pid file;
* ``rktlet check [options]`` checks what the daemon needs, one line per
  check, as the daemon does at start;
* ``rktlet config [options]`` prints the effective configuration as TOML;
* ``rktlet --version`` prints rktlet's version and those of the programs it
  runs.

Options may come before the command name as well as after it.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.python import usage

from rktlet import config as config_module
from rktlet import preflight, tap
from rktlet.config import OPTIONS, Config


def _given(value: Any) -> bool:
    return value is not None and value != []


class _Command(tap.Options):
    """A subcommand: its options are the daemon's, and options given before
    its name count too (those after it win)."""

    name = ""

    def getSynopsis(self) -> str:
        return f"Usage: rktlet {self.name} [options]"

    def _load(self) -> Config:
        parent = self.parent or {}
        flags = {o.key: self.get(o.key) if _given(self.get(o.key)) else parent.get(o.key) for o in OPTIONS}
        return config_module.load(flags, self.get("config") or parent.get("config"))


class CheckOptions(_Command):
    """``rktlet check``."""

    name = "check"
    longdesc = (
        "Check what the daemon needs with these options, as it does at start, and print one line per check "
        "(ok, warn or FAIL, what was found, and what to do). Exit status: 0 all passed; 1 a check failed and "
        "the daemon would refuse to start; 2 the daemon would start, but what a warning names does not work."
    )


class ConfigOptions(_Command):
    """``rktlet config``."""

    name = "config"
    longdesc = (
        "Print the effective configuration (the defaults, then the --config file, then the flags) as TOML: a "
        "file --config accepts."
    )


class RktletOptions(tap.Options):
    """The ``rktlet`` command line: the daemon's options and the commands."""

    longdesc = (
        "rktlet: a Kubernetes CRI v1 runtime (pods of apps on runc, conmon and CNI). Without a command it runs "
        "the daemon in the foreground, logging to stdout (as twistd -n rktlet does)."
    )
    subCommands = [
        ["check", None, CheckOptions, "check what the daemon needs, one line per check"],
        ["config", None, ConfigOptions, "print the effective configuration as TOML"],
    ]

    def getSynopsis(self) -> str:
        return "Usage: rktlet [options]\n       rktlet check [options]\n       rktlet config [options]"

    def getUsage(self, width: int | None = None) -> str:
        # A blank line between the description and the commands.
        return super().getUsage(width).replace("\nCommands:\n", "\n\nCommands:\n")


def main(argv: list[str] | None = None) -> None:
    """Run the command with *argv* (default: the process arguments)."""
    args = sys.argv[1:] if argv is None else list(argv)
    options = RktletOptions()
    try:
        options.parseOptions(args)
    except usage.UsageError as e:
        sub = getattr(options, "subOptions", None)
        command = f"rktlet {sub.name}" if sub is not None else "rktlet"
        sys.stderr.write(f"{command}: {e}\nTry '{command} --help'.\n")
        raise SystemExit(2) from None
    if options.subCommand == "check":
        report = preflight.run_checks(options.subOptions.config)
        print("\n".join(report.lines()))
        raise SystemExit(report.exit_status)
    if options.subCommand == "config":
        sys.stdout.write(config_module.dump_toml(options.subOptions.config))
        return
    _run_daemon(args)


def _run_daemon(args: list[str]) -> None:
    from twisted.scripts.twistd import run

    sys.argv = ["rktlet", "--nodaemon", "--pidfile=", "rktlet", *args]
    run()


if __name__ == "__main__":
    main()
