"""Start-up recovery (the rules of rktlet.pod.recovery) on in-memory
drivers: a world "crashes" at a step (its state is built as the crash
would leave it), a new one is made over the same records, host, runtime
and monitor files, and the outcome is checked. No root, no processes."""

from __future__ import annotations

import os


from rktlet.pod.container import CREATED, EXITED, RUNNING
from tests.unit.pod_world import PodWorld, done


def down(world: PodWorld) -> None:
    """The daemon dies: nobody watches the monitors any more."""
    world.containers.stop_watching()


def started_in_runtime(world: PodWorld, c) -> None:
    """StartContainer cut short after ``runc start``: the record still says CREATED."""
    done(world.monitors.create(c.id, c.bundle, c.log_path))
    done(world.runtime.start(c.id))


# -- rule 4: RUNNING records ------------------------------------------------------------

def test_a_running_container_is_adopted_and_its_end_still_seen(world, pod):
    c = world.started(pod)
    again = world.restarted()
    adopted = again.containers.get(c.id)
    assert adopted.state == RUNNING
    again.runtime.exit(c.id, 4)
    assert (adopted.state, adopted.exit_code) == (EXITED, 4)


def test_an_exit_while_down_is_read_from_the_exit_file(world, pod):
    c = world.started(pod)
    down(world)
    world.clock.advance(7)
    world.runtime.exit(c.id, 9)
    again = PodWorld(world.base, previous=world).start()
    record = again.containers.get(c.id)
    assert (record.state, record.exit_code, record.reason) == (EXITED, 9, "Error")
    assert record.finished_at == int(world.clock.seconds() * 1e9)
    assert c.id not in again.runtime.containers  # released from the runtime at once


def test_a_monitor_gone_without_an_exit_file_is_exit_255(world, pod):
    c = world.started(pod)
    down(world)
    world.monitors.files.live.pop(c.id)  # conmon killed, no exit file
    again = PodWorld(world.base, previous=world).start()
    record = again.containers.get(c.id)
    assert (record.state, record.exit_code) == (EXITED, 255)
    assert "conmon vanished" in record.message


# -- rule 5: CREATED records ----------------------------------------------------------------

def test_created_and_started_in_the_runtime_is_running_and_adopted(world, pod):
    c = world.create(pod)
    started_in_runtime(world, c)
    again = world.restarted()
    record = again.containers.get(c.id)
    assert record.state == RUNNING and record.conmon_pid == again.monitors.files.live[c.id]
    assert again.stored(again.container_record(c.id))["state"] == RUNNING
    again.runtime.exit(c.id, 0)
    assert (record.state, record.reason) == (EXITED, "Completed")


def test_created_and_started_without_its_monitor_is_killed_and_exited(world, pod):
    c = world.create(pod)
    started_in_runtime(world, c)
    world.monitors.files.live.pop(c.id)  # conmon gone: nothing could report the end
    again = world.restarted()
    record = again.containers.get(c.id)
    assert (record.state, record.exit_code) == (EXITED, 255)
    assert c.id not in again.runtime.containers


def test_created_in_the_runtime_but_not_started_is_undone_and_startable(world, pod):
    c = world.create(pod)
    done(world.monitors.create(c.id, c.bundle, c.log_path))  # cut short before runc start
    again = world.restarted()
    record = again.containers.get(c.id)
    assert record.state == CREATED
    assert c.id not in again.runtime.containers and c.id not in again.monitors.files.live
    done(again.containers.start(c.id))
    assert record.state == RUNNING


def test_started_and_ended_in_the_runtime_gets_the_exit_code(world, pod):
    c = world.create(pod)
    started_in_runtime(world, c)
    world.runtime.exit(c.id, 3)
    again = world.restarted()
    record = again.containers.get(c.id)
    assert (record.state, record.exit_code) == (EXITED, 3)


def test_created_with_a_whole_bundle_stays_created(world, pod):
    c = world.create(pod)
    again = world.restarted()
    assert again.containers.get(c.id).state == CREATED
    done(again.containers.start(c.id))


def test_created_whose_bundle_was_lost_is_exited(world, pod):
    c = world.create(pod)
    world.host.unmount(os.path.join(c.bundle, "rootfs"))  # a reboot
    again = world.restarted()
    record = again.containers.get(c.id)
    assert (record.state, record.exit_code) == (EXITED, 255) and "bundle was lost" in record.message


# -- rule 7: parts without a record -------------------------------------------------------------

def test_a_bundle_without_a_record_is_removed(world, pod):
    c = world.create(pod)
    os.unlink(world.container_record(c.id))  # CreateContainer cut short before its record
    again = world.restarted()
    assert again.containers.find(c.id) is None
    assert not os.path.exists(c.bundle) and not os.path.exists(c.layer_dir)
    assert os.path.join(c.bundle, "rootfs") not in again.host.mounts


def test_a_removed_container_whose_files_stayed_is_cleaned_up(world, pod):
    c = world.started(pod)
    done(world.containers.stop(c.id, 0))
    world.clock.advance(0)
    world.threads.hold()  # the files are removed after the answer: the crash comes first
    done(world.containers.remove(c.id))
    world.threads.held.clear()  # the files' removal: never done
    assert os.path.exists(c.bundle)
    world.threads.release()
    again = world.restarted()
    assert not os.path.exists(c.bundle) and os.path.join(c.bundle, "rootfs") not in again.host.mounts


def test_a_runtime_container_without_a_record_is_deleted_with_its_monitor(world, pod):
    c = world.started(pod)
    down(world)
    os.unlink(world.container_record(c.id))
    again = PodWorld(world.base, previous=world).start()
    assert again.containers.find(c.id) is None
    assert c.id not in again.runtime.containers and c.id not in again.monitors.files.live
    assert not os.path.exists(c.bundle)
