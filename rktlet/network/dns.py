"""The files a pod's containers bind-mount: /etc/resolv.conf, /etc/hosts,
/etc/hostname."""

from __future__ import annotations

from typing import Sequence

HOST_RESOLV_CONF = "/etc/resolv.conf"


def resolv_conf(servers: Sequence[str], searches: Sequence[str], options: Sequence[str], host_resolv: str) -> str:
    """The pod's resolv.conf: from the CRI ``dns_config`` when it names
    anything, else the host's file as it is."""
    if not (servers or searches or options):
        return host_resolv
    lines = []
    if searches:
        lines.append("search " + " ".join(searches))
    lines += [f"nameserver {s}" for s in servers]
    if options:
        lines.append("options " + " ".join(options))
    return "\n".join(lines) + "\n"


def hosts_file(hostname: str, ips: Sequence[str]) -> str:
    """The pod's /etc/hosts: loopback entries and the hostname on each pod IP
    (on loopback for host-network pods, which the kubelet manages itself)."""
    lines = [
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        "fe00::0\tip6-localnet",
        "fe00::0\tip6-mcastprefix",
        "fe00::1\tip6-allnodes",
        "fe00::2\tip6-allrouters",
    ]
    if hostname:
        lines += [f"{ip}\t{hostname}" for ip in ips] or [f"127.0.1.1\t{hostname}"]
    return "\n".join(lines) + "\n"
