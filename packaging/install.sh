#!/bin/sh
# Install rktlet and what it runs on, on Debian 12, as root:
#   - Debian packages: runc, conmon, CNI plugins, catatonit, iptables, python3-venv,
#     gcc (the package build compiles the small exec reaper, rktlet/oci/reaper.c);
#   - the rktlet Python package in its own virtualenv, /opt/rktlet
#     (the `rktlet` command is /opt/rktlet/bin/rktlet);
#   - /etc/rktlet/rktlet.toml (the defaults, documented) if there is none;
#   - the systemd unit, when systemd runs this machine (not enabled).
# Re-running it upgrades rktlet in place.
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
prefix=${RKTLET_PREFIX:-/opt/rktlet}
python=${PYTHON:-python3}

if [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: run as root" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq runc conmon containernetworking-plugins catatonit iptables iproute2 python3-venv \
    gcc libc6-dev >/dev/null

[ -x "$prefix/bin/python" ] || "$python" -m venv "$prefix"
"$prefix/bin/pip" install -q --upgrade pip
# The build compiles the exec reaper into the package: a missing compiler fails here.
RKTLET_REQUIRE_REAPER=1 "$prefix/bin/pip" install -q "$here"

install -d -m 0755 /etc/rktlet
[ -e /etc/rktlet/rktlet.toml ] || install -m 0644 "$here/packaging/rktlet.toml" /etc/rktlet/rktlet.toml
if [ -d /run/systemd/system ]; then
    install -m 0644 "$here/packaging/rktlet.service" /etc/systemd/system/rktlet.service
    systemctl daemon-reload
fi
echo "rktlet installed in $prefix"
