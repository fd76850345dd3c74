"""Packaging: the wheel, the sdist, the editable install and the Debian
package, built from a copy of this tree and installed where nothing of the
machine is touched (fresh virtualenvs; the .deb into a throwaway root).

Builds are offline: Python packages come from the wheelhouse tests/run
fills ($RKTLET_WHEELHOUSE, default $RKTLET_TOOLS_CACHE/wheelhouse), through
pip's PIP_NO_INDEX / PIP_FIND_LINKS."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
#: What a source copy leaves out: checkouts' and builds' leftovers.
EXCLUDED = {".git", ".venv", "build", "dist", "__pycache__", ".pytest_cache"}


def wheelhouse_dir() -> Path:
    explicit = os.environ.get("RKTLET_WHEELHOUSE")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("RKTLET_TOOLS_CACHE", "/var/cache/rktlet-test-tools")) / "wheelhouse"


@pytest.fixture(scope="session")
def wheelhouse() -> Path:
    path = wheelhouse_dir()
    if not any(path.glob("setuptools-*.whl")):
        pytest.skip(f"no wheelhouse at {path} (tests/run fills it; or set RKTLET_WHEELHOUSE)")
    return path


def offline_env(wheelhouse: Path, path: str | None = None, **extra: str) -> dict[str, str]:
    """The environment for pip and builds: packages from *wheelhouse* only,
    no proxies; PATH as given (default: this one)."""
    env = {k: v for k, v in os.environ.items()
           if not k.upper().endswith("_PROXY") and not k.startswith(("PIP_", "PYTHON", "RKTLET_REQUIRE"))}
    env.update(PIP_NO_INDEX="1", PIP_FIND_LINKS=str(wheelhouse), PIP_DISABLE_PIP_VERSION_CHECK="1",
               PIP_NO_CACHE_DIR="1", PATH=path if path is not None else os.environ.get("PATH", ""))
    env.update(extra)
    return env


def run(argv: list[str], env: dict[str, str], cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run *argv*; on failure (with *check*), fail showing its output."""
    result = subprocess.run([str(a) for a in argv], env=env, cwd=cwd, capture_output=True, text=True)
    if check and result.returncode != 0:
        pytest.fail(f"{argv} exited {result.returncode}:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def copy_source(dest: Path) -> Path:
    """This tree without checkout and build leftovers (builds write into
    their source directory; this one is left alone)."""

    def ignore(directory: str, names: list[str]) -> set[str]:
        left_out = {n for n in names if n in EXCLUDED or n.endswith(".egg-info")}
        if Path(directory) == REPO / "rktlet" / "oci" / "exec":
            left_out.add("rktlet-exec-reaper")
        return left_out

    shutil.copytree(REPO, dest, ignore=ignore, symlinks=True)
    return dest


def make_venv(path: Path) -> Path:
    """A fresh virtualenv (with pip) on this machine's Python."""
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(path)], check=True)
    return path


@pytest.fixture(scope="session")
def source_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_source(tmp_path_factory.mktemp("source") / "rktlet")


@pytest.fixture(scope="session")
def built_wheel(source_copy: Path, wheelhouse: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip wheel .``: the wheel a user builds."""
    out = tmp_path_factory.mktemp("wheel")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", out, source_copy], offline_env(wheelhouse))
    (wheel,) = out.glob("rktlet-*.whl")
    return wheel


@pytest.fixture(scope="session")
def built_sdist(source_copy: Path, wheelhouse: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist, made by setuptools' PEP 517 hook, as ``python -m build
    --sdist`` does."""
    out = tmp_path_factory.mktemp("sdist")
    run([sys.executable, "-c", f"from setuptools import build_meta; build_meta.build_sdist({str(out)!r})"],
        offline_env(wheelhouse), cwd=source_copy)
    (sdist,) = out.glob("rktlet-*.tar.gz")
    return sdist


def sdist_names(sdist: Path) -> list[str]:
    with tarfile.open(sdist) as tar:
        return tar.getnames()


@pytest.fixture
def venv(tmp_path: Path) -> Iterator[Path]:
    yield make_venv(tmp_path / "venv")
