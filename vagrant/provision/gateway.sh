#!/bin/sh
# Install shadowtap in the gateway VM from the wheelhouse the launcher built on the host
# (synced to /opt/shadowtap-share): no index, no internet. Idempotent.
set -eu
W=/opt/shadowtap-share/wheelhouse
[ -d "$W" ] || { echo "gateway: no wheelhouse at $W: run the lab through scripts/vagrant-lab.sh" >&2; exit 2; }
[ -x /opt/shadowtap/venv/bin/python ] || python3 -m venv /opt/shadowtap/venv
start=$(date +%s)
# --no-compile: byte-compiling every dependency under TCG costs minutes; imports compile lazily
/opt/shadowtap/venv/bin/pip install -q --no-index --no-compile --disable-pip-version-check \
    --find-links "$W" --upgrade shadowtap
ln -sf /opt/shadowtap/venv/bin/shadowtap /usr/local/bin/shadowtap
echo "gateway: shadowtap $(/opt/shadowtap/venv/bin/pip show shadowtap 2>/dev/null | sed -n 's/^Version: //p') installed in $(( $(date +%s) - start )) s; capture port: cap0"
