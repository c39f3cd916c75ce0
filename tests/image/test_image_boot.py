"""The image, built and booted: image/stage-wardtap in a debootstrap chroot
(image/build-chroot.sh), laid out as pi-gen lays out the SD card (image/make-vm-disk.sh)
and booted in qemu with the ward on its bridged ports (vm.py).

What this machine cannot give: the Pi itself (arm64, its firmware, GPIO, the SoC watchdog);
the image is built for x86_64 with Debian's kernel standing in for Raspberry Pi OS's. All
the rest is the image's own: systemd, the units, the read-only root, the first-boot data
partition, provisioning, networkd's bridge, sshd, the daemon inline on br0.

The build takes about 4 minutes (packages and wheels from the registries) and each boot
about a minute under emulation. WARDTAP_IMAGE_BUILD=DIR reuses a build made earlier with
`python tests/image/vm.py DIR`.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import vm as vmkit
import ward
from fleet.brokerkit import Broker

from appliance.sources.netfilter import CHAIN

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="builds and boots an image: root"),
              pytest.mark.xdist_group("image")]     # one build, one worker


@pytest.fixture(scope="session")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    reuse = os.environ.get("WARDTAP_IMAGE_BUILD")
    if reuse and (Path(reuse) / "disk.img").exists():
        return Path(reuse)
    missing = vmkit.have_tools()
    assert not missing, f"missing host tools (scripts/setup.sh installs them): {missing}"
    return vmkit.build_image(tmp_path_factory.mktemp("image"))


@pytest.fixture
def tech_key(tmp_path: Path) -> Path:
    """The site's SSH key, which arrives only through provisioning."""
    key = tmp_path / "tech_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "it@hospital",
                    "-f", str(key)], check=True)
    return key


@pytest.fixture
def booted(image: Path, tmp_path: Path) -> Iterator[Any]:
    vms: list[vmkit.ApplianceVM] = []

    def boot(files: dict[str, bytes]) -> vmkit.ApplianceVM:
        vm = vmkit.ApplianceVM(image, tmp_path / f"vm{len(vms)}", files)
        vms.append(vm)
        return vm.start()
    yield boot
    for vm in vms:
        vm.close()


def test_stage_builds_in_a_chroot(image: Path) -> None:
    """The stage's steps ran: the venv works, the install manifest verifies, the units
    verify and the daemon's unit keeps its exposure score."""
    root = image / "root"
    run = lambda *cmd: subprocess.run(cmd, capture_output=True, text=True, timeout=300)  # noqa: E731
    out = run("chroot", str(root), "/opt/wardtap/bin/python", "-c",
              "import fastpath, appliance.system.provision, appliance.system.integrity;"
              " print('ok')")
    assert out.stdout.strip() == "ok", out.stderr
    # the image holds the product only: no demo ward, no test support
    out = run("chroot", str(root), "/opt/wardtap/bin/python", "-c",
              "import importlib.util as u; print([m for m in ('demoward', 'tests', 'support')"
              " if u.find_spec(m)])")
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
    demo = run("chroot", str(root), "/opt/wardtap/bin/wardtap", "demo")
    assert demo.returncode == 2 and "not installed here" in demo.stderr, demo.stderr
    out = run("chroot", str(root), "/opt/wardtap/bin/wardtap", "integrity", "verify",
              "/usr/share/wardtap/install.manifest.json")
    assert out.returncode == 0 and ": ok," in out.stdout, out.stdout + out.stderr
    fstab = (root / "etc/fstab").read_text()
    assert re.search(r"^\S+\s+/\s+ext4\s+(\S+,)?ro(,\S+)?\s", fstab, re.M), fstab
    assert "LABEL=wardtap-data" in fstab
    assert "init=" not in (root / "boot/firmware/cmdline.txt").read_text()
    units = ["wardtap.service", "wardtap-bypass.service", "wardtap-provision.service",
             "wardtap-provision-fault.service", "wardtap-datapart.service",
             "wardtap-network.service"]
    out = run("systemd-analyze", "verify", f"--root={root}", *units)
    assert out.returncode == 0, out.stdout + out.stderr
    out = run("systemd-analyze", "security", "--offline=yes", f"--root={root}", "--no-pager",
              "wardtap.service")
    score = float(re.search(r"Overall exposure level for wardtap.service: ([0-9.]+)",
                            out.stdout).group(1))
    assert score < 3.0, out.stdout[-2000:]


def test_bad_provisioning_says_why_and_stays_in_bypass(booted: Any, image: Path,
                                                       tech_key: Path) -> None:
    """An expired client certificate: the console says so, nothing is configured, the
    daemon does not start, and the bridge forwards the ward's traffic untouched."""
    vm = booted(ward.provisioning("mqtts://broker.hosp.example:8883",
                                   tech_key.with_suffix(".pub").read_text().strip(),
                                   expired=True))
    vm.wait_console(r"PROVISIONING FAILED", timeout=300)
    vm.wait_console(r"\[broker\.cert\]: client certificate .* expired on", timeout=30)
    admin = image / "admin_key"
    vm.wait_ssh(admin, timeout=120)
    # the site's key was not installed: nothing of the file was applied
    assert vm.ssh("true", tech_key, check=False).returncode != 0
    assert vm.unit(admin, "wardtap.service")["ActiveState"] == "inactive"
    assert vm.unit(admin, "wardtap-provision.service")["Result"] == "exit-code"
    # the front panel's fault pattern runs (simulated pins: no GPIO in the VM)
    fault = vm.unit(admin, "wardtap-provision-fault.service")
    assert fault["ActiveState"] == "active", vm.ssh(
        "journalctl -b -u wardtap-provision-fault.service --no-pager | tail -20", admin).stdout
    state = vm.ssh("ls -A /var/lib/wardtap; ls /boot/firmware", admin).stdout.split()
    assert "config" not in state and "wardtap-provision.toml" in state
    # bypass: the bridge forwards, nothing filters
    assert vm.ssh(f"sudo iptables -S {CHAIN}", admin, check=False).returncode != 0
    vm.run_in("ward", f"ping -c 3 -W 5 {vmkit.UPLINK_IP}")


def test_provisioned_appliance_enforces_and_its_watchdog_restarts_it(
        booted: Any, tmp_path: Path, tech_key: Path) -> None:
    """First boot with a good file: provisioned, enforcing inline on br0, reporting to the
    broker. Then the daemon hangs (SIGSTOP): systemd's watchdog kills it within WatchdogSec
    and starts it again; the ward's flows keep going and new ones pass (fail open)."""
    broker = Broker(tmp_path / "broker", server_ips=("127.0.0.1", "10.0.2.2"))
    broker.start()
    try:
        assert broker.ca is not None
        cert, key = broker.ca.issue(ward.APPLIANCE)
        client = (broker.ca.ca_path.read_bytes(), Path(cert).read_bytes(),
                  Path(key).read_bytes())
        vm = booted(ward.provisioning(f"mqtts://10.0.2.2:{broker.tls_port}",
                                       tech_key.with_suffix(".pub").read_text().strip(),
                                       client=client))
        vm.wait_ssh(tech_key, timeout=300)            # the provisioned key works
        unit = ward.wait_active(vm, tech_key, timeout=240)
        assert unit["WatchdogUSec"] == "15s"
        left = vm.ssh("ls /boot/firmware; readlink /etc/wardtap", tech_key).stdout
        assert "wardtap-provision.toml" not in left, left    # it held a private key
        assert "/var/lib/wardtap/config" in left, left
        # the image's and the configuration's manifests verify (no alarm on a clean boot)
        vmkit.wait_for(lambda: re.search(r"integrity: [2-9] manifests, \d+ files verified", vm.ssh(
            "journalctl -b -u wardtap.service --no-pager", tech_key).stdout), timeout=120,
            interval=2, what="the integrity check at start")
        assert "integrity alarm" not in vm.ssh("journalctl -b -u wardtap.service --no-pager",
                                               tech_key).stdout
        live = vm.ssh("systemd-analyze security --no-pager wardtap.service | tail -1",
                      tech_key).stdout
        assert float(re.search(r"level for wardtap.service: ([0-9.]+)", live).group(1)) < 3.0

        # enforcing: the policy's flows pass, others are dropped
        vm.run_in("ward", f"ping -c 2 -W 5 {vmkit.UPLINK_IP}")
        listener = vm.popen_in("uplink", ["nc", "-l", "-k", str(ward.DENIED_PORT)])
        try:
            # the listener answers on the uplink host itself: a refusal below is the policy
            vmkit.wait_for(lambda: vm.run_in("uplink", f"nc -z -w 2 {vmkit.UPLINK_IP} "
                                             f"{ward.DENIED_PORT}", check=False).returncode == 0,
                           timeout=20, interval=0.2, what="the uplink host's listener")
            denied = vm.run_in("ward", f"nc -z -w 3 {vmkit.UPLINK_IP} {ward.DENIED_PORT}",
                               check=False)
            assert denied.returncode != 0, "a flow outside the policy got through"
        finally:
            listener.kill()
            listener.wait(timeout=10)

        # reporting: the appliance on the broker, with its certificate's name
        def connections() -> int:
            return broker.log().count(f"u'{ward.APPLIANCE}')")
        vmkit.wait_for(connections, timeout=120, interval=1, what="the appliance on the broker")

        before = connections()
        figures = ward.stall_and_restart(vm, tech_key)
        print(f"\nwatchdog: {figures}")
        vmkit.wait_for(lambda: connections() > before, timeout=120, interval=1,
                       what="the restarted daemon on the broker")
    finally:
        broker.stop(kill=True)

    assert figures["restarts"] == 1
    # systemd kills at WatchdogSec after the last ping, which came before the stall (0.5 s:
    # its timer's and the journal's granularity)
    assert figures["stall_to_kill_s"] <= figures["watchdog_sec"] + 0.5, figures
    # the stream: forwarded by the kernel while the daemon hangs, queued again for the new
    # daemon's first loop turns after the restart (a new epoch), not lost
    assert figures["stream_lost"] <= figures["stream_sent"] // 100, figures
    # new flows: the inline watchdog fails open 0.5 s into the stall; those already waiting
    # in the hung daemon's queue are lost with it (TCP retransmits them). New flows got
    # through again long before systemd's watchdog even killed the daemon: that is the
    # fail-open, not the restart (the blackout also counts probes late by 0.25 s, which an
    # emulated VM on a loaded host makes 3-6 s here)
    assert figures["new_flow_blackout_ms"] < figures["watchdog_sec"] * 1000 / 2, figures
    assert figures["new_flows_lost"] <= figures["new_flows_sent"] // 10, figures
