#!/bin/bash -e
# Host side: the units and their scripts.
F=../files
R="${ROOTFS_DIR:?}"
for script in wardtap-bypass wardtap-prepare wardtap-datapart wardtap-network; do
	install -D -m 0755 "$F/$script" "$R/usr/lib/wardtap/$script"
done
for unit in wardtap.service wardtap-bypass.service wardtap-provision.service \
	wardtap-provision-fault.service wardtap-datapart.service wardtap-network.service \
	etc-resolv.conf.mount; do
	install -D -m 0644 "$F/$unit" "$R/etc/systemd/system/$unit"
done
# This directory's README (image/README.md), which the units name as their documentation.
install -D -m 0644 ../files/dist/README.image.md "$R/usr/share/doc/wardtap/README.md"
