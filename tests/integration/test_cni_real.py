"""rktlet.network.cni with the real CNI plugins (/usr/lib/cni): bridge +
host-local + portmap + loopback on a private test subnet, in a network
namespace made for the test.

Traffic only goes to the pod address on the test's own bridge and to
127.0.0.1; the network has no default route and no masquerading.  Whatever
happens, the fixture removes the attachment (CNI DEL), the namespace, the
bridge, the iptables chains portmap created, the temp dirs and the server it
started (by PID), and restores ``net.ipv4.ip_forward`` (the bridge plugin
turns it on for a gateway).
"""

from __future__ import annotations

import json
import os
import secrets
import select
import shlex
import shutil
import socket
import subprocess
import sys

import pytest
import pytest_twisted
from twisted.internet import reactor

from rktlet.errors import RuntimeFailure
from rktlet.network.cni import CNI, Attachment, PortMapping
from harness.network import NAT_TOOLS, nat_rules, remove_chains, delete_rule
from harness.waiting import wait_for

pytestmark = pytest.mark.root

BIN_DIR = "/usr/lib/cni"

# A TCP server for the pod: answers every connection with one line.
SERVER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(8)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.sendall(b"hello from the pod\\n")
    c.close()
"""


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=20)


from harness.daemon import free_port  # noqa: E402


def free_subnet() -> str:
    routes = run("ip", "-4", "route", "show", "table", "all").stdout
    for _ in range(50):
        third = secrets.randbelow(250) + 1
        if f"10.234.{third}." not in routes:
            return f"10.234.{third}"
    pytest.skip("no free 10.234.x.0/24 test subnet")


class RealNet:
    """A netns, a conf dir with a bridge network, and a CNI instance."""

    def __init__(self, base) -> None:
        tag = secrets.token_hex(2)
        self.netns_name = f"rktlet-cni-test-{tag}"
        self.netns = f"/run/netns/{self.netns_name}"
        self.bridge = f"rkttest{tag}"
        self.prefix = free_subnet()
        self.conf_dir = str(base / "net.d")
        self.cache_dir = str(base / "cache")
        self.ipam_dir = str(base / "ipam")
        self.network = f"rktlet-test-{tag}"
        self.attachments: list[Attachment] = []
        self.servers: list[subprocess.Popen] = []
        self.cni = CNI(reactor, self.conf_dir, [BIN_DIR], self.cache_dir, timeout=20)

    def setup(self) -> None:
        os.makedirs(self.conf_dir)
        run("ip", "netns", "add", self.netns_name)

    def write_network(self, extra_plugins: list[dict] = ()) -> None:
        plugins = [
            {
                "type": "bridge",
                "bridge": self.bridge,
                "isGateway": True,
                "ipMasq": False,  # nothing leaves the machine
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": f"{self.prefix}.0/24", "gateway": f"{self.prefix}.1"}]],
                    "routes": [],  # no default route
                    "dataDir": self.ipam_dir,
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
            *extra_plugins,
            {"type": "loopback"},
        ]
        doc = {"cniVersion": "1.0.0", "name": self.network, "plugins": plugins}
        with open(os.path.join(self.conf_dir, "10-test.conflist"), "w") as f:
            json.dump(doc, f)

    def attachment(self, host_port: int = 0, container_port: int = 0) -> Attachment:
        att = Attachment(
            container_id=secrets.token_hex(32),
            netns=self.netns,
            pod_name="cni-test",
            pod_namespace="default",
            pod_uid="uid-" + secrets.token_hex(4),
            port_mappings=(PortMapping(host_port, container_port),) if host_port else (),
        )
        self.attachments.append(att)
        return att

    def start_server(self, port: int) -> None:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.netns_name, sys.executable, "-c", SERVER, str(port)],
            stdout=subprocess.PIPE,
        )
        self.servers.append(proc)
        ready, _, _ = select.select([proc.stdout], [], [], 10)
        assert ready and proc.stdout.readline() == b"ready\n", "test server did not start"

    def allocated(self) -> list[str]:
        """IPs host-local holds for the test network."""
        directory = os.path.join(self.ipam_dir, self.network)
        if not os.path.isdir(directory):
            return []
        return [n for n in os.listdir(directory) if n.startswith(self.prefix)]

    def bridge_ports(self) -> list[str]:
        return run("ip", "-o", "link", "show", "master", self.bridge, check=False).stdout.splitlines()

    def netns_links(self) -> str:
        return run("ip", "netns", "exec", self.netns_name, "ip", "-o", "link").stdout

    def cleanup(self) -> None:
        for proc in self.servers:
            proc.kill()
            proc.wait()
        run("ip", "netns", "del", self.netns_name, check=False)
        run("ip", "link", "del", self.bridge, check=False)
        for tool in NAT_TOOLS:
            self._remove_rules(tool)
        shutil.rmtree(self.cache_dir, ignore_errors=True)
        shutil.rmtree(self.ipam_dir, ignore_errors=True)

    def _remove_rules(self, tool: str) -> None:
        """Remove whatever is left of our sandboxes' nat rules and per-sandbox
        chains (after a successful DEL, nothing is)."""
        ids = [a.container_id for a in self.attachments]
        ours: set[str] = set()
        for line in nat_rules(tool):
            if line.startswith("-A ") and any(i in line for i in ids):
                words = shlex.split(line)
                if "-j" in words and words[words.index("-j") + 1].startswith("CNI-DN-"):
                    ours.add(words[words.index("-j") + 1])
                delete_rule(tool, line)
        remove_chains(tool, ours)


@pytest_twisted.async_yield_fixture
async def net(tmp_path):
    if not os.path.isfile(os.path.join(BIN_DIR, "bridge")) or shutil.which("iptables") is None:
        pytest.skip("containernetworking-plugins or iptables not installed")
    env = RealNet(tmp_path)
    try:
        env.setup()
        yield env
    finally:
        for att in env.attachments:
            try:
                await env.cni.delete(att)
            except Exception:
                pass
        env.cleanup()


def ping(address: str) -> bool:
    argv = ["ping"] if shutil.which("ping") else ["busybox", "ping"]
    return run(*argv, "-c1", "-W1", address, check=False).returncode == 0


def fetch(address: str, port: int) -> bytes:
    with socket.create_connection((address, port), timeout=5) as s:
        return s.makefile("rb").readline()


@pytest_twisted.ensureDeferred
async def test_add_reach_and_del_leave_nothing(net):
    net.write_network()
    host_port, pod_port = free_port(), 8000 + secrets.randbelow(1000)
    att = net.attachment(host_port, pod_port)

    res = await net.cni.add(att)
    assert res.network_name == net.network
    assert len(res.ips) == 1 and res.ips[0].startswith(net.prefix + ".")
    pod_ip = res.ips[0]
    assert res.ips[0] != f"{net.prefix}.1"  # not the gateway
    assert net.allocated() == [pod_ip]
    assert len(net.bridge_ports()) == 1
    links = net.netns_links()
    assert "eth0@" in links and "<LOOPBACK,UP" in links  # loopback brought lo up
    assert net.cni.cached(att.container_id)["result"] == res.result
    assert any(f"--dport {host_port}" in rule for rule in nat_rules())

    net.start_server(pod_port)
    assert ping(pod_ip)
    assert fetch(pod_ip, pod_port) == b"hello from the pod\n"
    assert fetch("127.0.0.1", host_port) == b"hello from the pod\n"  # through portmap

    await net.cni.delete(att)
    assert net.allocated() == []
    assert net.bridge_ports() == []
    assert "eth0" not in net.netns_links()
    rules = "\n".join(nat_rules())
    assert f"--dport {host_port}" not in rules and att.container_id not in rules
    assert net.cni.cached(att.container_id) is None
    # DEL again is fine (idempotent).
    await net.cni.delete(att)


@pytest_twisted.ensureDeferred
async def test_failing_chain_leaves_nothing(net):
    # tuning fails on a sysctl that does not exist, after bridge (IP, veth)
    # and portmap (DNAT rules) have done their part.
    net.write_network([{"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.no_such_knob": "1"}}])
    host_port = free_port()
    att = net.attachment(host_port, 80)

    with pytest.raises(RuntimeFailure) as e:
        await net.cni.add(att)
    text = str(e.value)
    assert "CNI plugin tuning" in text and net.network in text and "no_such_knob" in text

    assert net.allocated() == []
    assert net.bridge_ports() == []
    assert "eth0" not in net.netns_links()
    rules = "\n".join(nat_rules())
    assert f"--dport {host_port}" not in rules and att.container_id not in rules
    assert net.cni.cached(att.container_id) is None


@pytest_twisted.ensureDeferred
async def test_del_after_the_netns_is_gone(net):
    net.write_network()
    att = net.attachment()
    res = await net.cni.add(att)
    assert net.allocated() == list(res.ips)
    run("ip", "netns", "del", net.netns_name)  # the veth pair goes with it

    await net.cni.delete(att)
    assert net.allocated() == []
    assert net.cni.cached(att.container_id) is None
    # The kernel tears the namespace's veth pair down in the background.
    await wait_for(lambda: net.bridge_ports() == [], 5, "the veth pair to go with its namespace")
