"""Fixtures of the pod engine's unit tests (``test_pod_*.py``)."""

from __future__ import annotations

import pytest

from tests.unit.pod_world import PodWorld


@pytest.fixture
def world(tmp_path) -> PodWorld:
    """The managers on in-memory drivers, started (see ``pod_world.py``)."""
    return PodWorld(str(tmp_path)).start()


@pytest.fixture
def pod(world):
    """A READY pod of :func:`world`."""
    return world.run_pod()
