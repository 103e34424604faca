#!/bin/sh
# Runs inside the freshly debootstrapped root filesystem (chroot, as root) before it is
# imported as the base image. Every template inherits what is set up here.
set -eu

# The unprivileged account sandboxes run as; uid/gid 1000 so files written into /workspace
# have a predictable owner on the host side too.
groupadd --gid 1000 user
useradd --uid 1000 --gid 1000 --create-home --home-dir /home/user --shell /bin/bash user
install -d -o 1000 -g 1000 -m 755 /workspace

# C.UTF-8 is compiled into glibc, so no locale-gen is needed; this only makes it the default
# for login shells (the image ENV covers everything else).
echo 'LANG=C.UTF-8' >/etc/default/locale

# debootstrap copies the build host's resolver and hostname; docker supplies its own for every
# container, and the host's values must not leak into the image.
: >/etc/resolv.conf
: >/etc/hostname
: >/etc/machine-id

# Sandboxes are driven by programs, not read by people: drop documentation, man pages and
# message translations (about 70 MB), now and for every package installed later.
cat >/etc/dpkg/dpkg.cfg.d/paddock-nodoc <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
CFG
find /usr/share/doc -mindepth 1 ! -type d ! -name copyright -delete
find /usr/share/doc -mindepth 1 -type d -empty -delete
rm -rf /usr/share/man/* /usr/share/info/*
find /usr/share/locale -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +

apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt/* /var/log/dpkg.log \
    /var/log/alternatives.log /var/log/bootstrap.log /tmp/* /root/.bash_history
