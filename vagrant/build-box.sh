#!/usr/bin/env bash
# Build the shadowtap lab's Vagrant box (libvirt provider) offline, from debootstrap.
#
# Why a home-made box: the lab must come up with no internet (only the Debian mirror is
# reachable) and with QEMU TCG (nested KVM cannot boot ordinary guests here). So the box is a
# bare ext4 image (no partition table, no boot loader) plus the kernel and initrd next to it;
# the box's own Vagrantfile boots them directly (lv.kernel / lv.initrd / lv.cmd_line).
#
# Idempotent: a finished box whose recipe (this script + arguments) is unchanged is kept; the
# .deb files debootstrap fetched are cached under OUT/debs, so a rebuild downloads nothing.
set -euo pipefail

usage() {
    cat <<'USAGE'
usage: vagrant/build-box.sh [--out DIR] [--suite SUITE] [--mirror URL] [--size SIZE] [--force]

  --out DIR      where the box and its cache go (default: $SHADOWTAP_VAGRANT_CACHE or
                 /var/cache/shadowtap-vagrant); the box is DIR/shadowtap-debian.box
  --suite SUITE  Debian suite (default: bookworm)
  --mirror URL   Debian mirror (default: the host's apt source ending in /debian,
                 else http://deb.debian.org/debian)
  --size SIZE    root filesystem size for mke2fs (default: 3G)
  --force        rebuild even if an up-to-date box exists
Needs root, debootstrap, mke2fs, qemu-img and tar (scripts/setup.sh installs them).
USAGE
}

die() { echo "build-box: error: $*" >&2; exit 2; }
step() { echo "build-box: [$(date +%H:%M:%S)] $*"; }

OUT=${SHADOWTAP_VAGRANT_CACHE:-/var/cache/shadowtap-vagrant}
SUITE=bookworm
MIRROR=""
SIZE=3G
FORCE=0
while [ $# -gt 0 ]; do
    case "$1" in
        --out) [ $# -ge 2 ] || die "--out needs a directory"; OUT=$2; shift 2 ;;
        --suite) [ $# -ge 2 ] || die "--suite needs a Debian suite name"; SUITE=$2; shift 2 ;;
        --mirror) [ $# -ge 2 ] || die "--mirror needs a URL"; MIRROR=$2; shift 2 ;;
        --size) [ $# -ge 2 ] || die "--size needs a size such as 3G"; SIZE=$2; shift 2 ;;
        --force) FORCE=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument '$1' (see --help)" ;;
    esac
done
[[ "$SUITE" =~ ^[a-z]+$ ]] || die "suite '$SUITE' is not a Debian suite name (e.g. bookworm)"
[[ "$SIZE" =~ ^[0-9]+[MG]$ ]] || die "size '$SIZE' must look like 3G or 2500M"
if [ -z "$MIRROR" ]; then
    # the host's own Debian mirror (a proxy or local mirror keeps working offline)
    MIRROR=$(grep -rhoE '^(URIs:|deb)\s+https?://[^ ]+/debian/?(\s|$)' /etc/apt/sources.list \
             /etc/apt/sources.list.d/ 2>/dev/null | head -n1 | awk '{print $2}' || true)
    MIRROR=${MIRROR:-http://deb.debian.org/debian}
fi
[[ "$MIRROR" =~ ^https?:// ]] || die "mirror '$MIRROR' must be an http(s) URL"
[ "$(id -u)" = 0 ] || die "run as root (debootstrap and chroot need it)"
for tool in debootstrap mke2fs qemu-img tar chroot; do
    command -v "$tool" >/dev/null || die "'$tool' is missing: run 'bash scripts/setup.sh' (installs debootstrap, qemu-utils, e2fsprogs)"
done

HERE=$(cd "$(dirname "$0")" && pwd)
KEY=$(ls /usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub 2>/dev/null | head -n1 || true)
[ -n "$KEY" ] || die "vagrant's insecure public key was not found: install the 'vagrant' package (scripts/setup.sh)"

BOX="$OUT/shadowtap-debian.box"
STAMP="$OUT/shadowtap-debian.recipe"
RECIPE=$( { cat "$0" "$HERE"/guest/* | sha256sum | cut -d' ' -f1; echo "$SUITE $MIRROR $SIZE"; } )
if [ "$FORCE" = 0 ] && [ -s "$BOX" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$RECIPE" ]; then
    step "box is up to date: $BOX (use --force to rebuild)"
    exit 0
fi

mkdir -p "$OUT/debs"
WORK=$(mktemp -d "$OUT/build.XXXXXX")
ROOT="$WORK/rootfs"
cleanup() {
    # a failed chroot step may leave these mounted; never leave a mount behind
    for m in dev/pts proc sys; do mountpoint -q "$ROOT/$m" 2>/dev/null && umount -l "$ROOT/$m"; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'echo "build-box: failed at line $LINENO; nothing was installed, partial work removed. Re-run to retry (downloaded .debs are kept in $OUT/debs)." >&2' ERR

PKGS=systemd-sysv,udev,dbus,openssh-server,sudo,linux-image-amd64,initramfs-tools,zstd,iproute2,nftables,ethtool,python3,python3-venv,rsync,tcpdump,procps,iputils-ping,netbase,kmod
step "debootstrap $SUITE (minbase + systemd, openssh, kernel, python3, nftables) from $MIRROR"
t0=$(date +%s)
debootstrap --variant=minbase --cache-dir="$OUT/debs" --include="$PKGS" "$SUITE" "$ROOT" "$MIRROR" \
    > "$WORK/debootstrap.log" 2>&1 || { tail -n 20 "$WORK/debootstrap.log" >&2; die "debootstrap failed (log above): is $MIRROR reachable? (apt-get update shows it)"; }
step "debootstrap done in $(( $(date +%s) - t0 )) s"

step "configuring the guest (user vagrant, sshd, networkd on mgmt0, interface names from the kernel command line)"
echo shadowtap-lab > "$ROOT/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 shadowtap-lab\n' > "$ROOT/etc/hosts"
echo "/dev/vda / ext4 rw,noatime 0 1" > "$ROOT/etc/fstab"
chroot "$ROOT" useradd -m -s /bin/bash -U vagrant
echo 'vagrant:vagrant' | chroot "$ROOT" chpasswd
echo 'vagrant ALL=(ALL) NOPASSWD: ALL' > "$ROOT/etc/sudoers.d/vagrant"
chmod 0440 "$ROOT/etc/sudoers.d/vagrant"
install -d -m 0700 -o 1000 -g 1000 "$ROOT/home/vagrant/.ssh"
install -m 0600 -o 1000 -g 1000 "$KEY" "$ROOT/home/vagrant/.ssh/authorized_keys"
# no reverse DNS lookups (there is no DNS): each login would wait for the resolver to time out
printf 'UseDNS no\nGSSAPIAuthentication no\n' > "$ROOT/etc/ssh/sshd_config.d/vagrant.conf"
install -m 0755 "$HERE/guest/shadowtap-ifnames" "$ROOT/usr/local/sbin/shadowtap-ifnames"
install -m 0644 "$HERE/guest/shadowtap-ifnames.service" "$ROOT/etc/systemd/system/shadowtap-ifnames.service"
install -m 0644 "$HERE/guest/mgmt0.network" "$ROOT/etc/systemd/network/10-mgmt0.network"
chroot "$ROOT" systemctl enable shadowtap-ifnames.service systemd-networkd.service >/dev/null 2>&1
# TCG guests run ~5x slower: nothing periodic that competes with the lab
for unit in apt-daily.timer apt-daily-upgrade.timer man-db.timer e2scrub_all.timer fstrim.timer \
            systemd-networkd-wait-online.service getty@tty1.service; do
    chroot "$ROOT" systemctl mask "$unit" >/dev/null 2>&1 || true
done
# an empty machine-id: each VM makes its own at first boot (not one shared by all of them)
: > "$ROOT/etc/machine-id"
rm -f "$ROOT/var/lib/dbus/machine-id"
chroot "$ROOT" apt-get clean
rm -rf "$ROOT/var/lib/apt/lists/"* "$ROOT/usr/share/doc/"* "$ROOT/usr/share/man/"*

step "kernel and initrd for direct boot"
mkdir -p "$WORK/box"
cp "$(readlink -f "$ROOT/vmlinuz")" "$WORK/box/vmlinuz"
cp "$(readlink -f "$ROOT/initrd.img")" "$WORK/box/initrd.img"
chmod 0644 "$WORK/box/vmlinuz" "$WORK/box/initrd.img"

step "ext4 image ($SIZE) from the tree, then qcow2"
mke2fs -q -t ext4 -L root -d "$ROOT" "$WORK/root.raw" "$SIZE" >/dev/null
qemu-img convert -f raw -O qcow2 "$WORK/root.raw" "$WORK/box/box.img"
rm -f "$WORK/root.raw"
vsize=$(( $(qemu-img info --output=json "$WORK/box/box.img" | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])') / 1073741824 + 1 ))
printf '{"provider": "libvirt", "format": "qcow2", "virtual_size": %d}\n' "$vsize" > "$WORK/box/metadata.json"
install -m 0644 "$HERE/guest/box.Vagrantfile" "$WORK/box/Vagrantfile"

step "packing $BOX"
tar -C "$WORK/box" -cf "$WORK/box.tar" metadata.json Vagrantfile box.img vmlinuz initrd.img
mv -f "$WORK/box.tar" "$BOX"
echo "$RECIPE" > "$STAMP"
step "done: $BOX ($(du -h "$BOX" | cut -f1)) in $(( $(date +%s) - t0 )) s"
