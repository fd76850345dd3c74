"""A CNI network for tests: its own bridge name, a private test subnet, IPAM
state in a temporary dir, no masquerading and no default route — pod traffic
never leaves the machine. Removed (bridge, IPAM files) afterwards."""

from __future__ import annotations

import json
import os
import random
import shlex
import shutil
import subprocess
import tempfile


class TestNetwork:
    """Writes a bridge + host-local + portmap conflist into *conf_dir*.

    :ivar bridge: the bridge device name (unique per instance).
    :ivar subnet: the /24 pods get addresses from.
    """

    __test__ = False  # not a test class

    def __init__(self, conf_dir: str, name: str = "rktlet-test") -> None:
        self.conf_dir = conf_dir
        self.name = name
        suffix = "%04x" % random.randrange(0x10000)
        self.bridge = f"rkttest{suffix}"
        self.subnet = f"10.235.{random.randrange(1, 255)}.0/24"
        self.gateway = self.subnet.replace(".0/24", ".1")
        self.ipam_dir = tempfile.mkdtemp(prefix="rktlet-ipam-", dir="/tmp")
        self.path = os.path.join(conf_dir, "10-test.conflist")

    def write(self, extra_plugins: list[dict] | None = None) -> str:
        """Write the conflist; returns its path."""
        os.makedirs(self.conf_dir, exist_ok=True)
        doc = {
            "cniVersion": "1.0.0",
            "name": self.name,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": True,
                    "ipMasq": False,
                    "ipam": {"type": "host-local", "ranges": [[{"subnet": self.subnet}]], "dataDir": self.ipam_dir},
                },
                {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
                *(extra_plugins or []),
            ],
        }
        with open(self.path, "w") as f:
            json.dump(doc, f)
        return self.path

    def allocations(self) -> list[str]:
        """IPs host-local has handed out and not released."""
        directory = os.path.join(self.ipam_dir, self.name)
        if not os.path.isdir(directory):
            return []
        return [n for n in os.listdir(directory) if n[0].isdigit() and n.count(".") == 3]

    def cleanup(self) -> None:
        """Delete the bridge and the IPAM state."""
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        shutil.rmtree(self.ipam_dir, ignore_errors=True)


NAT_TOOLS = ("iptables", "ip6tables")
# The nat chains the portmap plugin shares between all sandboxes (it never
# deletes them itself).
SHARED_CHAINS = ("CNI-HOSTPORT-DNAT", "CNI-HOSTPORT-MASQ", "CNI-HOSTPORT-SETMARK")


def nat_rules(tool: str = "iptables") -> list[str]:
    """``iptables -t nat -S`` lines."""
    return subprocess.run([tool, "-w", "-t", "nat", "-S"], capture_output=True, text=True, timeout=20).stdout.splitlines()


def nat_rules_mentioning(text: str) -> list[str]:
    """iptables nat rules that contain *text* (e.g. a pod IP or a port)."""
    return [line for line in nat_rules() if text in line]


def nat_chains(tool: str = "iptables") -> set[str]:
    """The nat table's user chains."""
    return {line.split()[1] for line in nat_rules(tool) if line.startswith("-N ")}


def delete_rule(tool: str, line: str) -> None:
    """Delete the rule that ``iptables -S`` printed as *line*."""
    subprocess.run([tool, "-w", "-t", "nat", "-D", *shlex.split(line)[1:]], capture_output=True, timeout=20)


def remove_chains(tool: str, names: set[str]) -> None:
    """Remove the nat chains *names* and every rule jumping to them."""
    for line in nat_rules(tool):
        words = shlex.split(line)
        if words[0] == "-A" and "-j" in words and words[words.index("-j") + 1] in names:
            delete_rule(tool, line)
    for flag in ("-F", "-X"):
        for chain in names:
            subprocess.run([tool, "-w", "-t", "nat", flag, chain], capture_output=True, timeout=20)


class HostNetworkState:
    """What the CNI plugins change on the host for every pod and never undo:
    ``net.ipv4.ip_forward`` (bridge) and portmap's shared nat chains. Taken
    before the tests and put back after them."""

    def __init__(self) -> None:
        with open("/proc/sys/net/ipv4/ip_forward") as f:
            self.ip_forward = f.read().strip()
        self.chains = {tool: nat_chains(tool) & set(SHARED_CHAINS) for tool in NAT_TOOLS}
        from rktlet.oci import cgroups

        self._layout = cgroups.detect()
        self.cgroup_root = cgroups.existing(self._layout, "/rktlet")

    def restore(self) -> None:
        from rktlet.oci import cgroups

        # rktlet's own cgroup root, made by the tests' pods, goes if it is
        # empty and was not there before.
        if not self.cgroup_root:
            try:
                cgroups.remove([d for d in cgroups.existing(self._layout, "/rktlet") if not _has_children(d)])
            except Exception:
                pass
        with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
            f.write(self.ip_forward)
        for tool in NAT_TOOLS:
            present = nat_chains(tool)
            if any(c.startswith("CNI-DN-") for c in present):
                continue  # some sandbox still has port mappings: leave the shared chains
            remove_chains(tool, (present & set(SHARED_CHAINS)) - self.chains[tool])


def ping(ip: str) -> bool:
    """One ICMP echo to *ip* (a pod on the test bridge) answered within 2 s."""
    return subprocess.run(["busybox", "ping", "-c1", "-W2", ip], capture_output=True).returncode == 0


def _has_children(cgroup_dir: str) -> bool:
    return any(os.path.isdir(os.path.join(cgroup_dir, n)) for n in os.listdir(cgroup_dir))
