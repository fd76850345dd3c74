"""What the wire-contract generators share (``rktlet.cri.api.generate``,
``rktlet.nri.api.generate``): their command line."""

from __future__ import annotations

import argparse
import pathlib
from typing import Callable


def main(generate: Callable[[pathlib.Path], list[pathlib.Path]], doc: str, default_output: pathlib.Path,
         argv: list[str] | None = None) -> int:
    """``--output DIR`` (default *default_output*): generate there and print
    the paths written."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--output", type=pathlib.Path, default=default_output)
    args = parser.parse_args(argv)
    for path in generate(args.output):
        print(path)
    return 0
