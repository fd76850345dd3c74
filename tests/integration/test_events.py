"""GetContainerEvents and the Stream* list RPCs against a real daemon."""

from __future__ import annotations

import queue
import threading
import time

from rktlet.cri.proto import pb
from harness.containers import container_config, create, start, wait_exited
from harness.pods import pod_config, run_pod


def subscribe(daemon):
    """Collect events on a thread; returns (queue, call) — cancel the call to stop."""
    call = daemon.runtime().GetContainerEvents(pb.GetEventsRequest())
    events: queue.Queue = queue.Queue()

    def read():
        try:
            for event in call:
                events.put(event)
        except Exception:
            pass

    threading.Thread(target=read, daemon=True).start()
    return events, call


def take(events, n, timeout=20):
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        out.append(events.get(timeout=max(0.1, deadline - time.monotonic())))
    return out


def test_events_arrive_in_order_for_two_subscribers(daemon, test_network, pushed_images, tmp_path):
    image = pushed_images["busybox"].ref
    daemon.images().PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=image)), timeout=60)
    pod_cfg = pod_config(log_directory=str(tmp_path))
    pod_id = run_pod(daemon, pod_cfg)
    first, call1 = subscribe(daemon)
    second, call2 = subscribe(daemon)
    time.sleep(0.5)  # the subscriptions are registered
    try:
        cid = create(daemon, pod_id, pod_cfg, container_config("short", image, command=["sh", "-c", "sleep 0.3"]))
        start(daemon, cid)
        wait_exited(daemon, cid)
        daemon.runtime().RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=30)
        for events in (first, second):
            got = take(events, 4)
            assert [e.container_event_type for e in got] == [
                pb.CONTAINER_CREATED_EVENT, pb.CONTAINER_STARTED_EVENT, pb.CONTAINER_STOPPED_EVENT, pb.CONTAINER_DELETED_EVENT,
            ]
            assert {e.container_id for e in got} == {cid}
            assert got[0].pod_sandbox_status.id == pod_id
            assert got[1].containers_statuses[0].state == pb.CONTAINER_RUNNING
            assert got[2].containers_statuses[0].state == pb.CONTAINER_EXITED
            assert [e.created_at for e in got] == sorted(e.created_at for e in got)
    finally:
        call1.cancel()
        call2.cancel()


def test_stream_list_rpcs_match_their_unary_twins(daemon, test_network, pushed_images, tmp_path):
    image = pushed_images["busybox"].ref
    daemon.images().PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=image)), timeout=60)
    pod_cfg = pod_config(log_directory=str(tmp_path))
    pod_id = run_pod(daemon, pod_cfg)
    create(daemon, pod_id, pod_cfg, container_config("idle", image, command=["sleep", "30"]))
    runtime, images = daemon.runtime(), daemon.images()
    streamed = [p for page in runtime.StreamPodSandboxes(pb.StreamPodSandboxesRequest(), timeout=10) for p in page.pod_sandboxes]
    assert streamed == list(runtime.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=10).items)
    streamed = [c for page in runtime.StreamContainers(pb.StreamContainersRequest(), timeout=10) for c in page.containers]
    assert streamed == list(runtime.ListContainers(pb.ListContainersRequest(), timeout=10).containers)
    streamed = [i for page in images.StreamImages(pb.StreamImagesRequest(), timeout=10) for i in page.images]
    assert streamed == list(images.ListImages(pb.ListImagesRequest(), timeout=10).images)
