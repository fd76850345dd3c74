"""Preflight: what the daemon needs before it starts, checked in one place.

``rktlet check`` prints one line per check (:func:`run_checks`); the daemon
runs the same checks at start and refuses, with the same lines, when one
fails (:mod:`rktlet.tap`). Every check is quick (the whole run takes a small
fraction of a second): it runs at every start.
"""

from rktlet.preflight.host import Host, ProgramOutput
from rktlet.preflight.model import Outcome, PreflightFailed, Report, Result
from rktlet.preflight.runner import CHECKS, GATES, run_checks, version_lines, version_text

__all__ = ["CHECKS", "GATES", "Host", "Outcome", "PreflightFailed", "ProgramOutput", "Report", "Result", "run_checks",
           "version_lines", "version_text"]
