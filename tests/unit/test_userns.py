"""User namespaces without root: the CRI validation of modes and mappings,
what the records keep and report, the runtime's features, the spec, and
the pod engine over the fakes (what it asks of the host)."""

from __future__ import annotations

import json
import os
import stat

import pytest

from rktlet.cri import container_convert, sandbox_convert
from rktlet.cri.proto import pb
from rktlet.errors import InvalidArgument
from rktlet.oci.container_config import ContainerConfig, Mount, PodContext, ResolvedUser
from rktlet.oci.runtime import RuntimeFeatures
from rktlet.oci.spec import build_spec
from rktlet.oci.userns import IDMapping, UserNamespace, check_mappings
from rktlet.pod.sandbox import Sandbox
from rktlet.oci.container_config import ImageDefaults
from tests.unit.pod_world import PodWorld, done, pod_spec

WHERE = "config.linux.security_context.namespace_options.userns_options"
KUBELET = IDMapping(0, 65536 * 3, 65536)  # what the kubelet allocates: a multiple of 65536, 65536 long
USERNS = UserNamespace((KUBELET,), (KUBELET,))


def request(mode: int = pb.POD, uids=(KUBELET,), gids=(KUBELET,), **ns) -> pb.RunPodSandboxRequest:
    config = pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(name="p", uid="u", namespace="n"))
    options = config.linux.security_context.namespace_options
    for field, value in ns.items():
        setattr(options, field, value)
    options.userns_options.mode = mode
    for target, items in ((options.userns_options.uids, uids), (options.userns_options.gids, gids)):
        target.extend(pb.IDMapping(container_id=m.container_id, host_id=m.host_id, length=m.length) for m in items)
    return pb.RunPodSandboxRequest(config=config)


# -- mappings ------------------------------------------------------------------------

def test_a_mapping_maps_its_range_only():
    assert (KUBELET.to_host(0), KUBELET.to_host(65535), KUBELET.to_host(65536)) == (196608, 262143, None)
    assert KUBELET.line() == "0 196608 65536\n"
    assert KUBELET.to_oci() == {"containerID": 0, "hostID": 196608, "size": 65536}
    assert (USERNS.root_uid, USERNS.root_gid) == (196608, 196608)
    assert UserNamespace.from_json(json.loads(json.dumps(USERNS.to_json()))) == USERNS


@pytest.mark.parametrize("uids, gids, words", [
    ((), (KUBELET,), f"{WHERE}.uids: exactly one mapping is supported, got 0"),
    ((KUBELET, IDMapping(0, 2000, 10)), (KUBELET,), f"{WHERE}.uids: exactly one mapping is supported, got 2"),
    ((IDMapping(1, 1000, 100000),), (KUBELET,), f"{WHERE}.uids[0]: container id 0 (root) must be mapped"),
    ((KUBELET,), (IDMapping(0, 1000, 0),), f"{WHERE}.gids[0].length: 0 must be at least 1"),
    ((IDMapping(0, 2**32 - 100, 200),), (KUBELET,), f"{WHERE}.uids[0].host_id: 4294967196+200 goes past"),
])
def test_bad_mappings_are_refused_naming_the_field(uids, gids, words):
    with pytest.raises(InvalidArgument) as e:
        check_mappings(uids, gids, WHERE)
    assert words in str(e.value)


# -- RunPodSandbox requests -----------------------------------------------------------

def test_mode_pod_gives_the_spec_a_user_namespace():
    spec = sandbox_convert.sandbox_spec(request())
    assert spec.userns == USERNS


def test_mode_node_or_unset_is_the_hosts():
    assert sandbox_convert.sandbox_spec(request(pb.NODE, (), ())).userns is None
    plain = request()
    plain.config.linux.security_context.namespace_options.ClearField("userns_options")
    assert sandbox_convert.sandbox_spec(plain).userns is None


@pytest.mark.parametrize("req, words", [
    (request(pb.CONTAINER, (), ()), f"{WHERE}.mode: CONTAINER is not supported"),
    (request(pb.TARGET, (), ()), f"{WHERE}.mode: TARGET is not supported"),
    (request(pb.NODE), f"{WHERE}: mode NODE (the host's user namespace) takes no uid or gid mappings"),
    (request(pb.POD, (KUBELET, IDMapping(0, 2000, 100000))), "exactly one mapping is supported, got 2"),
    (request(pb.POD, (IDMapping(1, 1000, 100000),), (IDMapping(1, 1000, 100000),)), "container id 0 (root) must be mapped"),
    (request(network=pb.NODE), "a pod with its own user namespace cannot share the host's network namespace"),
    (request(pid=pb.NODE, ipc=pb.NODE), "cannot share the host's pid, ipc namespace"),
])
def test_refused_requests(req, words):
    with pytest.raises(InvalidArgument) as e:
        sandbox_convert.sandbox_spec(req)
    assert words in str(e.value)


def test_the_status_reports_the_mappings():
    sb = Sandbox(id="x" * 64, name="p", namespace="n", uid="u", attempt=0, fingerprint="f", created_at=1,
                 handler="runc", userns=USERNS.to_json())
    options = sandbox_convert.sandbox_status(sb).linux.namespaces.options.userns_options
    assert options.mode == pb.POD and [(m.container_id, m.host_id, m.length) for m in options.uids] == [(0, 196608, 65536)]
    sb.userns = {}
    assert not sandbox_convert.sandbox_status(sb).linux.namespaces.options.HasField("userns_options")


# -- CreateContainer requests -----------------------------------------------------------

def container_request(**mount_fields) -> pb.CreateContainerRequest:
    config = pb.ContainerConfig(metadata=pb.ContainerMetadata(name="c"), image=pb.ImageSpec(image="i"))
    config.mounts.add(container_path="/vol", host_path="/srv", **mount_fields)
    config.linux.security_context.namespace_options.userns_options.CopyFrom(request().config.linux.security_context
                                                                            .namespace_options.userns_options)
    return pb.CreateContainerRequest(pod_sandbox_id="p", config=config)


def test_container_mounts_carry_their_mappings():
    m = pb.IDMapping(container_id=0, host_id=196608, length=65536)
    config, _ = container_convert.container_config(container_request(uidMappings=[m], gidMappings=[m]))
    assert config.mounts[0].uid_mappings == (KUBELET,) and config.mounts[0].gid_mappings == (KUBELET,)
    assert config.userns_mode == "pod"
    with pytest.raises(InvalidArgument, match=r"config.mounts\[0\]: an idmapped mount needs both"):
        container_convert.container_config(container_request(uidMappings=[m]))
    bad = pb.IDMapping(container_id=0, host_id=1, length=0)
    with pytest.raises(InvalidArgument, match=r"config.mounts\[0\].uidMappings\[0\]"):
        container_convert.container_config(container_request(uidMappings=[bad], gidMappings=[m]))


# -- runc features -------------------------------------------------------------------------

def test_user_namespaces_need_the_idmap_mount_extension():
    new = {"mountOptions": ["rro"], "linux": {"namespaces": ["user", "net"], "mountExtensions": {"idmap": {"enabled": True}}}}
    old = {"mountOptions": ["rro"], "linux": {"namespaces": ["user", "net"]}}  # runc 1.1.5
    assert RuntimeFeatures.from_json(new).user_namespaces and RuntimeFeatures.from_json(new).idmap_mounts
    assert not RuntimeFeatures.from_json(old).user_namespaces
    assert not RuntimeFeatures.from_json(None).user_namespaces
    assert not RuntimeFeatures.from_json({"linux": {"mountExtensions": {"idmap": {"enabled": "yes"}}}}).idmap_mounts


def test_kernel_versions():
    from rktlet.oci.userns import IDMAPPED_LAYERS_KERNEL, kernel_version

    assert kernel_version("6.18.44-fc-v1147") == (6, 18) and kernel_version("5.4.0-150-generic") == (5, 4)
    assert kernel_version("5.19rc1") == (5, 19) >= IDMAPPED_LAYERS_KERNEL and kernel_version("junk") == (0, 0)


# -- the OCI spec -----------------------------------------------------------------------------

def test_the_spec_joins_the_pods_user_namespace_first(tmp_path):
    pod = PodContext(namespaces={"user": "/run/p/ns/user", "net": "/run/p/ns/net", "ipc": "/run/p/ns/ipc",
                                 "uts": "/run/p/ns/uts"},
                     host=frozenset(), pid_mode="container", infra_pid=0, hostname="h", files={}, shm="",
                     cgroup_parent="/rktlet/p", userns=USERNS)
    mount = Mount("/vol", str(tmp_path), uid_mappings=(KUBELET,), gid_mappings=(KUBELET,))
    spec, _ = build_spec("c1", ContainerConfig(name="c", command=("true",), mounts=(mount,)), ImageDefaults(), pod,
                         "/rootfs", ResolvedUser(0, 0, ()), 0)
    kinds = spec["linux"]["namespaces"]
    assert kinds[0] == {"type": "user", "path": "/run/p/ns/user"}
    assert {"type": "network", "path": "/run/p/ns/net"} in kinds and {"type": "pid"} in kinds
    assert "uidMappings" not in spec["linux"]  # runc reads them from the namespace it joins
    vol = [m for m in spec["mounts"] if m["destination"] == "/vol"][0]
    assert vol["uidMappings"] == vol["gidMappings"] == [{"containerID": 0, "hostID": 196608, "size": 65536}]


# -- the engine over the fakes ------------------------------------------------------------

@pytest.fixture
def world(tmp_path):
    w = PodWorld(str(tmp_path)).start()
    supported = RuntimeFeatures(recursive_read_only_mounts=True, idmap_mounts=True, user_namespaces=True)

    async def features(handler: str) -> RuntimeFeatures:
        return w.runtime.features

    w.runtime.supported = supported
    done(w.runtime.probe_features())
    w.sandboxes.runtime_features = features
    return w


def test_a_pod_gets_its_user_namespace_and_its_containers_idmapped_roots(world):
    sb = world.run_pod(pod_spec(userns=USERNS))
    assert list(sb.namespaces) == ["user", "net", "uts", "ipc"]
    assert world.host.user_namespaces == {sb.namespaces["user"]: USERNS}
    assert "uid=196608,gid=196608" in world.host.mounts[sb.shm].options
    assert {world.host.owners[os.path.join(sb.dir, n)] for n in ("hosts", "resolv.conf", "hostname")} == {(196608, 196608)}
    assert world.stored(world.pod_record(sb.id))["userns"] == USERNS.to_json()
    c = world.create(sb, config=ContainerConfig(name="app", userns_mode="pod"))
    rootfs = world.host.mounts[os.path.join(c.bundle, "rootfs")]
    assert f"idmap={sb.namespaces['user']}" in rootfs.options
    assert world.host.owners[os.path.join(c.layer_dir, "upper")] == (196608, 196608)
    assert stat.S_IMODE(os.stat(c.bundle).st_mode) == 0o711  # traversed by the pod's root (runc init)
    with open(os.path.join(c.bundle, "config.json")) as f:
        assert json.load(f)["linux"]["namespaces"][0] == {"type": "user", "path": sb.namespaces["user"]}
    world.restarted()
    assert stat.S_IMODE(os.stat(c.bundle).st_mode) == 0o711  # kept so across a restart
    done(world.sandboxes.remove(sb.id, world.containers))
    assert sb.namespaces["user"] not in world.host.pinned


def test_a_handler_without_user_namespaces_is_refused(world):
    world.runtime.supported = RuntimeFeatures(recursive_read_only_mounts=True)
    done(world.runtime.probe_features())
    with pytest.raises(InvalidArgument, match="runtime handler 'runc' does not support user namespaces"):
        world.run_pod(pod_spec(userns=USERNS))
    assert world.host.pinned == set() and world.sandboxes.list() == []


def test_containers_join_their_pods_user_namespace_only(world):
    plain, own = world.run_pod(pod_spec("plain")), world.run_pod(pod_spec("own", userns=USERNS))
    with pytest.raises(InvalidArgument, match="has no user namespace of its own"):
        world.create(plain, config=ContainerConfig(name="a", userns_mode="pod"))
    with pytest.raises(InvalidArgument, match="has a user namespace of its own"):
        world.create(own, config=ContainerConfig(name="b", userns_mode="node"))
    world.runtime.supported = RuntimeFeatures()
    done(world.runtime.probe_features())
    mount = Mount("/vol", world.base, uid_mappings=(KUBELET,), gid_mappings=(KUBELET,))
    with pytest.raises(InvalidArgument, match="idmapped mounts .* are not supported by runtime handler 'runc'"):
        world.create(own, config=ContainerConfig(name="c", mounts=(mount,)))
