"""The CNI exec protocol (rktlet.network.cni) against fake plugins.

The fake plugins are small Python scripts written into a temp bin dir. Each
call appends one JSON line (its name, pid, environment and stdin) to a log
file; what a call does is steered by a ``fake`` key in its own plugin
configuration: ``{"fake": {"ADD": {"result": {...}}, "DEL": {"error": {...}},
...}}``.  They run as real processes under the real reactor.
"""

from __future__ import annotations

import json
import os
import sys
import time

import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.defer import CancelledError

from rktlet.errors import FailedPrecondition, InvalidArgument, RuntimeFailure
from rktlet.network.cni import CNI, Attachment, PortMapping, cni_args
from rktlet.network.cni_exec import result_ips

CID = "ab" * 32

FAKE_PLUGIN = """#!{python}
import json, os, sys, time
data = sys.stdin.read()
conf = json.loads(data) if data.strip() else {{}}
cmd = os.environ.get("CNI_COMMAND", "")
with open({log!r}, "a") as f:
    f.write(json.dumps({{"plugin": {name!r}, "pid": os.getpid(), "env": dict(os.environ), "conf": conf}}) + "\\n")
if cmd == "VERSION":
    print(json.dumps({{"cniVersion": "1.0.0", "supportedVersions": {versions!r}}}))
    sys.exit(0)
fake = (conf.get("fake") or {{}}).get(cmd) or {{}}
if "sleep" in fake:
    time.sleep(fake["sleep"])
if "stderr" in fake:
    sys.stderr.write(fake["stderr"])
if "error" in fake:
    print(json.dumps(fake["error"]))
if "exit" in fake or "error" in fake:
    sys.exit(fake.get("exit", 1))
if cmd == "ADD":
    print(json.dumps(fake.get("result") or conf.get("prevResult") or {{"cniVersion": conf["cniVersion"]}}))
"""

BRIDGE_RESULT = {
    "cniVersion": "1.0.0",
    "interfaces": [
        {"name": "cni0", "mac": "00:11:22:33:44:55"},
        {"name": "veth1", "mac": "00:11:22:33:44:66"},
        {"name": "eth0", "mac": "00:11:22:33:44:77", "sandbox": "/run/netns/x"},
    ],
    "ips": [
        {"address": "fd00::5/64", "interface": 2},
        {"address": "10.88.0.5/24", "interface": 2, "gateway": "10.88.0.1"},
        {"address": "10.88.0.1/24", "interface": 0},
    ],
}


class Fakes:
    """A temp bin dir of fake plugins, a conf dir, a cache dir and the log."""

    def __init__(self, base) -> None:
        self.base = base
        self.bin = base / "bin"
        self.conf = base / "net.d"
        self.cache = base / "cache"
        self.log = base / "calls.jsonl"
        for d in (self.bin, self.conf):
            d.mkdir()

    def plugin(self, name: str, versions=("0.3.1", "0.4.0", "1.0.0")) -> str:
        path = self.bin / name
        path.write_text(FAKE_PLUGIN.format(python=sys.executable, log=str(self.log), name=name, versions=list(versions)))
        path.chmod(0o755)
        return str(path)

    def network(self, plugins: list[dict], name: str = "testnet", version: str = "1.0.0", file: str = "10-test.conflist"):
        for old in self.conf.iterdir():
            old.unlink()
        (self.conf / file).write_text(json.dumps({"cniVersion": version, "name": name, "plugins": plugins}))

    def cni(self, timeout: float = 10.0) -> CNI:
        return CNI(reactor, str(self.conf), [str(self.bin), str(self.base / "nowhere")], str(self.cache), timeout=timeout)

    def calls(self, command: str | None = None) -> list[dict]:
        if not self.log.exists():
            return []
        calls = [json.loads(line) for line in self.log.read_text().splitlines()]
        return [c for c in calls if command is None or c["env"].get("CNI_COMMAND") == command]

    def order(self) -> list[tuple[str, str]]:
        return [(c["env"]["CNI_COMMAND"], c["plugin"]) for c in self.calls() if c["env"]["CNI_COMMAND"] != "VERSION"]


@pytest.fixture
def fakes(tmp_path):
    f = Fakes(tmp_path)
    for name in ("a", "b", "c"):
        f.plugin(name)
    return f


async def reaped(pid: int) -> bool:
    """Whether the process *pid* is gone (killed and reaped) within 5 s."""
    for _ in range(500):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        await task.deferLater(reactor, 0.01, lambda: None)
    return False


def attachment(**kw) -> Attachment:
    fields = dict(
        container_id=CID,
        netns="/run/netns/does-not-matter",
        pod_name="web-1",
        pod_namespace="default",
        pod_uid="0c6f0f5e-uid",
        port_mappings=(PortMapping(8080, 80), PortMapping(5353, 53, "udp", "127.0.0.1")),
        dns={"servers": ["10.0.0.10"], "searches": ["default.svc"], "options": ["ndots:5"]},
    )
    fields.update(kw)
    return Attachment(**fields)


CHAIN = [
    {"type": "a", "mark": "first", "fake": {"ADD": {"result": BRIDGE_RESULT}}},
    {"type": "b", "capabilities": {"portMappings": True, "bandwidth": True}},
    {"type": "c", "capabilities": {"dns": True}, "runtimeConfig": {"stale": 1}},
]


@pytest_twisted.ensureDeferred
async def test_add_chain_passes_prev_result_and_declared_capabilities(fakes):
    fakes.network(CHAIN)
    att = attachment()
    res = await fakes.cni().add(att)

    assert res.network_name == "testnet"
    assert res.ips == ("10.88.0.5", "fd00::5")  # IPv4 first; the bridge's gateway address is not the pod's
    assert res.result == BRIDGE_RESULT
    assert fakes.order() == [("ADD", "a"), ("ADD", "b"), ("ADD", "c")]
    a, b, c = (call["conf"] for call in fakes.calls("ADD"))
    for conf in (a, b, c):
        assert conf["name"] == "testnet" and conf["cniVersion"] == "1.0.0"
        assert "capabilities" not in conf
    assert "prevResult" not in a and "runtimeConfig" not in a
    assert a["mark"] == "first"
    assert b["prevResult"] == BRIDGE_RESULT and c["prevResult"] == BRIDGE_RESULT
    assert b["runtimeConfig"] == {
        "portMappings": [
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
            {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "127.0.0.1"},
        ]
    }
    assert c["runtimeConfig"] == {"dns": att.dns}  # not the config's own stale runtimeConfig

    cached = fakes.cni().cached(CID)
    assert cached["result"] == BRIDGE_RESULT
    assert cached["network"]["plugins"] == CHAIN
    assert cached["attachment"]["pod_name"] == "web-1"
    assert os.path.exists(fakes.cache / f"{CID}-eth0.json")


@pytest_twisted.ensureDeferred
async def test_environment_and_cni_args(fakes):
    fakes.network(CHAIN)
    await fakes.cni().add(attachment(ifname="net1"))
    env = fakes.calls("ADD")[0]["env"]
    assert env["CNI_COMMAND"] == "ADD"
    assert env["CNI_CONTAINERID"] == CID
    assert env["CNI_NETNS"] == "/run/netns/does-not-matter"
    assert env["CNI_IFNAME"] == "net1"
    assert env["CNI_PATH"] == f"{fakes.bin}:{fakes.base / 'nowhere'}"
    assert env["CNI_ARGS"] == (
        f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-1;K8S_POD_INFRA_CONTAINER_ID={CID};K8S_POD_UID=0c6f0f5e-uid"
    )
    assert env["PATH"]
    # Nothing else of the daemon's environment leaks into plugins (python
    # itself may add LC_CTYPE on some systems).
    assert set(env) - {"LC_CTYPE"} == {"CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH", "CNI_ARGS", "PATH"}
    assert cni_args(attachment()) == env["CNI_ARGS"]
    assert fakes.cni().cached(CID)["attachment"]["ifname"] == "net1"


@pytest_twisted.ensureDeferred
async def test_version_refusal_and_version_cache(fakes):
    fakes.plugin("old", versions=["0.3.0", "0.3.1"])
    fakes.network([{"type": "a"}, {"type": "old"}])
    cni = fakes.cni()
    with pytest.raises(RuntimeFailure) as e:
        await cni.add(attachment())
    assert str(e.value) == (
        f"CNI plugin old ({fakes.bin / 'old'}) does not support cniVersion 1.0.0 of network 'testnet'; "
        "it supports 0.3.0, 0.3.1"
    )
    assert fakes.order() == []  # refused before anything ran
    assert cni.cached(CID) is None

    # A 0.3.1 network works with the same plugins; VERSION is asked once per binary.
    fakes.network([{"type": "a"}, {"type": "old"}], version="0.3.1")
    await cni.add(attachment())
    await cni.add(attachment(container_id="cd" * 32))
    versions = [c["plugin"] for c in fakes.calls("VERSION")]
    assert sorted(versions) == ["a", "old"]
    assert fakes.calls("VERSION")[0]["conf"] == {"cniVersion": "1.0.0"}
    # A 0.3.x DEL gets no prevResult (it arrived with 0.4.0).
    await cni.delete(attachment())
    assert all("prevResult" not in c["conf"] for c in fakes.calls("DEL"))


@pytest_twisted.ensureDeferred
async def test_failure_mid_chain_rolls_back_the_whole_chain(fakes):
    chain = [dict(p) for p in CHAIN]
    chain[1] = {
        "type": "b",
        "fake": {"ADD": {"error": {"cniVersion": "1.0.0", "code": 7, "msg": "invalid sysctl", "details": "net.nope: no such key"}}},
    }
    fakes.network(chain)
    with pytest.raises(RuntimeFailure) as e:
        await fakes.cni().add(attachment())
    text = str(e.value)
    assert "CNI plugin b" in text and "testnet" in text
    assert "invalid sysctl" in text and "net.nope: no such key" in text and "7" in text
    assert fakes.order() == [("ADD", "a"), ("ADD", "b"), ("DEL", "c"), ("DEL", "b"), ("DEL", "a")]
    assert all("prevResult" not in c["conf"] for c in fakes.calls("DEL"))
    assert fakes.cni().cached(CID) is None
    assert not os.path.exists(fakes.cache / f"{CID}-eth0.json")


@pytest_twisted.ensureDeferred
async def test_plugin_without_error_object_is_reported_with_its_stderr(fakes):
    fakes.network([{"type": "a", "fake": {"ADD": {"stderr": "segfault in frobnicator", "exit": 2}}}])
    with pytest.raises(RuntimeFailure) as e:
        await fakes.cni().add(attachment())
    assert "exit status 2" in str(e.value) and "segfault in frobnicator" in str(e.value)
    assert fakes.order() == [("ADD", "a"), ("DEL", "a")]


@pytest_twisted.ensureDeferred
async def test_del_uses_cached_config_after_conf_dir_changed(fakes):
    fakes.network(CHAIN)
    cni = fakes.cni()
    await cni.add(attachment())
    # The operator replaces the network: a new name, other plugins.
    fakes.network([{"type": "c", "mark": "new"}], name="othernet", file="05-new.conflist")
    att = attachment(netns="/run/netns/gone-already")
    await cni.delete(att)

    dels = fakes.calls("DEL")
    assert [c["plugin"] for c in dels] == ["c", "b", "a"]
    for call in dels:
        assert call["conf"]["name"] == "testnet"
        assert call["conf"]["prevResult"] == BRIDGE_RESULT
        assert call["env"]["CNI_NETNS"] == "/run/netns/gone-already"
    assert dels[1]["conf"]["runtimeConfig"]["portMappings"][0]["hostPort"] == 8080
    assert cni.cached(CID) is None

    # Without a cache, DEL uses the current conf dir (idempotent, no prevResult).
    await cni.delete(att)
    last = fakes.calls("DEL")[-1]
    assert last["conf"]["name"] == "othernet" and "prevResult" not in last["conf"]


@pytest_twisted.ensureDeferred
async def test_del_with_missing_plugin_runs_the_others_then_raises(fakes):
    fakes.network(CHAIN)
    cni = fakes.cni()
    await cni.add(attachment())
    os.unlink(fakes.bin / "b")
    with pytest.raises(RuntimeFailure) as e:
        await cni.delete(attachment())
    assert "CNI plugin b not found" in str(e.value)
    assert [c["plugin"] for c in fakes.calls("DEL")] == ["c", "a"]
    assert cni.cached(CID) is not None  # kept, so a retry can finish

    fakes.plugin("b")
    await cni.delete(attachment())
    assert cni.cached(CID) is None


@pytest_twisted.ensureDeferred
async def test_del_errors_are_collected_and_not_found_is_ignored(fakes):
    chain = [
        {"type": "a", "fake": {"DEL": {"error": {"code": 11, "msg": "try again", "details": "locked"}}}},
        {"type": "b", "fake": {"DEL": {"error": {"code": 3, "msg": "container unknown"}}}},
        {"type": "c", "fake": {"DEL": {"error": {"code": 999, "msg": "link \"veth1\" not found"}}}},
    ]
    fakes.network(chain)
    cni = fakes.cni()
    await cni.add(attachment())
    with pytest.raises(RuntimeFailure) as e:
        await cni.delete(attachment())
    assert "CNI plugin a" in str(e.value) and "try again" in str(e.value)
    assert "plugin b" not in str(e.value) and "plugin c" not in str(e.value)
    assert [c["plugin"] for c in fakes.calls("DEL")] == ["c", "b", "a"]
    assert cni.cached(CID) is not None


@pytest_twisted.ensureDeferred
async def test_timeout_kills_a_hanging_plugin(fakes):
    fakes.network([{"type": "a", "fake": {"ADD": {"sleep": 60}}}, {"type": "b"}])
    started = time.monotonic()
    with pytest.raises(RuntimeFailure) as e:
        await fakes.cni(timeout=1.0).add(attachment())
    assert time.monotonic() - started < 10
    assert "CNI plugin a timed out after 1s" in str(e.value)
    assert await reaped(fakes.calls("ADD")[0]["pid"])
    assert fakes.order() == [("ADD", "a"), ("DEL", "b"), ("DEL", "a")]


@pytest_twisted.ensureDeferred
async def test_cancelling_add_kills_the_plugin_and_rolls_back(fakes):
    fakes.network([{"type": "a", "fake": {"ADD": {"sleep": 60}}}])
    d = fakes.cni().add(attachment())
    for _ in range(500):  # until the plugin has recorded its start
        if fakes.calls("ADD"):
            break
        await task.deferLater(reactor, 0.01, lambda: None)
    d.cancel()
    with pytest.raises(CancelledError):
        await d
    assert await reaped(fakes.calls("ADD")[0]["pid"])
    assert fakes.order() == [("ADD", "a"), ("DEL", "a")]


@pytest_twisted.ensureDeferred
async def test_preconditions(fakes):
    cni = fakes.cni()
    with pytest.raises(FailedPrecondition, match="no CNI network config in"):
        await cni.add(attachment())
    # No cache and no config: nothing to delete.
    assert await cni.delete(attachment()) is None

    fakes.network([{"type": "a"}, {"type": "missing"}])
    with pytest.raises(FailedPrecondition, match="missing"):
        await cni.add(attachment())
    (fakes.conf / "10-test.conflist").write_text("{not json")
    with pytest.raises(FailedPrecondition, match="not valid JSON"):
        await cni.add(attachment())
    with pytest.raises(InvalidArgument):
        await cni.add(attachment(container_id="../etc"))
    with pytest.raises(InvalidArgument):
        await cni.add(attachment(pod_name="a;b=c"))
    assert fakes.order() == []


def test_result_ips_shapes():
    assert result_ips(BRIDGE_RESULT, "eth0") == ("10.88.0.5", "fd00::5")
    # 0.3.x/0.4.0 results carry "version"; no interfaces list at all is fine.
    assert result_ips({"ips": [{"version": "4", "address": "10.1.2.3/24"}]}, "eth0") == ("10.1.2.3",)
    # 0.2.0
    assert result_ips({"ip4": {"ip": "10.1.2.3/16"}, "ip6": {"ip": "fd00::3/64"}}, "eth0") == ("10.1.2.3", "fd00::3")
    assert result_ips({}, "eth0") == ()


def test_attachment_round_trips_through_its_cache_form():
    att = Attachment(container_id="a" * 64, netns="/run/x/ns/net", pod_name="p", pod_namespace="n", pod_uid="u",
                     port_mappings=(PortMapping(8080, 80, "tcp", ""),), dns={"servers": ["10.0.0.10"]})
    assert Attachment.from_json(json.loads(json.dumps(att.as_json()))) == att
    with pytest.raises(TypeError):
        Attachment.from_json({"container_id": "x", "unknown": 1})
