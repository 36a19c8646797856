#!/usr/bin/env bash
# The Vagrant lab (the namespace lab's topology as VMs): up | down | status | ssh NODE -- CMD |
# spec | box. A thin wrapper over 'shadowtap lab vagrant ...'; see docs/vagrant.md.
#   bash scripts/vagrant-lab.sh up --nodes client,gateway,prod
#   bash scripts/vagrant-lab.sh ssh gateway -- sudo shadowtap capture -i cap0 --count 4 -o -
#   bash scripts/vagrant-lab.sh down
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/shadowtap ] || { echo "vagrant-lab: .venv is missing: run 'bash scripts/setup.sh' first" >&2; exit 2; }
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
exec $SUDO .venv/bin/shadowtap lab vagrant "$@"
