#!/usr/bin/env bash
# Install everything shadowtap needs on a fresh Debian/Ubuntu machine: the system packages
# (capture and network tools, and the peers the benchmarks compare against), a virtualenv in
# .venv, and the project itself (editable) with its test extras. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(python3 python3-venv python3-dev gcc tshark tcpdump tcpflow tcpreplay rsync nftables
              iproute2 ethtool wrk procps nginx-light openssh-server openssh-client
              vagrant vagrant-libvirt libvirt-daemon-system qemu-system-x86 qemu-utils
              debootstrap dnsmasq-base redis-server chromium prometheus haproxy)
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing system packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating virtualenv .venv"
    "$PY" -m venv .venv
fi
echo "setup: installing shadowtap and its dependencies into .venv"
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
# Bytecode for the project's own modules, as pip writes it for an installed package: with
# PYTHONDONTWRITEBYTECODE set (CI images often set it) an editable install would otherwise
# compile every module from source at every command start (~0.1 s CPU per `shadowtap` call).
.venv/bin/python -m compileall -q -j 0 appliance replay netconfig strictconf \
    || echo "setup: warning: some modules were not compiled to bytecode (slower starts only)"
echo "setup: done. Run '.venv/bin/shadowtap --help' to see the commands."
