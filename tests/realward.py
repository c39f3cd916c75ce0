"""A ward made of real third-party implementations in network namespaces, captured on a
mirror port: what wardtap must identify without having written a byte of it.

    python tests/realward.py OUT.pcap        # build the ward, run it, write the capture

    pacs      pynetdicom storage, query and verification SCP     AE PACS_MAIN
    modality  pynetdicom SCU: C-ECHO, C-STORE of pydicom's CT_small.dcm, C-FIND, then a
              C-ECHO under a new AE title; ISC dhclient with a vendor class
    engine    the `hl7` package's MLLP server (asyncio), answering ACKs: an interface engine
    monitor   the `hl7` package's MLLP client sending ORU^R01 (MSH-3 MX800^Philips, later
              renamed BEDMON7^Philips), and over TLS; ISC dhclient; chronyd -Q (NTP client
              that never sets a clock)
    pump      busybox udhcpc with vendor class "Alaris 8015" and a host name; busybox
              nslookup against dnsmasq
    infra     dnsmasq: DHCP and DNS server
    ntp       chronyd serving time from its local clock (-x: never touches the clock)
    switch    the bridge itself, lldpd announcing it over LLDP and CDP

Every device is a namespace with one veth into the switch namespace's bridge. The switch
mirrors what every port receives (tc mirred, ingress) to a mirror port, where tcpdump
writes the capture (a SPAN session, as the appliance would see it on a ward); lldpd
announces the switch on that port. Namespace names carry a per-run suffix; only addresses
inside these namespaces (10.61.0.0/24) are ever traffic targets. `WARD` lists what each
device must be identified as; tests/inventory/test_realward.py checks it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "tests"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from netns import sh, wait_for  # noqa: E402

NET = "10.61.0"
# u32 matching everything: the one classifier every kernel has (matchall is a module)
MIRROR = ["u32", "match", "u32", "0", "0", "action", "mirred", "egress", "mirror", "dev", "mir0"]
TOOLS = ("dnsmasq", "dhclient", "busybox", "lldpd", "lldpcli", "chronyd", "tcpdump", "tc")


@dataclass(frozen=True)
class WardDevice:
    """One device of the real ward and what identification must find."""

    role: str
    mac: str
    ip: str
    device_class: str
    names: tuple[str, ...] = ()          # every name it sends on the wire
    make: str | None = None
    model: str | None = None
    medical: bool = False


WARD: tuple[WardDevice, ...] = (
    WardDevice("switch", "00:1e:f7:61:00:01", f"{NET}.1", "network gear", ("sw-ward61",)),
    WardDevice("infra", "00:25:90:61:00:02", f"{NET}.2", "DHCP server"),
    WardDevice("ntp", "00:25:90:61:00:03", f"{NET}.3", "NTP server"),
    WardDevice("pacs", "18:66:da:61:00:20", f"{NET}.20", "image archive", ("PACS_MAIN",)),
    WardDevice("modality", "88:4b:39:61:00:30", f"{NET}.30", "imaging modality",
               ("US_ACUSON1", "US_ACUSON2", "us-room3"), make="Siemens Healthineers",
               model="ACUSON Sequoia", medical=True),
    WardDevice("engine", "00:50:56:61:00:40", f"{NET}.40", "HL7 interface engine",
               ("CLOVERLEAF",)),
    WardDevice("monitor", "00:09:fb:61:00:50", f"{NET}.50", "patient monitor",
               ("MX800", "BEDMON7", "mon-bed07"), make="Philips", model="IntelliVue MX800",
               medical=True),
    WardDevice("pump", "00:d0:75:61:00:60", f"{NET}.60", "infusion pump", ("pump-07",),
               make="BD", model="Alaris 8015 PC unit", medical=True),
)
CT_SOP = "1.2.840.10008.5.1.4.1.1.2"          # CT Image Storage (pydicom's CT_small.dcm)
# seconds between one device's exchanges: a device does not do everything in the same
# second, and the appliance samples at most 64 packets a second (docs/inventory.md)
PACE = 1.1


def missing_tools() -> list[str]:
    return [t for t in TOOLS if shutil.which(t) is None]


@dataclass
class RealWard:
    """The namespaces, the daemons, the capture. A context manager; close() is safe twice."""

    workdir: Path
    suffix: str = field(default_factory=lambda: f"{os.getpid() % 10000}"
                        f"{int(time.time() * 1000) % 10000}")
    created: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    def ns(self, role: str) -> str:
        return f"rw-{role[:5]}-{self.suffix}"

    def run(self, role: str, cmd: list[str], timeout: float = 60,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh(["ip", "netns", "exec", self.ns(role), *cmd], check=check, timeout=timeout)

    def start(self, role: str, cmd: list[str], name: str) -> subprocess.Popen[str]:
        log = open(self.workdir / f"{name}.log", "w")       # noqa: SIM115 (closed by the child)
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns(role), *cmd], text=True,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # -- the network --

    def build(self) -> RealWard:
        sw, cap = self.ns("switch"), self.ns("cap")
        for ns in (sw, cap):
            sh(["ip", "netns", "add", ns])
            self.created.append(ns)
            sh(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"])
            sh(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])
            sh(["ip", "netns", "exec", ns, "sysctl", "-qw",
                "net.ipv6.conf.default.disable_ipv6=1"])
        self.run("switch", ["ip", "link", "add", "br0", "type", "bridge", "stp_state", "0",
                            "forward_delay", "0"])
        self.run("switch", ["ip", "link", "set", "br0", "address", WARD[0].mac])
        self.run("switch", ["ip", "addr", "add", f"{WARD[0].ip}/24", "dev", "br0"])
        self.run("switch", ["ip", "link", "set", "br0", "up"])
        sh(["ip", "link", "add", "mir0", "netns", sw, "type", "veth", "peer", "name", "tap0",
            "netns", cap])
        # the switch's LLDP and CDP go out of the mirror port too (lldpd -I mir0), from
        # the switch's own MAC: what an appliance on a SPAN port sees of its switch
        self.run("switch", ["ip", "link", "set", "mir0", "address", WARD[0].mac])
        self.run("switch", ["ip", "link", "set", "mir0", "up"])
        self.run("cap", ["ip", "link", "set", "tap0", "up"])
        for dev in WARD[1:]:
            ns, port = self.ns(dev.role), f"p-{dev.role[:5]}"
            sh(["ip", "netns", "add", ns])
            self.created.append(ns)
            sh(["ip", "link", "add", "eth0", "netns", ns, "address", dev.mac, "type", "veth",
                "peer", "name", port, "netns", sw])
            self.run(dev.role, ["ip", "link", "set", "lo", "up"])
            self.run(dev.role, ["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])
            self.run(dev.role, ["sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=1"])
            self.run(dev.role, ["ip", "addr", "add", f"{dev.ip}/24", "dev", "eth0"])
            self.run(dev.role, ["ip", "link", "set", "eth0", "up"])
            self.run("switch", ["ip", "link", "set", port, "master", "br0"])
            self.run("switch", ["ip", "link", "set", port, "up"])
            # the SPAN session: everything the port receives goes to the mirror port too
            self.run("switch", ["tc", "qdisc", "add", "dev", port, "clsact"])
            self.run("switch", ["tc", "filter", "add", "dev", port, "ingress", "protocol",
                                "all", *MIRROR])
        return self

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        self.procs.clear()
        for ns in reversed(self.created):
            sh(["ip", "netns", "del", ns], check=False)
        self.created.clear()

    def __enter__(self) -> RealWard:
        try:
            return self.build()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the ward running --

    def capture(self, out: Path) -> Path:
        """Run every daemon and client once, in a realistic order; the capture in `out`."""
        w = self.workdir
        tcpdump = self.start("cap", ["tcpdump", "-i", "tap0", "-U", "-s", "0", "-w",
                                     str(out), "--immediate-mode"], "tcpdump")
        wait_for(lambda: "listening on" in self.log("tcpdump"), 10, what="tcpdump")
        self._servers()
        py = [sys.executable, str(Path(__file__).resolve())]
        # infrastructure first, as on a ward powering up: addresses, names, time
        self._dhclient("modality", vendor="ACUSON Sequoia", hostname="us-room3")
        self._dhclient("monitor", vendor=None, hostname="mon-bed07")
        self.run("pump", ["busybox", "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "3",
                          "-T", "1", "-s", "/bin/true", "-V", "Alaris 8015",
                          "-x", "hostname:pump-07"], timeout=30)
        self.run("pump", ["busybox", "nslookup", "-type=a", "pacs.ward61.test", WARD[1].ip],
                 timeout=20)
        self._ntp_client("monitor")
        # clinical traffic: DICOM, then HL7 in the clear and over TLS
        self.run("modality", [*py, "--role", "modality", "--peer", WARD[3].ip,
                              "--dir", str(w)], timeout=60)
        self.run("monitor", [*py, "--role", "monitor", "--peer", WARD[5].ip,
                             "--dir", str(w)], timeout=60)
        time.sleep(0.2)        # the last ACKs cross the mirror before the capture stops
        tcpdump.send_signal(signal.SIGINT)
        tcpdump.wait(timeout=10)
        return out

    def _servers(self) -> None:
        w = self.workdir
        conf = w / "lldpd.conf"
        conf.write_text("configure system hostname sw-ward61\n"
                        "configure system description \"Linux bridge sw-ward61 (lldpd)\"\n"
                        "configure lldp tx-interval 2\n")
        self.start("switch", ["lldpd", "-d", "-l", "-ccc", "-u", str(w / "lldpd.sock"), "-O",
                              str(conf), "-I", "mir0", "-C", "mir0", "-m", WARD[0].ip], "lldpd")
        hosts = "".join(f"--dhcp-host={d.mac},{d.ip}\n" for d in WARD[4:])
        dconf = w / "dnsmasq.conf"
        dconf.write_text(
            f"interface=eth0\nbind-interfaces\nno-resolv\nno-hosts\n"
            f"dhcp-range={NET}.100,{NET}.150,255.255.255.0,1h\n"
            f"dhcp-option=option:router,{WARD[0].ip}\ndhcp-option=option:ntp-server,"
            f"{WARD[2].ip}\ndhcp-authoritative\nlocal=/ward61.test/\ndomain=ward61.test\n"
            f"address=/pacs.ward61.test/{WARD[3].ip}\naddress=/hl7.ward61.test/{WARD[5].ip}\n"
            + hosts.replace("--", ""))
        self.start("infra", ["dnsmasq", "-k", "-C", str(dconf), "--pid-file=" + str(
            w / "dnsmasq.pid"), "--dhcp-leasefile=" + str(w / "dnsmasq.leases"),
            "--log-facility=-", "--user=root"], "dnsmasq")
        cconf = w / "chrony-server.conf"
        cconf.write_text(f"local stratum 8\nallow {NET}.0/24\nport 123\ncmdport 0\n"
                         f"pidfile {w}/chrony-server.pid\ndriftfile {w}/chrony.drift\n")
        self.start("ntp", ["chronyd", "-x", "-d", "-f", str(cconf)], "chrony-server")
        py = [sys.executable, str(Path(__file__).resolve())]
        self.start("pacs", [*py, "--role", "pacs", "--dir", str(w)], "pacs")
        self.start("engine", [*py, "--role", "engine", "--dir", str(w)], "engine")
        wait_for(lambda: "ready" in self.log("pacs") and "ready" in self.log("engine"),
                 30, what="the PACS and the HL7 engine")
        wait_for(lambda: "started" in self.log("dnsmasq"), 10, what="dnsmasq")

    def _dhclient(self, role: str, vendor: str | None, hostname: str) -> None:
        w = self.workdir
        conf = w / f"dhclient-{role}.conf"
        lines = [f'send host-name "{hostname}";',
                 "request subnet-mask, broadcast-address, routers, domain-name, "
                 "domain-name-servers, ntp-servers;"]
        if vendor:
            lines.append(f'send vendor-class-identifier "{vendor}";')
        conf.write_text("\n".join(lines) + "\n")
        leases = w / f"dhclient-{role}.leases"
        proc = self.start(role, ["dhclient", "-1", "-d", "-cf", str(conf), "-lf", str(leases),
                                 "-pf", str(w / f"dhclient-{role}.pid"), "-sf", "/bin/true",
                                 "eth0"], f"dhclient-{role}")
        # in the foreground dhclient stays to renew: stop it once the lease is written
        wait_for(lambda: leases.exists() and "fixed-address" in leases.read_text(), 30,
                 what=f"dhclient's lease ({role})")
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)

    def _ntp_client(self, role: str) -> None:
        w = self.workdir
        conf = w / f"chrony-{role}.conf"
        conf.write_text(f"server {WARD[2].ip} iburst maxpoll 6\ncmdport 0\n"
                        f"pidfile {w}/chrony-{role}.pid\n")
        # -Q: measure the offset and exit; never sets the clock
        self.run(role, ["chronyd", "-Q", "-t", "20", "-f", str(conf)], timeout=30, check=False)


# --- the roles run inside the namespaces ----------------------------------------------------


def _pacs(workdir: Path) -> None:
    from pynetdicom import AE, StoragePresentationContexts, evt
    from pynetdicom.sop_class import (
        StudyRootQueryRetrieveInformationModelFind,
        Verification,
    )

    def on_store(event: object) -> int:
        ds = event.dataset                                       # type: ignore[attr-defined]
        ds.file_meta = event.file_meta                           # type: ignore[attr-defined]
        ds.save_as(workdir / "stored.dcm", enforce_file_format=True)
        return 0x0000

    def on_find(event: object) -> object:
        yield 0x0000, None

    ae = AE(ae_title="PACS_MAIN")
    ae.supported_contexts = StoragePresentationContexts
    ae.add_supported_context(Verification)
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    print("ready", flush=True)
    ae.start_server(("0.0.0.0", 104), block=True,
                    evt_handlers=[(evt.EVT_C_STORE, on_store), (evt.EVT_C_FIND, on_find)])


def _modality(peer: str) -> None:
    from pydicom import examples
    from pydicom.dataset import Dataset
    from pynetdicom import AE
    from pynetdicom.sop_class import (
        CTImageStorage,
        StudyRootQueryRetrieveInformationModelFind,
        Verification,
    )

    def associate(title: str, context: object) -> object:
        ae = AE(ae_title=title)
        ae.add_requested_context(context)
        assoc = ae.associate(peer, 104, ae_title="PACS_MAIN")
        if not assoc.is_established:
            raise SystemExit(f"association {title} -> PACS_MAIN refused")
        return assoc

    assoc = associate("US_ACUSON1", Verification)
    assert assoc.send_c_echo().Status == 0                      # type: ignore[attr-defined]
    assoc.release()                                              # type: ignore[attr-defined]
    time.sleep(PACE)
    assoc = associate("US_ACUSON1", CTImageStorage)
    ds = examples.ct
    assert assoc.send_c_store(ds).Status == 0                    # type: ignore[attr-defined]
    assoc.release()                                              # type: ignore[attr-defined]
    time.sleep(PACE)
    assoc = associate("US_ACUSON1", StudyRootQueryRetrieveInformationModelFind)
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.PatientID = ds.PatientID
    for _ in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):  # type: ignore[attr-defined]
        pass
    assoc.release()                                              # type: ignore[attr-defined]
    time.sleep(PACE)
    assoc = associate("US_ACUSON2", Verification)               # the AE title changed
    assert assoc.send_c_echo().Status == 0                      # type: ignore[attr-defined]
    assoc.release()                                              # type: ignore[attr-defined]
    print("done", flush=True)


def _tls_files(workdir: Path) -> tuple[Path, Path]:
    cert, key = workdir / "engine.crt", workdir / "engine.key"
    if not cert.exists():
        sh(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-days", "30", "-subj", "/CN=hl7.ward61.test/O=Ward 61 interfaces",
            "-keyout", str(key), "-out", str(cert)])
    return cert, key


def _engine(workdir: Path) -> None:
    import ssl

    import hl7.mllp

    async def serve() -> None:
        async def handle(reader: hl7.mllp.HL7StreamReader,
                         writer: hl7.mllp.HL7StreamWriter) -> None:
            try:
                while not writer.is_closing():
                    message = await reader.readmessage()
                    writer.writemessage(message.create_ack())
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        cert, key = _tls_files(workdir)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        plain = await hl7.mllp.start_hl7_server(handle, "0.0.0.0", 2575)
        tls = await hl7.mllp.start_hl7_server(handle, "0.0.0.0", 2576, ssl=ctx)
        print("ready", flush=True)
        async with plain, tls:
            await asyncio.gather(plain.serve_forever(), tls.serve_forever())

    asyncio.run(serve())


def oru(app: str, control: str) -> str:
    """An ORU^R01 vital-signs message (a synthetic patient)."""
    stamp = time.strftime("%Y%m%d%H%M%S")
    return "\r".join([
        f"MSH|^~\\&|{app}|WARD4B|CLOVERLEAF|HOSP|{stamp}||ORU^R01^ORU_R01|{control}|P|2.6",
        "PID|1||RW0001^^^HOSP^MR||TEST^PATIENT||19700101|U",
        f"OBR|1|{control}||69837-1^Vital signs^LN|||{stamp}",
        "OBX|1|NM|8867-4^Heart rate^LN||72|/min^/min^UCUM|||||F",
    ]) + "\r"


def _monitor(peer: str, workdir: Path) -> None:
    import ssl

    import hl7
    import hl7.mllp

    async def send(port: int, app: str, control: str, tls: bool) -> None:
        ctx = None
        if tls:
            ctx = ssl.create_default_context(cafile=str(_tls_files(workdir)[0]))
            ctx.check_hostname = False
        reader, writer = await hl7.mllp.open_hl7_connection(peer, port, ssl=ctx)
        writer.writemessage(hl7.parse(oru(app, control)))
        await writer.drain()
        ack = await asyncio.wait_for(reader.readmessage(), 10)
        assert str(ack.segment("MSA")[1]) == "AA", str(ack)
        writer.close()
        await writer.wait_closed()

    async def run() -> None:
        await send(2575, "MX800^Philips", "RW0001", False)
        await asyncio.sleep(PACE)
        await send(2576, "MX800^Philips", "RW0002", True)
        await asyncio.sleep(PACE)
        await send(2575, "BEDMON7^Philips", "RW0003", False)       # the application renamed

    asyncio.run(run())
    print("done", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", nargs="?", help="the capture to write")
    ap.add_argument("--role", help=argparse.SUPPRESS)
    ap.add_argument("--peer", help=argparse.SUPPRESS)
    ap.add_argument("--dir", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.role == "pacs":
        _pacs(Path(args.dir))
    elif args.role == "modality":
        _modality(args.peer)
    elif args.role == "engine":
        _engine(Path(args.dir))
    elif args.role == "monitor":
        _monitor(args.peer, Path(args.dir))
    elif args.out:
        missing = missing_tools()
        if missing:
            print(f"realward: missing {', '.join(missing)} (scripts/setup.sh installs them)",
                  file=sys.stderr)
            return 2
        out = Path(args.out).resolve()
        with tempfile.TemporaryDirectory(prefix="realward-") as tmp:
            os.chmod(tmp, 0o755)
            with RealWard(Path(tmp)) as ward:
                ward.capture(out)
        print(f"realward: wrote {out} ({out.stat().st_size} bytes)")
    else:
        ap.error("give the capture to write")
    return 0


if __name__ == "__main__":
    sys.exit(main())
