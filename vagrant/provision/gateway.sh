#!/bin/sh
# Install shadowtap in the gateway VM from what the launcher prepared on the host (synced to
# /opt/shadowtap-share): no index, no internet. Idempotent.
#  - site.tar: shadowtap and its dependencies already installed from the wheelhouse with
#    'pip install --no-index --target' on the host (same Python 3.11): the VM only unpacks it;
#  - wheelhouse/: the wheels themselves, installed here with pip (slow under TCG, ~2 min).
set -eu
S=/opt/shadowtap-share
start=$(date +%s)
if [ -f "$S/site.tar" ]; then
    rm -rf /opt/shadowtap/site.new
    mkdir -p /opt/shadowtap/site.new
    tar -C /opt/shadowtap/site.new -xf "$S/site.tar"
    rm -rf /opt/shadowtap/site
    mv /opt/shadowtap/site.new /opt/shadowtap/site
    cat > /usr/local/bin/shadowtap <<'PY'
#!/usr/bin/python3
"""shadowtap, installed from the lab's site.tar (see vagrant/provision/gateway.sh)."""
import sys

sys.path.insert(0, "/opt/shadowtap/site")
from appliance.cli import main  # noqa: E402

sys.exit(main())
PY
    chmod 0755 /usr/local/bin/shadowtap
elif [ -d "$S/wheelhouse" ]; then
    [ -x /opt/shadowtap/venv/bin/python ] || python3 -m venv /opt/shadowtap/venv
    # --no-compile: byte-compiling every dependency under TCG costs minutes
    /opt/shadowtap/venv/bin/pip install -q --no-index --no-compile --disable-pip-version-check \
        --find-links "$S/wheelhouse" --upgrade shadowtap
    ln -sf /opt/shadowtap/venv/bin/shadowtap /usr/local/bin/shadowtap
else
    echo "gateway: nothing to install in $S: run the lab through scripts/vagrant-lab.sh" >&2
    exit 2
fi
echo "gateway: shadowtap installed in $(( $(date +%s) - start )) s ($(shadowtap --help >/dev/null && echo runs)); capture port: cap0"
