"""Build steps pyproject.toml cannot declare: the compiled exec reaper.

The metadata lives in pyproject.toml. This file adds one build step,
``build_reaper``, which compiles ``rktlet/oci/reaper.c`` into the package as
``rktlet/oci/exec/rktlet-exec-reaper`` (the program ExecSync runs around
``runc exec``; :mod:`rktlet.oci.exec.reaper` looks for it there first), and
tags the wheel for the platform (``py3-none-linux_x86_64``), since it carries
that program.

Without a C compiler the build goes on and the daemon falls back to the
Python reaper, logging a warning at start-up (slower ExecSync, same
behaviour); with ``RKTLET_REQUIRE_REAPER=1`` in the environment (the .deb
build, tests/run) the build fails instead.

Editable installs (``pip install -e .``) compile the reaper into the source
tree and are made in setuptools' ``strict`` mode: a link tree that holds
``twisted/plugins/rktlet_plugin.py`` as a file on ``sys.path``, which is how
Twisted finds plugins (setuptools' default ``lenient`` mode puts only an
import hook on the path, which Twisted's plugin scan cannot see).
"""

from __future__ import annotations

import os

from setuptools import Command, Distribution, setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build import build

SOURCE = os.path.join("rktlet", "oci", "reaper.c")
#: Where the program goes, relative to the package root (build_lib or, for
#: an editable install, the source tree).
TARGET = os.path.join("rktlet", "oci", "exec", "rktlet-exec-reaper")
REQUIRE_ENV = "RKTLET_REQUIRE_REAPER"


class build_reaper(Command):
    """Compile the exec reaper (rktlet/oci/reaper.c) into the package."""

    description = "compile rktlet/oci/reaper.c into the rktlet package"
    user_options: list[tuple[str, str | None, str]] = []
    #: set by setuptools for editable installs: build into the source tree.
    editable_mode = False

    def initialize_options(self) -> None:
        self.build_lib: str | None = None
        self.build_temp: str | None = None
        self.built: bool = False

    def finalize_options(self) -> None:
        self.set_undefined_options("build", ("build_lib", "build_lib"), ("build_temp", "build_temp"))

    def _target(self) -> str:
        return TARGET if self.editable_mode else os.path.join(self.build_lib, TARGET)

    def run(self) -> None:
        # distutils is setuptools' own copy here (setuptools is imported).
        from distutils.ccompiler import new_compiler
        from distutils.errors import CCompilerError, DistutilsExecError, DistutilsPlatformError
        from distutils.sysconfig import customize_compiler

        target = self._target()
        try:
            compiler = new_compiler()
            customize_compiler(compiler)  # CC, CFLAGS, LDFLAGS from the environment
            objects = compiler.compile([SOURCE], output_dir=self.build_temp, extra_postargs=["-O2", "-Wall"])
            os.makedirs(os.path.dirname(target), exist_ok=True)
            compiler.link_executable(objects, os.path.basename(target), output_dir=os.path.dirname(target))
        except (CCompilerError, DistutilsExecError, DistutilsPlatformError, OSError) as e:
            if os.environ.get(REQUIRE_ENV) == "1":
                raise SystemExit(f"rktlet: cannot compile {SOURCE} ({REQUIRE_ENV}=1): {e}") from None
            self.warn(
                f"cannot compile {SOURCE} ({e}): no compiled exec reaper; rktlet will use its Python "
                f"reaper (slower ExecSync) and say so in its log. Install a C compiler and reinstall "
                f"to get it, or set {REQUIRE_ENV}=1 to make this an error."
            )
            return
        self.built = True

    def get_outputs(self) -> list[str]:
        return [os.path.join(self.build_lib, TARGET)] if self.built else []

    def get_output_mapping(self) -> dict[str, str]:
        # Editable: the program is built in the source tree; the link tree
        # links it from there.
        if self.built and self.editable_mode:
            return {os.path.join(self.build_lib, TARGET): os.path.abspath(TARGET)}
        return {}

    def get_source_files(self) -> list[str]:
        return [SOURCE]  # so the sdist carries it


class build_with_reaper(build):
    sub_commands = build.sub_commands + [("build_reaper", None)]


class platform_distribution(Distribution):
    """The wheel carries a program built for this platform: it is never
    pure (everything goes to platlib), even when the compiler was missing."""

    def has_ext_modules(self) -> bool:
        return True


class platform_wheel(bdist_wheel):
    """Tagged ``py3-none-<platform>``: the reaper is a program for one
    platform, callable from any Python 3."""

    def get_tag(self) -> tuple[str, str, str]:
        _, _, platform = super().get_tag()
        return "py3", "none", platform


setup(
    distclass=platform_distribution,
    cmdclass={"build": build_with_reaper, "build_reaper": build_reaper, "bdist_wheel": platform_wheel},
    options={"editable_wheel": {"mode": "strict"}},
)
