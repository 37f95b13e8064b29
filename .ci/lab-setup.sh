#!/bin/sh
# Install and start the libvirt lab's hypervisor side on a Debian 12 host without systemd.
# Idempotent: every step checks before it acts. Facts behind each step: ../shared/lab/README.md.
#   - Debian packages (no libvirt-daemon-system: it pulls in systemd)
#   - user/group libvirt-qemu, qemu.conf user/group root, libvirt's state directories
#   - virtlogd -d and libvirtd -d when not running, then wait until qemu:///system answers
#   - pip install libvirt-python when the module is missing
set -eu

PKGS="libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libvirt-dev qemu-system-x86 qemu-utils busybox-static qemu-guest-agent cpio pkg-config iproute2"
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "lab-setup: installing$missing"
    $SUDO apt-get update -qq || true
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

getent group libvirt-qemu >/dev/null || $SUDO groupadd -r libvirt-qemu
getent passwd libvirt-qemu >/dev/null || $SUDO useradd -r -g libvirt-qemu -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu

CONF=/etc/libvirt/qemu.conf
if ! grep -q '^user = "root"' "$CONF"; then
    echo 'user = "root"' | $SUDO tee -a "$CONF" >/dev/null
fi
if ! grep -q '^group = "root"' "$CONF"; then
    echo 'group = "root"' | $SUDO tee -a "$CONF" >/dev/null
fi
$SUDO mkdir -p /var/log/libvirt /var/run/libvirt /var/lib/libvirt /var/cache/libvirt

running() { pgrep -x "$1" >/dev/null 2>&1; }
# The daemons must not inherit this script's file descriptors: run as `flock LOCK .ci/lab-setup.sh`,
# the lock's descriptor would otherwise stay open in libvirtd and virtlogd, holding the lab lock
# for as long as they live. Close everything above stderr before exec.
detached() { $SUDO python3 -c 'import os, sys; os.closerange(3, 65536); os.execvp(sys.argv[1], sys.argv[1:])' "$@"; }
running virtlogd || detached virtlogd -d
running libvirtd || detached libvirtd -d

i=0
until virsh -c qemu:///system list >/dev/null 2>&1; do
    i=$((i + 1))
    if [ "$i" -gt 60 ]; then
        echo "lab-setup: libvirtd does not answer on qemu:///system after 60 s" >&2
        exit 1
    fi
    sleep 1
done

if ! python3 -c 'import libvirt' 2>/dev/null; then
    echo "lab-setup: pip install libvirt-python"
    python3 -m pip install -q libvirt-python
fi
echo "lab-setup: libvirtd ready on qemu:///system"
