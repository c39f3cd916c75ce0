"""A small ward in network namespaces: real servers on the uplink, real clients on the ward.

    ward 10.77.0.10 (ephemeral ports 1025-5000) --[ appliance br0 ]-- uplink 10.77.0.20

Uplink: dnsmasq answering DNS on udp/53, chronyd serving NTP on udp/123 (never touching the
clock: -x), a TCP service on tcp/11112 (the DICOM port) that pushes data to each client, and
a UDP telemetry service on udp/7400 that streams to each subscriber. Ward: chronyd as an NTP
client asking every 250 ms from port 123 (the "123 <-> 123" conversation of older devices),
a DNS client asking every 50 ms from one port, the TCP client and the telemetry subscriber.
The ward's ephemeral port range is 1025-5000, as on a Windows XP-era cart.

Packet counters (iptables, in the ward and uplink namespaces) say how many packets each side
sent and received per service, so a packet the appliance dropped is a packet counted on one
side and not the other. Every process is stopped by close(), also when a test fails.
"""

from __future__ import annotations

import re
import signal
import struct
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from netns import UPLINK_IP, WARD_IP, Ward, wait_for

TCP_PORT, TELEMETRY_PORT, SPOOF_PORT = 11112, 7400, 40000
LOW_PORTS = (1025, 5000)


def telemetry_client_port() -> int:
    """A port from the low range as the kernel would pick one, but not a known service's
    (fastpath.KNOWN_SERVICE_PORTS: 33 of the range's ports, RADIUS 1812 say). A UDP client on
    such a port, talking to a server on an unregistered port that never answers in a way
    the classifier reads, is taken for the server (docs/fastpath.md, "Who started a flow",
    step 4): a stated limit, not what these tests are about."""
    import random

    from fastpath import KNOWN_SERVICE_PORTS

    ports = [p for p in range(LOW_PORTS[0], LOW_PORTS[1] + 1) if p not in KNOWN_SERVICE_PORTS]
    return random.choice(ports)
SERVICES = {"dns": ("udp", 53), "ntp": ("udp", 123), "tcp": ("tcp", TCP_PORT),
            "telemetry": ("udp", TELEMETRY_PORT)}

TCP_SERVER = f"""
import socket, threading, time
def serve(conn):
    conn.settimeout(0.01)
    while True:
        try:
            conn.sendall(b"d" * 512)
            try:
                if conn.recv(4096) == b"":
                    return
            except socket.timeout:
                pass
        except OSError:
            return
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", {TCP_PORT})); s.listen(16)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""
TELEMETRY_SERVER = f"""
import socket, threading, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", {TELEMETRY_PORT}))
peers = set()
def push():
    n = 0
    while True:
        time.sleep(0.01)
        for p in list(peers):
            s.sendto(b"t%d" % n, p)
        n += 1
threading.Thread(target=push, daemon=True).start()
while True:
    data, peer = s.recvfrom(64)
    if data == b"subscribe":
        peers.add(peer)
    elif data == b"bye":
        peers.discard(peer)
"""
# Clients stop cleanly on SIGTERM (closing their conversation) and print what they saw.
CLIENT_PRELUDE = """
import signal, socket, struct, sys, time, random
stop = False
def on_term(*_):
    global stop
    stop = True
signal.signal(signal.SIGTERM, on_term)
"""
TCP_CLIENT = CLIENT_PRELUDE + f"""
s = socket.create_connection(("{UPLINK_IP}", {TCP_PORT})); s.settimeout(0.1)
print("port", s.getsockname()[1], flush=True)
got = 0; last = time.monotonic()
while not stop:
    try:
        got += len(s.recv(65536))
    except socket.timeout:
        pass
    if time.monotonic() - last > 0.1:
        s.sendall(b"ack\\n"); last = time.monotonic()
s.close(); print("bytes", got, flush=True)
"""
TELEMETRY_CLIENT = CLIENT_PRELUDE + f"""
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.1)
s.bind(("", int(sys.argv[1])))
s.sendto(b"subscribe", ("{UPLINK_IP}", {TELEMETRY_PORT}))
print("port", s.getsockname()[1], flush=True)
got = 0
while not stop:
    try:
        s.recv(64); got += 1
    except socket.timeout:
        pass
s.sendto(b"bye", ("{UPLINK_IP}", {TELEMETRY_PORT})); print("datagrams", got, flush=True)
"""
DNS_QUERY = ("struct.pack('!HHHHHH', random.randrange(65536), 0x0100, 1, 0, 0, 0)"
             " + b'\\x04ward\\x04test\\x00\\x00\\x01\\x00\\x01'")
DNS_CLIENT = CLIENT_PRELUDE + f"""
fresh = len(sys.argv) > 1          # a new socket (port) per query, as stub resolvers do
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.2)
asked = answered = 0
while not stop:
    if fresh:
        s.close(); s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.2)
    s.sendto({DNS_QUERY}, ("{UPLINK_IP}", 53)); asked += 1
    try:
        s.recv(512); answered += 1
    except socket.timeout:
        pass
    time.sleep(0.05)
print("asked", asked, "answered", answered, flush=True)
"""
# A packet that only looks like an answer: from a service port of the uplink to a ward port
# nothing uses (a raw socket, so no socket has to own the source port).
SPOOF = """
import socket, struct, sys
sport, dport, payload = int(sys.argv[1]), int(sys.argv[2]), bytes.fromhex(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
s.sendto(struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload, (sys.argv[4], 0))
"""
DNS_ANSWER = (struct.pack("!HHHHHH", 0x4242, 0x8180, 1, 1, 0, 0)
              + b"\x04ward\x04test\x00\x00\x01\x00\x01"
              + b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + bytes([10, 77, 0, 66]))
NTP_ANSWER = bytes([(4 << 3) | 4]) + bytes(47)


class WardServices:
    """The servers and clients above, and the counters that show what was lost."""

    def __init__(self, ward: Ward, workdir: Path) -> None:
        self.ward = ward
        self.dir = workdir
        self.servers: list[subprocess.Popen[str]] = []
        self.clients: dict[str, subprocess.Popen[str]] = {}

    # -- processes ---------------------------------------------------------------------------

    def _spawn(self, ns: str, argv: list[str], log: str) -> subprocess.Popen[str]:
        out = open(self.dir / f"{log}.log", "w")  # noqa: SIM115  (owned by the process)
        return self.ward.popen(ns, argv, stdout=out, stderr=subprocess.STDOUT)

    def start_servers(self) -> None:
        d = self.dir
        (d / "ntp-server.conf").write_text(
            f"pidfile {d}/ntp-server.pid\nlocal stratum 8\nallow 10.77.0.0/24\n"
            f"bindaddress {UPLINK_IP}\ncmdport 0\nbindcmdaddress /\n")
        up = self.ward.uplink
        self.servers += [
            self._spawn(up, ["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts",
                             "--conf-file=/dev/null", f"--listen-address={UPLINK_IP}",
                             "--bind-interfaces", "--address=/ward.test/10.77.0.99",
                             f"--pid-file={d}/dnsmasq.pid", "--user=root",
                             "--log-facility=-"], "dnsmasq"),
            self._spawn(up, ["chronyd", "-x", "-d", "-u", "root", "-f",
                             str(d / "ntp-server.conf")], "ntp-server"),
            self._spawn(up, [sys.executable, "-c", TCP_SERVER], "tcp-server"),
            self._spawn(up, [sys.executable, "-c", TELEMETRY_SERVER], "telemetry-server"),
        ]
        wait_for(lambda: self._listening(up, "udp", 53) and self._listening(up, "udp", 123)
                 and self._listening(up, "tcp", TCP_PORT)
                 and self._listening(up, "udp", TELEMETRY_PORT),
                 timeout=10, what="the uplink's servers to listen")

    def _listening(self, ns: str, proto: str, port: int) -> bool:
        flag = "-lntH" if proto == "tcp" else "-lnuH"
        out = self.ward.exec(ns, ["ss", flag, "sport", f"= :{port}"], check=False).stdout
        return bool(out.strip())

    def start_clients(self, fresh_dns: bool = False) -> None:
        d = self.dir
        self.ward.exec(self.ward.ward, "sysctl -qw net.ipv4.ip_local_port_range="
                                       f"'{LOW_PORTS[0]} {LOW_PORTS[1]}'")
        (d / "ntp-client.conf").write_text(
            f"pidfile {d}/ntp-client.pid\nserver {UPLINK_IP} iburst minpoll -2 maxpoll -2\n"
            "acquisitionport 123\nport 0\ncmdport 0\nbindcmdaddress /\n")
        w = self.ward.ward
        self.clients = {
            "ntp": self._spawn(w, ["chronyd", "-x", "-d", "-u", "root", "-f",
                                   str(d / "ntp-client.conf")], "ntp-client"),
            "dns": self._spawn(w, [sys.executable, "-c", DNS_CLIENT], "dns-client"),
            "tcp": self._spawn(w, [sys.executable, "-c", TCP_CLIENT], "tcp-client"),
            "telemetry": self._spawn(w, [sys.executable, "-c", TELEMETRY_CLIENT,
                                         str(telemetry_client_port())], "telemetry-client"),
        }
        if fresh_dns:
            self.clients["dns-fresh"] = self._spawn(w, [sys.executable, "-c", DNS_CLIENT,
                                                        "fresh"], "dns-fresh-client")

    def stop_clients(self) -> None:
        for proc in self.clients.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.clients.values():
            proc.wait(timeout=10)

    def close(self) -> None:
        for proc in [*self.clients.values(), *self.servers]:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)

    # -- counters ------------------------------------------------------------------------------

    def install_counters(self) -> None:
        """Count each service's packets where they leave and where they arrive."""
        for ns, out_key, in_key in ((self.ward.ward, "--dport", "--sport"),
                                    (self.ward.uplink, "--sport", "--dport")):
            for name, (proto, port) in SERVICES.items():
                self.ward.exec(ns, f"iptables -A OUTPUT -p {proto} {out_key} {port} "
                                   f"-m comment --comment out-{name}")
                self.ward.exec(ns, f"iptables -A INPUT -p {proto} {in_key} {port} "
                                   f"-m comment --comment in-{name}")

    def counters(self, ns: str) -> dict[str, int]:
        out = self.ward.exec(ns, "iptables-save -c -t filter").stdout
        return {m.group(2): int(m.group(1))
                for m in re.finditer(r'^\[(\d+):\d+\] .*--comment "?([\w-]+)"?', out, re.M)}

    def lost(self) -> dict[str, tuple[int, int]]:
        """Per service: (ward -> uplink, uplink -> ward) packets sent and not received."""
        ward, up = self.counters(self.ward.ward), self.counters(self.ward.uplink)
        return {name: (ward[f"out-{name}"] - up[f"in-{name}"],
                       up[f"out-{name}"] - ward[f"in-{name}"]) for name in SERVICES}

    def sent(self) -> dict[str, tuple[int, int]]:
        ward, up = self.counters(self.ward.ward), self.counters(self.ward.uplink)
        return {name: (ward[f"out-{name}"], up[f"out-{name}"]) for name in SERVICES}

    def flowing(self, answers: int) -> bool:
        """Every service has been asked and has answered at least `answers` times."""
        return all(a >= 1 and b >= answers for a, b in self.sent().values())

    def settled_losses(self) -> dict[str, tuple[int, int]]:
        """Losses once the packets in flight have arrived (bounded wait)."""
        try:
            wait_for(lambda: not any(a or b for a, b in self.lost().values()), timeout=3,
                     what="the last packets")
        except AssertionError:
            pass                      # then some really were lost: the caller reports them
        return self.lost()

    # -- spoofed answers --------------------------------------------------------------------------

    def spoof(self, sport: int, dport: int, payload: bytes) -> None:
        self.ward.exec(self.ward.uplink, [sys.executable, "-c", SPOOF, str(sport), str(dport),
                                          payload.hex(), WARD_IP])

    def watch(self, sport: int, dport: int) -> None:
        """Count datagrams from `sport` arriving at the ward's port `dport` (see arrived)."""
        self.ward.exec(self.ward.ward, f"iptables -I INPUT -p udp --sport {sport} "
                                       f"--dport {dport} -m comment --comment "
                                       f"spoof-{sport}-{dport}")

    def arrived(self, sport: int, dport: int) -> int:
        return self.counters(self.ward.ward)[f"spoof-{sport}-{dport}"]


@contextmanager
def ward_services(ward: Ward, workdir: Path) -> Iterator[WardServices]:
    services = WardServices(ward, workdir)
    try:
        yield services
    finally:
        services.close()
