#!/bin/bash
# image/build-chroot.sh: build image/stage-wardtap in a Debian bookworm chroot made with
# debootstrap, the way pi-gen runs it (NN-packages, NN-run.sh on the host, NN-run-chroot.sh
# in the chroot). tests/image/test_image_boot.py checks the result and boots it
# (image/make-vm-disk.sh, qemu); `make -C image vm` runs both on their own.
#
# It builds for ARCH (default: this machine's; ARCH=arm64 on an x86_64 host runs the
# chroot under qemu-user through binfmt_misc, as pi-gen does, and takes about 30 minutes).
# What pi-gen's stage0-2 provide is stood in for: the
# first user (sudo without a password, like pi-gen's 010_pi-nopasswd), the gpio group,
# pi-gen's fstab, the boot partition's cmdline.txt/config.txt and, for the VM, a kernel
# (Debian's linux-image for this architecture instead of Raspberry Pi OS's). Raspberry Pi
# OS-only packages (python3-lgpio, python3-rpi-lgpio) are left out. It downloads Debian
# packages and PyPI wheels: about 4 minutes here.
#
#   image/build-chroot.sh ROOT        # ROOT is removed first
#   BASE_CACHE=DIR image/build-chroot.sh ROOT   # keep/reuse the base (see below) in DIR
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
ROOT=${1:?usage: image/build-chroot.sh ROOT}
STAGE=$REPO/image/stage-wardtap
MIRROR=${MIRROR:-http://deb.debian.org/debian}
ARCH=${ARCH:-$(dpkg --print-architecture)}
RPI_ONLY="python3-lgpio python3-rpi-lgpio"
start=$(date +%s)
step() { echo "== $(($(date +%s) - start)) s: $*"; }

command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap >/dev/null
cleanup() {
	for m in dev/pts dev sys proc; do umount -l "$ROOT/$m" 2>/dev/null || true; done
}
trap cleanup EXIT
cleanup
if [ -e "$ROOT" ] && findmnt -R -n -o TARGET "$ROOT" >/dev/null 2>&1; then
	echo "build-chroot: something is still mounted under $ROOT; not removing it" >&2
	exit 1
fi
rm -rf --one-file-system "$ROOT"

if [ "$ARCH" != "$(dpkg --print-architecture)" ]; then
	# a foreign architecture: its binaries run under qemu-user (qemu-user-static)
	case "$ARCH" in arm64) qemu=aarch64 ;; amd64) qemu=x86_64 ;; *)
		echo "build-chroot: ARCH must be arm64 or amd64 (Raspberry Pi OS Lite 64-bit)" >&2
		exit 1 ;;
	esac
	[ -e /proc/sys/fs/binfmt_misc/status ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
	update-binfmts --enable "qemu-$qemu" >/dev/null 2>&1 || true
	if [ ! -e "/proc/sys/fs/binfmt_misc/qemu-$qemu" ]; then
		echo "build-chroot: cannot run $ARCH programs here: install qemu-user-static and binfmt-support" >&2
		exit 1
	fi
fi

mount_api() {
	mount -t proc proc "$ROOT/proc"
	mount --bind /sys "$ROOT/sys"
	mount --bind /dev "$ROOT/dev"
	mount --bind /dev/pts "$ROOT/dev/pts"
	cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
	# A build host behind a TLS-inspecting proxy: its extra CA certificates and pip settings.
	if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
		cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/"
		chroot "$ROOT" update-ca-certificates >/dev/null 2>&1
	fi
	if [ -f /etc/pip.conf ]; then cp /etc/pip.conf "$ROOT/etc/pip.conf"; fi
}

# The base (debootstrap, the stand-ins for pi-gen's stage0-2, the kernel) depends only on
# this script, the architecture and the mirror, and is most of the build's time. With
# BASE_CACHE set, it is kept there as a tar per key and ISO week (a week's Debian updates
# still arrive) and unpacked instead of built again; every step of the stage runs fresh.
base_key=$(sha256sum <"$REPO/image/build-chroot.sh" | cut -c1-16)-$ARCH-$(printf %s "$MIRROR" | sha256sum | cut -c1-8)-$(date +%G-W%V)
base_tar=${BASE_CACHE:+$BASE_CACHE/base-$base_key.tar}
if [ -n "$base_tar" ] && [ -f "$base_tar" ]; then
	step "base from $base_tar"
	mkdir -p "$ROOT"
	tar -C "$ROOT" --xattrs --acls --numeric-owner -xpf "$base_tar"
	mount_api
else
	step "debootstrap bookworm into $ROOT"
	debootstrap --arch="$ARCH" --variant=minbase --include=systemd,systemd-sysv,openssh-server,sudo,passwd,ca-certificates,udev \
		bookworm "$ROOT" "$MIRROR" >"$ROOT.debootstrap.log" 2>&1
	mount_api

	step "stand-ins for pi-gen stage0-2"
	chroot "$ROOT" /bin/bash -e <<'IN'
groupadd --system gpio
useradd --create-home --shell /bin/bash --groups sudo,adm wardadmin
echo "wardadmin ALL=(ALL) NOPASSWD: ALL" >/etc/sudoers.d/010_wardadmin-nopasswd
chmod 0440 /etc/sudoers.d/010_wardadmin-nopasswd
IN
	chroot "$ROOT" /usr/bin/env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		--no-install-recommends "linux-image-$ARCH" initramfs-tools >/dev/null
	printf 'proc /proc proc defaults 0 0\nBOOTDEV /boot/firmware vfat defaults 0 2\nROOTDEV / ext4 defaults,noatime 0 1\n' >"$ROOT/etc/fstab"
	mkdir -p "$ROOT/boot/firmware"
	echo "console=serial0,115200 console=tty1 root=ROOTDEV rootfstype=ext4 fsck.repair=yes rootwait quiet init=/usr/lib/raspberrypi-sys-mods/firstboot" >"$ROOT/boot/firmware/cmdline.txt"
	echo "arm_64bit=1" >"$ROOT/boot/firmware/config.txt"
	if [ -n "$base_tar" ]; then
		step "base saved to $base_tar"
		mkdir -p "$BASE_CACHE"
		rm -f "$BASE_CACHE"/base-*-"$ARCH"-*.tar*   # one base per architecture is kept
		cleanup                                     # no /proc, /sys or /dev in the tar
		tar -C "$ROOT" --one-file-system --xattrs --acls --numeric-owner \
			--exclude=./etc/resolv.conf --exclude=./etc/pip.conf -cf "$base_tar.$$" .
		mv "$base_tar.$$" "$base_tar"
		mount_api
	fi
fi
export ROOTFS_DIR=$ROOT FIRST_USER_NAME=wardadmin
# pi-gen's PUBKEY_SSH_FIRST_USER: an administrator key baked into the image
if [ -n "${PUBKEY_SSH_FIRST_USER:-}" ]; then
	install -d -m 0700 "$ROOT/home/wardadmin/.ssh"
	echo "$PUBKEY_SSH_FIRST_USER" >"$ROOT/home/wardadmin/.ssh/authorized_keys"
	chroot "$ROOT" chown -R wardadmin:wardadmin /home/wardadmin/.ssh
fi

step "sdist"
make -s -C image dist >/dev/null

on_chroot() { chroot "$ROOT" /usr/bin/env FIRST_USER_NAME="$FIRST_USER_NAME" /bin/bash -e; }
for sub in "$STAGE"/[0-9][0-9]-*/; do
	for i in $(seq -w 0 99); do
		if [ -f "$sub/$i-debconf" ]; then
			step "$(basename "$sub")/$i-debconf"
			{ echo "debconf-set-selections <<'SEL'"; cat "$sub/$i-debconf"; echo "SEL"; } | on_chroot
		fi
		if [ -f "$sub/$i-packages" ]; then
			step "$(basename "$sub")/$i-packages"
			packages=$(sed -e 's/#.*//' "$sub/$i-packages" | tr -s ' \n' ' ')
			for skip in $RPI_ONLY; do packages=${packages//$skip/}; done
			echo "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $packages >/dev/null" | on_chroot
		fi
		if [ -x "$sub/$i-run.sh" ]; then
			step "$(basename "$sub")/$i-run.sh"
			(cd "$sub" && "./$i-run.sh")
		fi
		if [ -f "$sub/$i-run-chroot.sh" ]; then
			step "$(basename "$sub")/$i-run-chroot.sh"
			on_chroot <"$sub/$i-run-chroot.sh" >"$ROOT.$(basename "$sub")-$i.log" 2>&1 ||
				{ tail -30 "$ROOT.$(basename "$sub")-$i.log"; exit 1; }
		fi
	done
done

step "clean"
chroot "$ROOT" apt-get clean
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT/etc/resolv.conf.build"
cleanup
step "done"
