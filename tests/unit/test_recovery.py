"""The start-up recovery rules that need no root (rktlet.pod.recovery)."""

from __future__ import annotations

import pytest

from rktlet.pod import recovery

ID_A, ID_B, ID_C = "a" * 64, "b" * 64, "c" * 64


@pytest.mark.parametrize("status, conmon_alive, whole, outcome", [
    ("running", True, True, recovery.ADOPT),
    ("paused", True, True, recovery.ADOPT),
    ("running", False, True, recovery.EXITED),  # nothing could report its exit
    ("stopped", False, True, recovery.EXITED),
    ("stopped", True, False, recovery.EXITED),
    ("created", True, True, recovery.UNDO_START),
    ("creating", False, True, recovery.UNDO_START),
    (None, False, True, recovery.KEEP),
    (None, True, True, recovery.KEEP),  # a conmon cut short before runc create: killed all the same
    (None, False, False, recovery.LOST),
])
def test_what_becomes_of_a_created_record(status, conmon_alive, whole, outcome):
    assert recovery.created_outcome(status, conmon_alive, whole) == outcome


def test_orphans_are_ids_with_files_but_no_record(tmp_path):
    bundles, layers, exits = tmp_path / "run", tmp_path / "root", tmp_path / "exits"
    for d in (bundles, layers, exits):
        d.mkdir()
    (bundles / ID_A).mkdir()  # a create cut short: bundle and layer, no record
    (layers / ID_A).mkdir()
    (layers / f"{ID_B}.json").write_text("{}")  # a record file is not a layer
    (layers / ID_B).mkdir()  # B has a record
    (exits / ID_C).write_text("0")  # an exit file only
    (bundles / "not-an-id").mkdir()  # never touched
    (bundles / ("d" * 63)).mkdir()
    places = [str(bundles), str(layers), str(exits), str(tmp_path / "absent")]
    assert recovery.orphan_ids(places, {ID_B}) == {ID_A, ID_C}


def test_a_bundle_is_not_whole_without_its_root_mounted_or_its_spec(tmp_path):
    bundle = tmp_path / "bundle"
    (bundle / "rootfs").mkdir(parents=True)
    (bundle / "config.json").write_text("{}")
    assert not recovery.bundle_whole(str(bundle))  # rootfs is no mount point
    assert not recovery.bundle_whole(str(tmp_path / "gone"))


@pytest.mark.parametrize("text, ns", [
    ("2026-12-03T16:17:15.123456789Z", 1796314635123456789),
    ("2026-12-03T16:17:15Z", 1796314635000000000),
    ("2026-12-03T17:17:15.5+01:00", 1796314635500000000),
])
def test_runc_created_time(text, ns):
    assert recovery.runc_created_ns({"created": text}) == ns


@pytest.mark.parametrize("state", [{}, {"created": 5}, {"created": "yesterday"}, {"created": "2026-13-40T00:00:00Z"}])
def test_unreadable_runc_created_time_is_none(state):
    assert recovery.runc_created_ns(state) is None
