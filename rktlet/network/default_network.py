"""rktlet's default network, ``rkt.kubernetes.io``: written into an empty
CNI conf dir so a fresh node has pod networking (bridge ``rktlet0`` +
host-local IPAM on ``--default-network-subnet`` + portmap). Loopback inside
each pod is brought up by rktlet itself."""

from __future__ import annotations

import json
import os

from rktlet import packaged
from rktlet.fsutil import write_atomic
from rktlet.network.cni_config import config_files

TEMPLATE = "cni/10-rktlet.conflist"
FILE_NAME = "10-rktlet.conflist"


def render(subnet: str) -> str:
    """The default network's conflist for *subnet*."""
    text = packaged.read_text(TEMPLATE).replace("@SUBNET@", subnet)
    json.loads(text)  # the template must stay valid JSON
    return text


def ensure_default_network(conf_dir: str, subnet: str) -> str | None:
    """Write the default network when *conf_dir* has no configuration.

    Blocking (small file): call at start-up or from a thread.

    :returns: the path written, or ``None`` when a configuration exists.
    """
    if config_files(conf_dir):
        return None
    os.makedirs(conf_dir, mode=0o755, exist_ok=True)
    path = os.path.join(conf_dir, FILE_NAME)
    write_atomic(path, render(subnet).encode(), 0o644)  # host configuration, as CNI plugins' own
    return path
