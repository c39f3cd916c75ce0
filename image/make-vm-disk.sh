#!/bin/bash
# image/make-vm-disk.sh ROOT OUT: a bootable disk from a root built by image/build-chroot.sh,
# laid out as pi-gen's export lays out the SD card image: an MBR with p1 the FAT boot
# partition (/boot/firmware) and p2 the ext4 root, the rest of the disk left free for
# wardtap-datapart's first-boot data partition. As pi-gen's export does, ROOTDEV/BOOTDEV in
# fstab and cmdline.txt become PARTUUIDs. For qemu, the kernel and initrd are copied out
# (the Pi's firmware reads them from p1 instead) and OUT/cmdline holds the kernel command
# line: cmdline.txt with the serial console of a PC. Needs mkfs.ext4, mkfs.vfat, mtools,
# sfdisk; no loop devices or mounts. ROOT itself is edited (fstab, cmdline.txt), as
# pi-gen's export edits its copy. Files go onto the boot partition of a copy with
# `mcopy -i disk.img@@1M FILE ::/` (p1 starts at 1 MiB).
#
#   OUT/disk.img  OUT/vmlinuz  OUT/initrd  OUT/cmdline  OUT/arch (Debian's name: amd64, arm64)
set -euo pipefail
ROOT=${1:?usage: image/make-vm-disk.sh ROOT OUT}
OUT=${2:?usage: image/make-vm-disk.sh ROOT OUT}
DATA_MIB=${DATA_MIB:-400}     # free space for the data partition (wardtap-datapart wants 256)
LABEL_ID=0x77a7d000
PARTUUID=${LABEL_ID#0x}

mkdir -p "$OUT"
rm -f "$OUT/disk.img" "$OUT/boot.img" "$OUT/root.img"
sed -i -E -e "s#^BOOTDEV([[:space:]])#PARTUUID=$PARTUUID-01\1#" \
	-e "s#^ROOTDEV([[:space:]])#PARTUUID=$PARTUUID-02\1#" "$ROOT/etc/fstab"
sed -i -e "s#root=ROOTDEV#root=PARTUUID=$PARTUUID-02#" "$ROOT/boot/firmware/cmdline.txt"

kernel=$(find "$ROOT/boot" -maxdepth 1 -name 'vmlinuz-*' | sort | tail -n 1)
initrd=$(find "$ROOT/boot" -maxdepth 1 -name 'initrd.img-*' | sort | tail -n 1)
if [ -z "$kernel" ] || [ -z "$initrd" ]; then
	echo "make-vm-disk: no kernel or initrd in $ROOT/boot" >&2
	exit 1
fi
chroot "$ROOT" dpkg --print-architecture >"$OUT/arch"
cp "$kernel" "$OUT/vmlinuz"
cp "$initrd" "$OUT/initrd"
# Serial console instead of the Pi's serial0/tty1; classic NIC names (eth0, eth1, eth2 in
# PCI order), as Raspberry Pi OS names its ports.
sed -E -e 's/console=[^ ]+ ?//g' "$ROOT/boot/firmware/cmdline.txt" |
	awk '{ print "console=ttyS0,115200 net.ifnames=0 panic=-1 " $0 }' >"$OUT/cmdline"

root_mib=$(( $(du -smx "$ROOT" | cut -f1) * 5 / 4 + 200 ))
mkfs.ext4 -q -F -L rootfs -d "$ROOT" "$OUT/root.img" "${root_mib}M"
truncate -s 64M "$OUT/boot.img"
mkfs.vfat -n BOOTFS "$OUT/boot.img" >/dev/null
if [ -n "$(ls -A "$ROOT/boot/firmware")" ]; then
	mcopy -s -i "$OUT/boot.img" "$ROOT"/boot/firmware/* ::/
fi
truncate -s "$((1 + 64 + root_mib + DATA_MIB))M" "$OUT/disk.img"
printf 'label: dos\nlabel-id: %s\nstart=1MiB, size=64MiB, type=c\nstart=65MiB, size=%sMiB, type=83\n' \
	"$LABEL_ID" "$root_mib" | sfdisk -q "$OUT/disk.img"
dd if="$OUT/boot.img" of="$OUT/disk.img" bs=1M seek=1 conv=notrunc,sparse status=none
dd if="$OUT/root.img" of="$OUT/disk.img" bs=1M seek=65 conv=notrunc,sparse status=none
rm -f "$OUT/boot.img" "$OUT/root.img"
