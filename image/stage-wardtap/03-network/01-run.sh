#!/bin/bash -e
# Host side: the inline bridge (br0 over eth0 and eth1, no address anywhere on it) and the
# default management network (DHCP on eth2) for systemd-networkd. See image/README.md.
F=../files
R="${ROOTFS_DIR:?}"
for file in 10-wardtap-br0.netdev 20-wardtap-ports.network 30-wardtap-br0.network \
	90-wardtap-mgmt-default.network; do
	install -D -m 0644 "$F/$file" "$R/etc/systemd/network/$file"
done
install -D -m 0755 "$F/wardtap-network" "$R/usr/lib/wardtap/wardtap-network"
