"""The ``oci`` fixture: the runtime and monitor world of a variant (see
``oci_world.py``), torn down after the test."""

from __future__ import annotations

import pytest
import pytest_twisted

from tests.contract.oci_world import make_world
from tests.contract.variants import VARIANTS, require_real


@pytest.fixture(params=VARIANTS)
def oci_variant(request) -> str:
    """The variant; the real one skipped without root, runc or conmon (here:
    a skip inside an async fixture upsets pytest-twisted)."""
    if request.param == "real":
        require_real("runc", "conmon")
    return request.param


@pytest_twisted.async_yield_fixture
async def oci(oci_variant, tmp_path):
    world = make_world(oci_variant, tmp_path)
    try:
        yield world
    finally:
        await world.teardown()
