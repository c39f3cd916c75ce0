#!/usr/bin/env bash
# Installs everything wardtap needs on a fresh Debian 12 or Raspberry Pi OS (bookworm)
# machine: the system packages, a virtualenv in .venv, and the Cython fast path built in
# place. Safe to run again; it only installs what is missing. Needs root (or sudo) for apt.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  python3 python3-venv python3-dev build-essential   # the Python build of the fast path
  tshark tcpdump                                     # deep dissection, differential tests, bench
  mosquitto mosquitto-clients                        # the MQTT broker for fleet reporting tests
  iproute2 iptables kmod conntrack                   # datapaths: namespaces, bridge, netfilter
  libnetfilter-queue1 libnetfilter-queue-dev         # NFQUEUE (inline enforcement)
  iputils-ping netcat-openbsd                        # end-to-end tests: real traffic
  dnsmasq-base chrony                                # end-to-end tests: real DNS and NTP daemons
  iperf3 valgrind                                    # bench: throughput, instruction counts
  libndpi-bin                                        # bench: nDPI's ndpiReader, side by side
  shellcheck systemd                                 # image tests: scripts, units (systemd-analyze)
  debootstrap dosfstools mtools fdisk e2fsprogs      # image tests: the stage built, its disk laid out
  openssh-client                                     # image tests: into the booted image
  rsyslog rsyslog-gnutls                             # SIEM export tests: a real syslog receiver (TLS)
  isc-dhcp-client busybox lldpd                      # inventory tests: a ward of real daemons
  openssl                                            #   (tests/realward.py, in namespaces only)
  postgresql                                         # fleet console: collectors and console on PostgreSQL
  chromium chromium-driver                           # fleet console tests: a real headless browser
)
# image tests: the built image booted (qemu for this machine's architecture)
case "$(dpkg --print-architecture)" in
  arm64) APT_PACKAGES+=(qemu-system-arm) ;;
  *) APT_PACKAGES+=(qemu-system-x86) ;;
esac

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then sudo_cmd=(sudo); fi

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
log=.venv/setup.log
quiet() { "$@" >>"$log" 2>&1 || { echo "setup: failed: $*; see $log" >&2; tail -20 "$log" >&2; exit 1; }; }
: >"$log"
quiet .venv/bin/python -m pip install --upgrade pip setuptools wheel "cython>=3.0,<4" numpy
extras="test,bench,dissect,fleet,console"
case "$(uname -m)" in aarch64|armv7l) extras="$extras,pi" ;; esac
# compat editable mode: a plain .pth path entry, no import hook on every start-up.
quiet .venv/bin/python -m pip install --no-build-isolation -e ".[${extras}]" \
  --config-settings editable_mode=compat
# Build the extension next to its sources, so `python -m pytest` from here imports it.
quiet .venv/bin/python setup.py build_ext --inplace
.venv/bin/python -c "import fastpath, appliance.cli" && echo "setup: ok ($(.venv/bin/wardtap --version))"
