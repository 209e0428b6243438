#!/bin/sh
# Runs once inside `podman build`: turns the package set into a lab host.
set -eu
src=/tmp/mirrorkit-lab

# systemd in a container: no consoles, logins, udev or root remount.
systemctl mask getty.target console-getty.service systemd-logind.service \
    systemd-udevd.service systemd-udevd-control.socket systemd-udevd-kernel.socket \
    systemd-remount-fs.service systemd-firstboot.service \
    sys-kernel-config.mount sys-kernel-debug.mount sys-kernel-tracing.mount \
    sys-fs-fuse-connections.mount
# Debian enables keepalived on install; the mirrorkit_vip role enables it.
systemctl disable keepalived.service
systemctl enable ssh.service

# sshd: root with keys only; per-container host keys made at first boot.
install -m 0644 $src/sshd-lab.conf /etc/ssh/sshd_config.d/mirrorkit-lab.conf
install -d -m 0755 /etc/systemd/system/ssh.service.d
install -m 0644 $src/ssh-hostkeys.conf /etc/systemd/system/ssh.service.d/mirrorkit-hostkeys.conf
rm -f /etc/ssh/ssh_host_*
install -d -m 0700 /root/.ssh

# Each container gets its own machine-id at boot.
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id
