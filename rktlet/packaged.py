"""Files shipped in ``packaging/`` that the daemon reads at run time (the
default CNI network). Installed, they live in the ``rktlet.packaging``
package; in a checkout, beside the ``rktlet`` directory."""

from __future__ import annotations

import importlib.resources
import pathlib

_CHECKOUT = pathlib.Path(__file__).resolve().parent.parent / "packaging"


def read_text(relative: str) -> str:
    """The content of ``packaging/<relative>``."""
    in_checkout = _CHECKOUT / relative
    if in_checkout.is_file():
        return in_checkout.read_text()
    return importlib.resources.files("rktlet.packaging").joinpath(relative).read_text()
