#!/bin/bash -e
# In the target root (aarch64, under qemu on the build host): the service user and the
# venv in /opt/wardtap, built from the sdist, with the system's numpy and gpiozero/lgpio
# (--system-site-packages); the Cython fast path is compiled here, for the Pi.

# The service account: no login, no home; gpio for the LEDs, relay and button.
if ! getent group wardtap >/dev/null; then
	groupadd --system wardtap
fi
if ! getent passwd wardtap >/dev/null; then
	useradd --system --gid wardtap --groups gpio --no-create-home --home-dir /nonexistent \
		--shell /usr/sbin/nologin --comment "wardtap appliance daemon" wardtap
fi

build_deps=(build-essential python3-dev)
apt-get install -y --no-install-recommends "${build_deps[@]}"

python3 -m venv --system-site-packages /opt/wardtap
/opt/wardtap/bin/pip install --no-cache-dir --upgrade pip
/opt/wardtap/bin/pip install --no-cache-dir -r /tmp/wardtap-dist/requirements-image.txt
/opt/wardtap/bin/pip install --no-cache-dir "$(ls /tmp/wardtap-dist/wardtap-*.tar.gz)[fleet,dissect]"
/opt/wardtap/bin/python -c "import fastpath, appliance.cli, appliance.system.provision"
# The root file system is read-only at run time: compile all byte code now, so nothing
# tries (and fails) to write it, and the integrity manifest covers what actually runs.
/opt/wardtap/bin/python -m compileall -q /opt/wardtap

apt-get purge -y --auto-remove "${build_deps[@]}"
rm -rf /tmp/wardtap-dist /root/.cache
