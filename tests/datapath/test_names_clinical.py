"""Allow-lists by name and by clinical protocol, inline in enforce mode, with real traffic.

    ward (10.77.0.10)  --  [ appliance: wardtap run, inline ]  --  uplink 10.77.0.20-24
    curl, getent (glibc),                                          dnsmasq (DNS, short TTLs,
    the `hl7` package's MLLP client,                               a CNAME), an HTTPS server,
    a pynetdicom SCU                                               the `hl7` MLLP server,
                                                                   a pynetdicom SCP

The ward's resolver is dnsmasq (an /etc/netns resolv.conf); the names, addresses and TTLs
are dnsmasq's, the TLS handshakes curl's and OpenSSL's (through Python's ssl), the HL7 and
DICOM bytes those libraries'. Every wait is bounded; a binding's expiry is waited for on the
clock (its TTL is what the test set), nothing else is.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT
from inlinekit import InlineAppliance
from netns import UPLINK_IP, Ward, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")

PUMPS_A, PUMPS_B, EVIL, CDN = "10.77.0.21", "10.77.0.22", "10.77.0.23", "10.77.0.24"
TTL = 3                 # dnsmasq's answers (local-ttl); the policy's floor is 1 s
REALWARD = str(ROOT / "tests" / "realward.py")

# HTTPS on 443 (Python's ssl: OpenSSL), a thread per connection: a connection the appliance
# cut mid-handshake must not hold up the next.
HTTPS_SERVER = """
import ssl, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class Hello(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")
server = ThreadingHTTPServer(("0.0.0.0", 443), Hello)
server.daemon_threads = True
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
server.socket = ctx.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
server.serve_forever()
"""

HL7_CLIENT = """
import asyncio, sys, hl7, hl7.mllp
app, mtype = sys.argv[1], sys.argv[2]
msg = ("MSH|^~\\\\&|" + app + "^Philips|WARD4B|CLOVERLEAF|HOSP|20261207101500||" + mtype
       + "|C1|P|2.6\\rPID|1||RW0001^^^HOSP^MR||TEST^PATIENT\\r")
async def main():
    reader, writer = await asyncio.wait_for(hl7.mllp.open_hl7_connection(sys.argv[3], 2575), 3)
    writer.writemessage(hl7.parse(msg))
    await writer.drain()
    ack = await asyncio.wait_for(reader.readmessage(), 3)
    print(str(ack.segment("MSA")[1]))
try:
    asyncio.run(main())
except (asyncio.TimeoutError, OSError) as exc:
    print("no-answer", type(exc).__name__)
"""

DICOM_CLIENT = """
import sys
from pynetdicom import AE
from pynetdicom.sop_class import Verification, StudyRootQueryRetrieveInformationModelFind
ae = AE(ae_title=sys.argv[1])
ae.acse_timeout = ae.network_timeout = ae.connection_timeout = 3
ae.add_requested_context(Verification if sys.argv[2] == "echo"
                         else StudyRootQueryRetrieveInformationModelFind)
assoc = ae.associate(sys.argv[3], 104, ae_title="PACS_MAIN")
if not assoc.is_established:
    print("no-association")
elif sys.argv[2] == "echo":
    print("echo", hex(assoc.send_c_echo().Status))
    assoc.release()
else:
    print("established")
    assoc.release()
"""


def policy(ward_mac: str) -> str:
    return f"""
[policy]
name = "names-and-clinical"
name_ttl_min = 1
name_ttl_max = 60

[groups.ward]
mac = ["{ward_mac}"]

[groups.uplink]
ip = ["{UPLINK_IP}"]

[groups.vendor]
names = ["pumps.vendor.example", "www.vendor.example"]

[[rules]]
name = "dns"
from = "ward"
to = "uplink"
proto = "udp"
ports = [53]

[[rules]]
name = "vendor-https"
from = "ward"
to = "vendor"
proto = "tcp"
ports = [443]

[[rules]]
name = "vitals"
from = "ward"
to = "uplink"
proto = "tcp"
ports = [2575]
hl7 = {{ message_types = ["ORU^R01"], sending = ["MX800"] }}

[[rules]]
name = "images"
from = "ward"
to = "uplink"
proto = "tcp"
ports = [104]
dicom = {{ calling = ["US_ACUSON1"], called = ["PACS_MAIN"], services = ["C-ECHO", "C-STORE"] }}
"""


class Services:
    """dnsmasq, an HTTPS server, the HL7 engine and the PACS in the uplink namespace."""

    def __init__(self, ward: Ward, workdir: Path) -> None:
        self.ward = ward
        self.dir = workdir
        self.procs: list[subprocess.Popen[str]] = []
        self.capture: Capture | None = None
        self.hosts = workdir / "hosts"
        self.set_pumps(PUMPS_A)
        up = ward.uplink
        cert, key = workdir / "tls.crt", workdir / "tls.key"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-days", "1", "-subj",
                        "/CN=pumps.vendor.example", "-keyout", str(key), "-out", str(cert)],
                       check=True, capture_output=True, timeout=30)
        self.dnsmasq = self._spawn(up, [
            "dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts",
            "--conf-file=/dev/null", f"--listen-address={UPLINK_IP}", "--bind-interfaces",
            f"--addn-hosts={self.hosts}", f"--local-ttl={TTL}",
            "--cname=www.vendor.example,cdn.vendorcdn.example",
            f"--pid-file={workdir}/dnsmasq.pid", "--user=root", "--log-queries",
            "--log-facility=-"], "dnsmasq")
        self._spawn(up, [sys.executable, "-c", HTTPS_SERVER, str(cert), str(key)], "https")
        self._spawn(up, [sys.executable, REALWARD, "--role", "engine", "--dir",
                         str(workdir)], "engine")
        self._spawn(up, [sys.executable, REALWARD, "--role", "pacs", "--dir", str(workdir)],
                    "pacs")
        wait_for(lambda: all(self._listening(p, proto) for p, proto in (
            (53, "udp"), (443, "tcp"), (2575, "tcp"), (104, "tcp"))), timeout=30,
            what="the uplink's servers to listen")

    def set_pumps(self, address: str) -> None:
        self.hosts.write_text(f"{address} pumps.vendor.example\n{EVIL} evil.example\n"
                              f"{CDN} cdn.vendorcdn.example\n")

    def reload(self) -> None:
        self.dnsmasq.send_signal(signal.SIGHUP)       # dnsmasq re-reads --addn-hosts

    def _spawn(self, ns: str, argv: list[str], log: str) -> subprocess.Popen[str]:
        out = open(self.dir / f"{log}.log", "w")  # noqa: SIM115  (owned by the process)
        proc = self.ward.popen(ns, argv, stdout=out, stderr=subprocess.STDOUT,
                               cwd=str(self.dir), env=dict(os.environ, PYTHONPATH=str(ROOT)))
        self.procs.append(proc)
        return proc

    def _listening(self, port: int, proto: str) -> bool:
        flag = "-lntH" if proto == "tcp" else "-lnuH"
        out = self.ward.exec(self.ward.uplink, ["ss", flag, "sport", f"= :{port}"],
                             check=False).stdout
        return bool(out.strip())

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


class Capture:
    """tcpdump on the appliance's ward port: the same traffic, for a replay afterwards."""

    def __init__(self, ward: Ward, path: Path) -> None:
        self.path = path
        self.proc = ward.popen(ward.appliance, ["tcpdump", "-i", "ward0", "-U", "-s", "0",
                                                "-w", str(path)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()         # "listening on ward0 ..." once it is
        assert "listening" in line, line

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def replay(self, policy_file: Path) -> list[dict[str, Any]]:
        """Every packet's line from an enforce-mode replay of the capture."""
        self.stop()
        out = self.path.with_suffix(".jsonl")
        subprocess.run([sys.executable, "-m", "appliance.cli", "replay", str(self.path),
                        "--policy", str(policy_file), "--mode", "enforce", "--packets-out",
                        str(out)], check=True, capture_output=True, timeout=60, cwd=ROOT)
        return [json.loads(line) for line in out.read_text().splitlines()]


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Ward, Services, InlineAppliance]]:
    os.chmod(tmp_path, 0o755)
    with Ward() as ward:
        for address in (PUMPS_A, PUMPS_B, EVIL, CDN):
            ward.exec(ward.uplink, f"ip addr add {address}/24 dev eth0")
        resolv = Path("/etc/netns") / ward.ward
        resolv.mkdir(parents=True, exist_ok=True)
        (resolv / "resolv.conf").write_text(f"nameserver {UPLINK_IP}\noptions timeout:2\n")
        services = Services(ward, tmp_path)
        appliance = None
        services.capture = Capture(ward, tmp_path / "ward.pcap")
        try:
            appliance = InlineAppliance(ward, tmp_path, policy(ward.mac(ward.ward))).start()
            yield ward, services, appliance
        finally:
            if appliance is not None:
                appliance.kill(signal.SIGTERM)
            services.capture.stop()
            services.close()
            shutil.rmtree(resolv, ignore_errors=True)


def curl(ward: Ward, url: str, *extra: str) -> str:
    """The HTTP status curl got from `url` from the ward ("000": no answer)."""
    out = ward.exec(ward.ward, ["curl", "-sk", "--connect-timeout", "2", "--max-time", "3",
                                "-o", "/dev/null", "-w", "%{http_code}", *extra, url],
                    check=False, timeout=15)
    return out.stdout.strip()


def client(ward: Ward, script: str, *args: str) -> str:
    out = ward.exec(ward.ward, [sys.executable, "-c", script, *args, UPLINK_IP],
                    check=False, timeout=30)
    return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr


def wardtap_json(*args: str) -> dict[str, Any]:
    run = subprocess.run([sys.executable, "-m", "appliance.cli", *args, "--json"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)  # type: ignore[no-any-return]


def violations(appliance: InlineAppliance, **match: Any) -> list[dict[str, Any]]:
    return [e for e in appliance.events("violation")
            if all(e.get(k) == v for k, v in match.items())]


def test_rules_by_name_follow_dns(site: tuple[Ward, Services, InlineAppliance]) -> None:
    ward, services, appliance = site
    # The name resolves (dnsmasq -> the ward, through the appliance) and the flow to its
    # address is allowed while the binding lives.
    assert curl(ward, "https://pumps.vendor.example/") == "200"
    # A name the policy does not list: its address is not allowed.
    assert curl(ward, "https://evil.example/") == "000"
    assert violations(appliance, dst=EVIL, dport=443, reason="no_rule")
    # SNI contradicting the binding: curl resolves pumps.vendor.example (bound), connects to
    # its address, and names another server in its ClientHello.
    assert curl(ward, "https://other.example/", "--connect-to",
                "other.example:443:pumps.vendor.example:443") == "000"
    found = wait_for(lambda: violations(appliance, dst=PUMPS_A, reason="server_name_mismatch"),
                     timeout=10, what="the SNI violation")
    assert found[0]["field"] == "tls_server_name"                   # type: ignore[index]
    # A CNAME chain: www.vendor.example -> cdn.vendorcdn.example -> CDN; the policy names
    # the first, the address answers the last.
    assert curl(ward, "https://www.vendor.example/") == "200", (
        json.dumps([e for e in appliance.events() if e.get("dst") == CDN]),
        (services.dir / "dnsmasq.log").read_text()[-2000:])
    # The name moves to another address: the rule follows it.
    services.set_pumps(PUMPS_B)
    services.reload()
    wait_for(lambda: PUMPS_B in ward.exec(ward.ward, "getent ahostsv4 pumps.vendor.example",
                                          check=False).stdout, timeout=10,
             what="dnsmasq to answer the new address")
    answered = time.monotonic()
    assert curl(ward, "https://pumps.vendor.example/") == "200"
    assert [e for e in appliance.events("new_flow") if e["dst"] == PUMPS_B
            and e["rule"] == "vendor-https"]
    # Once the TTL has run out, the address is no longer the name's: denied (curl is given
    # the address, so nothing renews the binding).
    wait_for(lambda: time.monotonic() > answered + TTL + 1, timeout=TTL + 5,
             what="the binding's TTL to run out")
    assert curl(ward, "https://pumps.vendor.example/", "--resolve",
                f"pumps.vendor.example:443:{PUMPS_B}") == "000"
    assert violations(appliance, dst=PUMPS_B, dport=443, reason="no_rule")
    # The same traffic replayed in enforce mode: the same decisions, from capture times.
    assert services.capture is not None
    lines = services.capture.replay(appliance.dir / "policy.toml")
    first: dict[tuple[Any, Any, Any], dict[str, Any]] = {}       # each flow's first packet
    for p in lines:
        first.setdefault((p.get("dst"), p.get("dport"), p.get("sport")), p)
    verdicts = {(k[0], p["verdict"], p["reason"]) for k, p in first.items() if k[1] == 443}
    assert (CDN, "allow", "watched") in verdicts
    assert (EVIL, "deny", "no_rule") in verdicts
    assert (PUMPS_B, "deny", "no_rule") in verdicts                 # after the TTL
    assert any(p.get("dst") == PUMPS_A and p["reason"] == "server_name_mismatch"
               for p in lines)


def test_clinical_rules_judge_the_first_payload(
        site: tuple[Ward, Services, InlineAppliance]) -> None:
    ward, services, appliance = site
    # HL7: ORU^R01 from MX800 is what the rule allows; the engine ACKs it.
    assert client(ward, HL7_CLIENT, "MX800", "ORU^R01^ORU_R01") == "AA"
    # Another message type, or another sending application: never reaches the engine.
    assert client(ward, HL7_CLIENT, "MX800", "ADT^A01^ADT_A01").startswith("no-answer")
    assert client(ward, HL7_CLIENT, "ROGUEAPP", "ORU^R01^ORU_R01").startswith("no-answer")
    wait_for(lambda: violations(appliance, dport=2575, reason="clinical_mismatch",
                                field="hl7_message_type")
             and violations(appliance, dport=2575, reason="clinical_mismatch",
                            field="hl7_sending_application"),
             timeout=10, what="the HL7 violations")
    assert all(e["nearest_rule"] == "vitals" for e in violations(appliance, dport=2575))
    # DICOM: the right calling AE verifies; a wrong one, or a service the rule does not
    # list (C-FIND), gets no association.
    assert client(ward, DICOM_CLIENT, "US_ACUSON1", "echo") == "echo 0x0"
    assert client(ward, DICOM_CLIENT, "ROGUE_AE", "echo") == "no-association"
    assert client(ward, DICOM_CLIENT, "US_ACUSON1", "find") == "no-association"
    wait_for(lambda: violations(appliance, dport=104, field="dicom_calling_ae")
             and violations(appliance, dport=104, field="dicom_service"),
             timeout=10, what="the DICOM violations")
    # Replayed in enforce mode: the same judgements on the same first payloads.
    assert services.capture is not None
    lines = services.capture.replay(appliance.dir / "policy.toml")
    judged = [p for p in lines if p["reason"] == "clinical_mismatch"]
    assert {p.get("dport") for p in judged} == {2575, 104}
    assert any(p.get("dport") == 2575 and p["verdict"] == "allow" and p["reason"] == "rule"
               for p in lines)                                    # the ORU^R01 from MX800
    # Review on the same capture. `policy test` names the rule and the field ...
    cap, policy_file = str(services.capture.path), str(appliance.dir / "policy.toml")
    tested = wardtap_json("policy", "test", policy_file, cap)
    fields = {(v["nearest_rule"], v["field"]) for v in tested["violations"]}
    assert {("vitals", "hl7_message_type"), ("vitals", "hl7_sending_application"),
            ("images", "dicom_calling_ae"), ("images", "dicom_service")} <= fields
    # ... drift lists what was said on the wire that the rules do not allow ...
    drifted = wardtap_json("policy", "drift", "--policy", policy_file, cap)
    values: dict[str, set[str]] = {}
    for dev in drifted["devices"]:
        for item in dev["seen_not_allowed"]:
            for name, seen in item.get("not_allowed_values", {}).items():
                values.setdefault(name, set()).update(seen)
    assert values["hl7_message_type"] == {"ADT^A01"}
    assert values["hl7_sending_application"] == {"ROGUEAPP"}
    assert values["dicom_calling_ae"] == {"ROGUE_AE"}
    assert values["dicom_service"] == {"1.2.840.10008.5.1.4.1.2.2.1"}   # study root FIND
    # ... and learn proposes the fields it saw.
    proposal = services.dir / "learned.toml"
    run = subprocess.run([sys.executable, "-m", "appliance.cli", "learn", cap, "-o",
                          str(proposal)], capture_output=True, text=True, timeout=120,
                         cwd=ROOT)
    assert run.returncode == 0, run.stderr
    from appliance.policy.model import load_policy

    learned = load_policy(str(proposal))
    conds = [r for r in learned.rules + learned.disabled if r.hl7 or r.dicom]
    hl7 = next(r.hl7 for r in conds if r.hl7)
    dicom = next(r.dicom for r in conds if r.dicom)
    assert set(hl7.message_types) == {"ORU^R01", "ADT^A01"}
    assert set(hl7.sending) == {"MX800", "ROGUEAPP"} and hl7.receiving == ("CLOVERLEAF",)
    assert set(dicom.calling) == {"US_ACUSON1", "ROGUE_AE"} and dicom.called == ("PACS_MAIN",)
    assert set(dicom.services) == {"C-ECHO", "C-FIND"}
