"""The ``oci`` fixture: the runtime and monitor world of a variant (see
``oci_world.py``), torn down after the test."""

from __future__ import annotations

import pytest_twisted

from tests.contract.oci_world import make_world
from tests.contract.variants import VARIANTS


@pytest_twisted.async_yield_fixture(params=VARIANTS)
async def oci(request, tmp_path):
    world = make_world(request.param, tmp_path)
    try:
        yield world
    finally:
        await world.teardown()
