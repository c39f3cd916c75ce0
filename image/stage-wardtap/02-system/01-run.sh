#!/bin/bash -e
# Host side: the hardened base system. Read-only root with tmpfs for what must be written,
# the data partition for /var/lib/wardtap, journald in RAM, the hardware watchdog, SSH with
# keys only, bridge netfilter at boot, no Wi-Fi or Bluetooth.
F=../files
R="${ROOTFS_DIR:?}"

# Read-only root: pi-gen's fstab has "defaults,noatime" on / (ROOTDEV, replaced at export).
sed -i -E '/^ROOTDEV[[:space:]]/ s/defaults,noatime/defaults,noatime,ro/' "$R/etc/fstab"
grep -Eq '^ROOTDEV[[:space:]].*,ro[[:space:]]' "$R/etc/fstab"
grep -q 'wardtap-data' "$R/etc/fstab" || cat "$F/fstab.append" >>"$R/etc/fstab"
install -d -m 0755 "$R/var/lib/wardtap"
# /etc/wardtap is the active provisioned configuration on the data partition.
ln -sfn /var/lib/wardtap/config "$R/etc/wardtap"

# The root is never expanded to fill the card: the free space becomes the data partition
# (wardtap-datapart). Raspberry Pi OS's first-boot resize runs from init= on the cmdline.
sed -i -E 's# ?init=/usr/lib/raspberrypi-sys-mods/firstboot##' "$R/boot/firmware/cmdline.txt"
# The SoC's watchdog, fed by systemd (system.conf.d); no radios on a ward appliance.
for line in "dtparam=watchdog=on" "dtoverlay=disable-wifi" "dtoverlay=disable-bt"; do
	grep -qxF "$line" "$R/boot/firmware/config.txt" || echo "$line" >>"$R/boot/firmware/config.txt"
done

install -D -m 0644 "$F/journald.conf" "$R/etc/systemd/journald.conf.d/50-wardtap.conf"
install -D -m 0644 "$F/watchdog.conf" "$R/etc/systemd/system.conf.d/50-wardtap-watchdog.conf"
install -D -m 0644 "$F/sshd.conf" "$R/etc/ssh/sshd_config.d/50-wardtap.conf"
install -D -m 0644 "$F/ssh-hostkeys.conf" "$R/etc/systemd/system/ssh.service.d/50-wardtap.conf"
install -D -m 0644 "$F/sysctl.conf" "$R/etc/sysctl.d/50-wardtap.conf"
install -D -m 0644 "$F/modules.conf" "$R/etc/modules-load.d/wardtap.conf"
install -D -m 0440 "$F/sudoers" "$R/etc/sudoers.d/50-wardtap"
# Host keys are made on the data partition at first boot (ssh.service drop-in).
rm -f "$R"/etc/ssh/ssh_host_*
