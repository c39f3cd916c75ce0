"""A `role` group inline, on real traffic: the appliance learns which device is the ward's
DNS server from dnsmasq's answers, and the policy's `role = ["DNS server"]` group (what a
MUD file's `urn:ietf:params:mud:dns` controller imports as) then allows DNS to it in
enforce mode, and nothing the role does not cover.

    ward (10.77.0.10)  --  [ appliance: br0, inline ]  --  uplink 10.77.0.20
    getent (glibc's resolver)                                dnsmasq

Inline, the classifier sees a conversation's first packets only, so it learns no server
role on the uplink side by itself (docs/policy.md, "Selecting devices by role"). The role is
learned the way a site would: traffic captured on the ward port (tcpdump, as a mirror port
would give it) replayed into the store (`wardtap replay --db`); the inline appliance then
resolves the role from that store when it loads the policy. Every wait is bounded.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT
from inlinekit import InlineAppliance
from netns import UPLINK_IP, Ward, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")

NTP_PROBE = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.sendto(b"\\x1b" + bytes(47), (sys.argv[1], 123))
"""


def policy(ward_mac: str, version: int = 1) -> str:
    return f"""
[policy]
name = "roles"
version = {version}

[groups.ward]
mac = ["{ward_mac}"]

[groups.dns-servers]
role = ["DNS server"]

[groups.ntp-servers]
role = ["NTP server"]

[[rules]]
name = "dns"
from = "ward"
to = "dns-servers"
proto = "udp"
ports = [53]

[[rules]]
name = "ntp"
from = "ward"
to = "ntp-servers"
proto = "udp"
ports = [123]
"""


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Ward]:
    os.chmod(tmp_path, 0o755)
    with Ward() as ward:
        resolv = Path("/etc/netns") / ward.ward
        resolv.mkdir(parents=True, exist_ok=True)
        (resolv / "resolv.conf").write_text(f"nameserver {UPLINK_IP}\noptions timeout:1 "
                                            "attempts:1\n")
        log = open(tmp_path / "dnsmasq.log", "w")  # noqa: SIM115  (owned by the process)
        dnsmasq = ward.popen(ward.uplink, [
            "dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts",
            "--conf-file=/dev/null", f"--listen-address={UPLINK_IP}", "--bind-interfaces",
            "--address=/pumps.vendor.example/10.77.0.21", f"--pid-file={tmp_path}/dns.pid",
            "--user=root", "--log-facility=-"], stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: ward.exec(ward.uplink, ["ss", "-lnuH", "sport", "= :53"],
                                       check=False).stdout.strip(), timeout=15,
                     what="dnsmasq to listen")
            yield ward
        finally:
            dnsmasq.terminate()
            dnsmasq.wait(timeout=10)
            log.close()
            shutil.rmtree(resolv, ignore_errors=True)


def resolves(ward: Ward) -> bool:
    out = ward.exec(ward.ward, ["getent", "ahostsv4", "pumps.vendor.example"], check=False,
                    timeout=10)
    return "10.77.0.21" in out.stdout


def roles_in_store(db: Path, mac: str) -> tuple[str, str] | None:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=2) as conn:
        row = conn.execute("SELECT class, roles FROM inventory WHERE mac = ?",
                           (mac,)).fetchone()
    return None if row is None else (row[0], row[1])


def learn(ward: Ward, tmp_path: Path) -> Path:
    """The ward port captured while the ward resolves names, replayed into a store: the
    inventory then knows dnsmasq's host as a DNS server (its class and its role)."""
    capture = tmp_path / "ward.pcap"
    dump = ward.popen(ward.appliance, ["tcpdump", "-i", "ward0", "-U", "-s", "0", "-w",
                                       str(capture)],
                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert dump.stderr is not None and "listening" in dump.stderr.readline()
    try:
        # until the capture holds the answers (tcpdump may start a moment after it says so)
        wait_for(lambda: resolves(ward) and capture.stat().st_size > 600, timeout=20,
                 interval=0.2, what="dnsmasq's answers in the capture")
    finally:
        dump.terminate()
        dump.wait(timeout=10)
    db = tmp_path / "wardtap.db"
    subprocess.run([sys.executable, "-m", "appliance.cli", "replay", str(capture), "--db",
                    str(db), "--mode", "learn", "--dissect"], check=True, capture_output=True,
                   timeout=60,
                   cwd=ROOT)
    assert roles_in_store(db, ward.mac(ward.uplink)) == ("DNS server", '["DNS server"]')
    return db


def dns_passes_and_ntp_is_denied(ward: Ward, app: InlineAppliance) -> str:
    """A name resolved through dnsmasq with no DNS violation, then an NTP probe to the same
    host denied: the probe's deny reason."""
    assert resolves(ward)
    assert not [e for e in app.events("violation") if e.get("dport") == 53]
    ward.exec(ward.ward, [sys.executable, "-c", NTP_PROBE, UPLINK_IP], timeout=10)
    found = wait_for(lambda: [e for e in app.events("violation")
                              if e.get("dst") == UPLINK_IP and e.get("dport") == 123],
                     timeout=10, what="the NTP probe denied")
    return str(found[0]["reason"])                              # type: ignore[index]


def test_a_role_learned_from_dnsmasq_allows_dns_to_it_and_nothing_else(
        site: Ward, tmp_path: Path) -> None:
    ward = site
    db = learn(ward, tmp_path)
    # enforce inline: the role resolves to dnsmasq's MAC when the policy is loaded
    app = InlineAppliance(ward, tmp_path, policy(ward.mac(ward.ward)), mode="enforce",
                          extra_config='[store]\npath = "wardtap.db"\n').start()
    try:
        # NTP to the same host: it is no NTP server, so the ntp rule does not cover it (the
        # nearest rule is dns, to the same group, on another port)
        assert dns_passes_and_ntp_is_denied(ward, app) == "port_not_allowed"
    finally:
        app.kill(signal.SIGTERM)
    # the same policy with a store that knows no DNS server: DNS is denied
    db.unlink()
    app = InlineAppliance(ward, tmp_path, policy(ward.mac(ward.ward), 2), mode="enforce",
                          extra_config='[store]\npath = "wardtap.db"\n').start()
    try:
        assert not resolves(ward)
        wait_for(lambda: [e for e in app.events("violation")
                          if e.get("dst") == UPLINK_IP and e.get("dport") == 53
                          and e.get("reason") == "no_rule"],
                 timeout=10, what="the DNS query denied")
    finally:
        app.kill(signal.SIGTERM)


def class_policy(ward_mac: str) -> str:
    return f"""
[policy]
name = "classes"
version = 1

[groups.ward]
mac = ["{ward_mac}"]

[groups.name-servers]
class = ["DNS server"]

[groups.archives]
class = ["image archive"]

[[rules]]
name = "dns"
from = "ward"
to = "name-servers"
proto = "udp"
ports = [53]

[[rules]]
name = "dicom"
from = "ward"
to = "archives"
proto = "udp"
ports = [104, 123]
"""


def test_a_class_group_allows_the_first_packet_to_its_server_and_not_to_another_class(
        site: Ward, tmp_path: Path) -> None:
    """`class` compiles to the devices' MACs and the addresses the inventory saw them use:
    inline, a client's first packet carries only its own MAC, so the server's address is
    what lets that packet through."""
    ward = site
    db = learn(ward, tmp_path)
    app = InlineAppliance(ward, tmp_path, class_policy(ward.mac(ward.ward)), mode="enforce",
                          extra_config='[store]\npath = "wardtap.db"\n').start()
    try:
        # one query, one attempt (resolv.conf: attempts:1): its first packet must pass; the
        # same host on a port only the image archives' rule names: it is no archive
        assert dns_passes_and_ntp_is_denied(ward, app) in ("no_rule", "port_not_allowed")
    finally:
        app.kill(signal.SIGTERM)
    assert db.exists()


CONTROLLER_URL = "https://mud.pumpvendor.example/infusion/lvp-7.json"


def controller_policy(ward_mac: str) -> str:
    return f"""
[policy]
name = "controllers"
version = 1

[groups.ward]
mac = ["{ward_mac}"]

[groups.my-controller]
mud_controller = ["{CONTROLLER_URL}"]

[[rules]]
name = "to-controller"
from = "ward"
to = "my-controller"
proto = "udp"
ports = [53]
"""


def test_a_changed_mud_controller_address_applies_on_reload(site: Ward,
                                                            tmp_path: Path) -> None:
    """`mud_controller` (what `policy import-mud --config` writes for my-controller) is read
    from the configuration's [mud.controllers] at each load: a new address applies on
    reload, without importing the MUD file again."""
    ward = site
    config = '[mud.controllers]\n"{}" = ["{}"]\n'
    app = InlineAppliance(ward, tmp_path, controller_policy(ward.mac(ward.ward)),
                          mode="enforce",
                          extra_config=config.format(CONTROLLER_URL, "10.77.0.99")).start()
    try:
        assert not resolves(ward)          # dnsmasq is not the configured controller
        wait_for(lambda: [e for e in app.events("violation")
                          if e.get("dst") == UPLINK_IP and e.get("dport") == 53],
                 timeout=10, what="the query to an unconfigured address denied")
        path = tmp_path / "wardtap.toml"
        path.write_text(path.read_text().replace('"10.77.0.99"', f'"{UPLINK_IP}"'))
        assert app.command(cmd="reload")["ok"]
        wait_for(lambda: app.status()["policy"]["generation"] == 2, timeout=15,
                 what="the reload")
        assert resolves(ward)              # the first packet to the new address passes
        # a configuration that no longer reads: the reload is refused, the policy stays
        path.write_text(path.read_text().replace(f'"{UPLINK_IP}"', '"not-an-address"'))
        refused = app.command(cmd="reload")
        loaded = app.status()["policy"]
        assert not refused["ok"] and "mud.controllers" in str(refused), refused
        assert loaded["generation"] == 2 and resolves(ward)
    finally:
        app.kill(signal.SIGTERM)
