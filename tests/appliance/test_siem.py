"""SIEM export against a real rsyslog (Debian's, with its gtls driver) on loopback.

rsyslogd runs in the foreground with its own configuration and work directory in
tmp_path (`rsyslogd -n -f CONF -i PIDFILE`), listening on UDP and TCP, and a second one on
TLS with certificates made here. What it writes is read back: RFC 5424 messages parsed by
rsyslog itself (message id, host, structured data), CEF in the message, and the EVE file.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from netns import wait_for

from appliance.outputs.eve import EveOutput
from appliance.outputs.syslog import SyslogError, SyslogOutput

RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
TEMPLATE = ('template(name="fields" type="string" '
            'string="%msgid%|%app-name%|%hostname%|%pri-text%|%structured-data%|%msg%\\n")\n')
VIOLATION = {"type": "violation", "ts": 1732788101.5, "flow": 7, "src": "10.40.104.13",
             "dst": "93.184.216.34", "proto": 6, "sport": 51000, "dport": 443, "vlan": 104,
             "verdict": "deny", "device": 3, "peer_device": 9, "rule": None,
             "nearest_rule": "pumps-to-pump-server", "reason": "no_rule", "packet": 11,
             "smac": "00:12:21:5e:a0:2c", "dmac": "00:26:cb:4a:10:01"}
NEW_DEVICE = {"type": "new_device", "ts": 1732788154.0, "device": 21,
              "mac": "dc:a6:32:7e:5b:19", "ip": "10.40.1.213", "vlan": 0}
TRICKY = dict(VIOLATION, nearest_rule='a"b]c\\d')        # escaping in structured data


def _free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _udp_bound(port: int) -> bool:
    with open("/proc/net/udp") as fh:
        return any(line.split()[1].endswith(f":{port:04X}") for line in fh.readlines()[1:])


def _tcp_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
    except OSError:
        return False
    return True


class Rsyslog:
    def __init__(self, directory: Path, inputs: str, global_extra: str = "") -> None:
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.out = directory / "received.log"
        conf = directory / "rsyslog.conf"
        conf.write_text(
            f'global(workDirectory="{directory}" {global_extra})\n{inputs}{TEMPLATE}'
            f'*.* action(type="omfile" file="{self.out}" template="fields")\n')
        self.log = (directory / "rsyslogd.log").open("w")
        self.proc = subprocess.Popen([RSYSLOGD, "-n", "-f", str(conf), "-i",
                                      str(directory / "rsyslogd.pid")],
                                     stdout=self.log, stderr=subprocess.STDOUT)

    def lines(self) -> list[str]:
        return self.out.read_text().splitlines() if self.out.exists() else []

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.log.close()


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Rsyslog, int, int]]:
    assert os.path.exists(RSYSLOGD), "rsyslog is not installed: run scripts/setup.sh"
    udp, tcp = _free_port(socket.SOCK_DGRAM), _free_port()
    server = Rsyslog(tmp_path_factory.mktemp("rsyslog"),
                     'module(load="imudp")\nmodule(load="imtcp")\n'
                     f'input(type="imudp" address="127.0.0.1" port="{udp}")\n'
                     f'input(type="imtcp" address="127.0.0.1" port="{tcp}")\n')
    try:
        wait_for(lambda: _tcp_open(tcp) and _udp_bound(udp), timeout=20,
                 what="rsyslogd to listen")
        yield server, udp, tcp
    finally:
        server.stop()


def _certs(directory: Path) -> tuple[Path, Path, Path]:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    day = datetime.timedelta(days=1)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("Test SIEM CA"))
          .issuer_name(name("Test SIEM CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - day)
          .not_valid_after(now + 30 * day)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(name("localhost")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - day).not_valid_after(now + 30 * day)
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    return paths


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Rsyslog, int, Path]]:
    directory = tmp_path_factory.mktemp("rsyslog-tls")
    ca, cert, key = _certs(directory)
    port = _free_port()
    server = Rsyslog(directory,
                     'module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1" '
                     'StreamDriver.AuthMode="anon")\n'
                     f'input(type="imtcp" address="127.0.0.1" port="{port}")\n',
                     f'DefaultNetstreamDriver="gtls" DefaultNetstreamDriverCAFile="{ca}" '
                     f'DefaultNetstreamDriverCertFile="{cert}" '
                     f'DefaultNetstreamDriverKeyFile="{key}"')
    try:
        wait_for(lambda: _tcp_open(port), timeout=20, what="rsyslogd to listen on TLS")
        yield server, port, ca
    finally:
        server.stop()


def _received(server: Rsyslog, marker: str, count: int = 1) -> list[list[str]]:
    found = wait_for(lambda: [line.split("|", 5) for line in server.lines() if marker in line]
                     if sum(marker in line for line in server.lines()) >= count else None,
                     timeout=15, what=f"rsyslog to receive {marker}")
    return list(found)  # type: ignore[call-overload]


def _send(url: str, events: list[dict], **options: object) -> SyslogOutput:
    out = SyslogOutput(url, hostname=options.pop("hostname", "ward4b-01"), **options)
    out.publish(events)
    out.close()
    return out


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_rfc5424_structured_data_reaches_rsyslog(plain: tuple[Rsyslog, int, int],
                                                 transport: str) -> None:
    server, udp, tcp = plain
    host = f"ward-{transport}"
    port = udp if transport == "udp" else tcp
    out = _send(f"{transport}://127.0.0.1:{port}", [VIOLATION, NEW_DEVICE, TRICKY],
                hostname=host)
    assert out.counters["sent"] == 3 and out.counters["dropped"] == 0
    rows = _received(server, host, 3)
    msgids = [r[0] for r in rows]
    assert msgids == ["violation", "new_device", "violation"]
    msgid, app, hostname, pri, sd, msg = rows[0]
    assert (app, hostname) == ("wardtap", host)
    assert pri.startswith("local0.warning")                   # a violation is a warning
    assert sd.startswith("[wardtap@32473 ") and 'src="10.40.104.13"' in sd
    assert 'dport="443"' in sd and 'reason="no_rule"' in sd
    assert 'device=' not in sd and "peer_device" not in sd    # internal numbers stay home
    assert "violation: 10.40.104.13 -> 93.184.216.34 tcp/443 (no_rule" in msg
    assert rows[1][3].startswith("local0.notice") and 'mac="dc:a6:32:7e:5b:19"' in rows[1][4]
    assert 'nearest_rule="a\\"b\\]c\\\\d"' in rows[2][4]        # RFC 5424 escaping survives


def test_cef_over_tcp(plain: tuple[Rsyslog, int, int]) -> None:
    server, _, tcp = plain
    _send(f"tcp://127.0.0.1:{tcp}", [VIOLATION], format="cef", hostname="ward-cef")
    [row] = _received(server, "ward-cef")
    msg = row[5]
    assert msg.startswith("CEF:0|wardtap|wardtap|") and "|violation|Policy violation|6|" in msg
    for field in ("src=10.40.104.13", "dst=93.184.216.34", "dpt=443", "proto=TCP",
                  "act=blocked", "cs1=no_rule", "smac=00:12:21:5e:a0:2c"):
        assert field in msg, field


def test_tls_with_a_certificate_the_test_made(tls: tuple[Rsyslog, int, Path]) -> None:
    server, port, ca = tls
    out = _send(f"tls://127.0.0.1:{port}", [VIOLATION], ca=str(ca), hostname="ward-tls")
    assert out.counters["send_errors"] == 0
    [row] = _received(server, "ward-tls")
    assert row[0] == "violation" and 'dst="93.184.216.34"' in row[4]


def test_tls_refuses_an_untrusted_receiver(tls: tuple[Rsyslog, int, Path]) -> None:
    """Without the receiver's CA the handshake fails: nothing is sent, it is counted."""
    _, port, _ = tls
    out = SyslogOutput(f"tls://127.0.0.1:{port}", hostname="ward-untrusted")
    out.publish([VIOLATION])
    wait_for(lambda: out.counters["send_errors"] >= 1, timeout=10,
             what="the TLS failure to be counted")
    out.close()
    assert out.counters["sent"] == 0


@pytest.mark.parametrize("url, message", [
    ("http://siem:514", "use udp://HOST:514"), ("udp://", "use udp://HOST:514"),
    ("tcp://siem:99999", "bad port"),
])
def test_bad_destinations_are_one_line(url: str, message: str) -> None:
    with pytest.raises(SyslogError, match=message):
        SyslogOutput(url)


def test_eve_file_reads_like_suricata(tmp_path: Path) -> None:
    path = tmp_path / "eve.json"
    out = EveOutput(str(path), host="ward4b-01")
    flow_end = {"type": "flow_end", "ts": 1732788102.0, "first": 1732788101.5, "flow": 7,
                "src": "10.40.104.11", "dst": "10.20.0.15", "proto": 6, "sport": 5, "dport": 443,
                "vlan": 104, "verdict": "allow", "rule": "pumps", "end": "fin", "packets": 9,
                "bytes": 900, "device": 1, "peer_device": 2}
    out.publish([VIOLATION, NEW_DEVICE, flow_end])
    out.close()
    alert, device = (json.loads(line) for line in path.read_text().splitlines())
    assert alert["event_type"] == "alert" and alert["proto"] == "TCP"
    assert (alert["src_ip"], alert["src_port"], alert["dest_ip"], alert["dest_port"]) == (
        "10.40.104.13", 51000, "93.184.216.34", 443)
    assert alert["timestamp"] == "2024-11-28T10:01:41.500000+0000" and alert["vlan"] == [104]
    assert alert["alert"]["action"] == "blocked" and alert["alert"]["category"]
    assert device["event_type"] == "wardtap" and device["wardtap"]["mac"] == "dc:a6:32:7e:5b:19"
    assert "device" not in device["wardtap"]           # internal numbers stay home
