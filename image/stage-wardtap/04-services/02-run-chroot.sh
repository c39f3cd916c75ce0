#!/bin/bash -e
# In the target root: enable the units, then record the integrity manifest of everything
# installed (the daemon verifies it at start and every 15 minutes; appliance/system/integrity.py).
systemctl enable wardtap.service wardtap-provision.service wardtap-network.service

# systemd-resolved last, and without its /etc/resolv.conf symlink: the chroot steps after
# this one (pi-gen's export) still need the build's DNS, and the read-only root keeps a
# plain file; etc-resolv.conf.mount binds resolved's stub over it at run time.
cp --dereference /etc/resolv.conf /etc/resolv.conf.build
apt-get install -y --no-install-recommends systemd-resolved
rm -f /etc/resolv.conf
mv /etc/resolv.conf.build /etc/resolv.conf
systemctl enable systemd-resolved.service etc-resolv.conf.mount
# wardtap-datapart runs as a requirement of the data mount (fstab x-systemd.requires).
install -d -m 0755 /usr/share/wardtap
/opt/wardtap/bin/wardtap integrity write \
	--root /opt/wardtap --root /usr/lib/wardtap \
	--root /usr/lib/python3/dist-packages \
	/etc/systemd/system/wardtap.service /etc/systemd/system/wardtap-bypass.service \
	/etc/systemd/system/wardtap-provision.service /etc/systemd/system/wardtap-network.service \
	/etc/systemd/system/wardtap-datapart.service \
	/etc/systemd/system/wardtap-provision-fault.service /etc/systemd/system/etc-resolv.conf.mount \
	/etc/systemd/network/10-wardtap-br0.netdev /etc/systemd/network/20-wardtap-ports.network \
	/etc/systemd/network/30-wardtap-br0.network \
	/etc/ssh/sshd_config.d/50-wardtap.conf /etc/sysctl.d/50-wardtap.conf \
	--out /usr/share/wardtap/install.manifest.json
