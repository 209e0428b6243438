#!/usr/bin/env bash
# Installs the system packages mirrorkit's demo and tests need on a Debian 12
# host. Idempotent and quick when everything is already there.
set -euo pipefail
packages=(podman runc debootstrap uidmap keepalived rsync fuse3 openssh-client
          iproute2 iptables python3-venv make lsyncd
          netavark aardvark-dns
          postgresql)  # PostgreSQL 15: tests/integration/test_mount_apps.py
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "system packages: all present"
    exit 0
fi
echo "system packages: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian enables keepalived on install; on the controller it has no job.
systemctl disable --now keepalived >/dev/null 2>&1 || true
# Likewise its default cluster: the tests run their own servers (own data
# directory on a mount, Unix socket in a temporary directory).
systemctl disable --now postgresql >/dev/null 2>&1 || true
