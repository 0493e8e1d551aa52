#!/usr/bin/env bash
# Install what tests/e2e/test_lab_netns.py needs to put the orchestrator and a pool
# manager on two "hosts" (network namespaces joined by a veth pair): iproute2's `ip`.
#
# No capture package: the test captures the link with a raw AF_PACKET socket of its own
# (tests/netns.py), the frames tcpdump would see on those interfaces, and writes them as
# pcap files next to the test's logs (readable with tcpdump -r / tshark -r, if wanted).
# The test also needs root (namespaces, raw sockets); CI containers run as root.
#
# Idempotent and quiet: does nothing when every package is installed already.
# Runs as root (CI containers) or through sudo otherwise.
set -euo pipefail

PACKAGES=(
    iproute2    # ip netns add/exec/del, ip link add ... type veth
)

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi

echo "installing network namespace tools (apt): ${missing[*]}" >&2
as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
as_root env DEBIAN_FRONTEND=noninteractive DEBCONF_NOWARNINGS=yes apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
