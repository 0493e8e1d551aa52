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

source "$(dirname "$0")/apt.sh"
apt_install "network namespace tools" "${PACKAGES[@]}"
