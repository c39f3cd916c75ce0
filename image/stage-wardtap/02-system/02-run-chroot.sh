#!/bin/bash -e
# In the target root: services an appliance with a read-only root does not run, the admin
# account with keys only, networkd/resolved/timesyncd instead of NetworkManager.

# Passwords are not used anywhere: the admin logs in with an SSH key (console: none).
passwd --lock "${FIRST_USER_NAME:-wardadmin}"
usermod --append --groups wardtap "${FIRST_USER_NAME:-wardadmin}"

for unit in NetworkManager.service dhcpcd.service ModemManager.service wpa_supplicant.service \
	avahi-daemon.service avahi-daemon.socket bluetooth.service hciuart.service \
	triggerhappy.service triggerhappy.socket dphys-swapfile.service \
	regenerate_ssh_host_keys.service rpi-eeprom-update.service \
	apt-daily.timer apt-daily-upgrade.timer man-db.timer logrotate.timer e2scrub_all.timer \
	e2scrub_reap.service fstrim.timer; do
	systemctl mask "$unit"
done
systemctl enable systemd-networkd.service systemd-timesyncd.service
systemctl enable ssh.service
