"""A real mosquitto on loopback for fleet tests and benchmarks, and a test CA.

The CA, the broker's certificate and the clients' certificates are made at test time with
the `cryptography` library; the broker listens on free ports on 127.0.0.1 only, with the
production ACL from broker/wardtap.acl (per-appliance patterns on the certificate CN).
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from netns import wait_for  # noqa: F401  (re-exported to the fleet tests)

ROOT = Path(__file__).resolve().parents[2]
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
ACL = ROOT / "broker" / "wardtap.acl"




def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def quiet_port() -> int:
    """A free port below the kernel's ephemeral range. For a broker that is down while a
    client keeps reconnecting to it: a client's own ephemeral port can be the very port it
    connects to, and then TCP connects it to itself and the broker cannot start there."""
    import random

    with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as fh:
        low = int(fh.read().split()[0])
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(max(1024, low // 2), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    return free_port()


def _listening_ports(pid: int) -> set[int]:
    """The TCP ports process `pid` listens on (its socket inodes in /proc/net/tcp{,6})."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as fh:
            for line in fh.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:       # LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


class TestCA:
    """A throw-away certificate authority writing PEM files into `directory`."""

    __test__ = False

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder().subject_name(_name("wardtap test CA"))
            .issuer_name(_name("wardtap test CA")).public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), critical=True)
            .sign(self.key, hashes.SHA256()))
        self.ca_path = self.dir / "ca.pem"
        self.ca_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, cn: str, server: bool = False,
              ips: tuple[str, ...] = ("127.0.0.1",)) -> tuple[str, str]:
        """A certificate and key for `cn` (a server's names: localhost and `ips`); returns
        (cert path, key path)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(self.cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False))
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"),
                 *(x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips)]),
                critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        cert_path, key_path = self.dir / f"{cn}.pem", self.dir / f"{cn}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        os.chmod(key_path, 0o600)
        return str(cert_path), str(key_path)


@dataclass
class Broker:
    """mosquitto with a TLS listener (client certificates, ACL) and a plain loopback one.

    The plain listener (no ACL, anonymous) is for benchmarks and for tests that are not
    about authentication; both are on 127.0.0.1 only.
    """

    directory: Path
    tls: bool = True
    plain_port: int = field(default_factory=free_port)
    tls_port: int = field(default_factory=free_port)
    password_port: int = field(default_factory=free_port)
    passwords: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    ca: TestCA | None = None
    starts: int = 0
    # the addresses clients reach it at (a VM's slirp sees this machine's loopback as
    # 10.0.2.2)
    server_ips: tuple[str, ...] = ("127.0.0.1",)

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "data").mkdir(exist_ok=True)
        if self.tls:
            self.ca = TestCA(self.directory / "pki")
            self.server_cert, self.server_key = self.ca.issue("localhost", server=True,
                                                                  ips=self.server_ips)
            # username/password listener (TLS, no client certificates), same ACL on %u
            pwfile = self.directory / "passwords"
            for user in ("ward4b-01", "fleet"):
                self.passwords[user] = f"pw-{user}-{os.getpid()}"
                subprocess.run(["mosquitto_passwd", "-b", *(["-c"] if not pwfile.exists()
                                                           else []),
                                str(pwfile), user, self.passwords[user]], check=True,
                               capture_output=True)
        self.conf = self.directory / "mosquitto.conf"
        self.conf.write_text(self._config())

    def _config(self) -> str:
        lines = [
            # as root, mosquitto would drop to the "mosquitto" user, which cannot read the
            # test keys (0600) or write the persistence directory in tmp_path
            *(["user root"] if os.geteuid() == 0 else []),
            "per_listener_settings true",
            "persistence true",
            f"persistence_location {self.directory / 'data'}/",
            "autosave_interval 1800",
            "max_inflight_messages 200",
            "max_queued_messages 1000000",
            "max_queued_bytes 0",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "connection_messages true",
            "",
            f"listener {self.plain_port} 127.0.0.1",
            "allow_anonymous true",
        ]
        if self.tls:
            assert self.ca is not None
            lines += [
                "",
                f"listener {self.tls_port} 127.0.0.1",
                "allow_anonymous false",
                f"cafile {self.ca.ca_path}",
                f"certfile {self.server_cert}",
                f"keyfile {self.server_key}",
                "require_certificate true",
                "use_identity_as_username true",
                f"acl_file {ACL}",
                "",
                f"listener {self.password_port} 127.0.0.1",
                "allow_anonymous false",
                f"certfile {self.server_cert}",
                f"keyfile {self.server_key}",
                f"password_file {self.directory / 'passwords'}",
                f"acl_file {ACL}",
            ]
        return "\n".join(lines) + "\n"

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.plain_port}"

    @property
    def tls_url(self) -> str:
        return f"mqtts://127.0.0.1:{self.tls_port}"

    @property
    def password_url(self) -> str:
        return f"mqtts://127.0.0.1:{self.password_port}"

    def start(self) -> None:
        """Start mosquitto. Another process can take a port between free_port() and the
        bind (parallel tests, other brokers): the first start then picks new ports; a
        restart keeps its ports, since clients reconnect to them."""
        assert self.proc is None or self.proc.poll() is not None
        for attempt in range(5):
            log = open(self.directory / "mosquitto.log", "ab")  # noqa: SIM115
            self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=log,
                                         stderr=subprocess.STDOUT)
            log.close()
            ports = [self.plain_port] + ([self.tls_port, self.password_port]
                                         if self.tls else [])
            try:
                wait_for(functools.partial(self._listening, ports), timeout=10,
                         what="mosquitto to listen")
            except AssertionError:
                taken = "Address already in use" in self.log()
                if not (taken and self.starts == 0 and attempt < 4):
                    raise
                self.plain_port, self.tls_port, self.password_port = (
                    free_port(), free_port(), free_port())
                self.conf.write_text(self._config())
                continue
            self.starts += 1
            return

    def _listening(self, ports: list[int]) -> bool:
        """Listening, and ours: a connect alone could reach another process that holds
        the port, so the listening sockets must be among mosquitto's own."""
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"mosquitto exited: {self.log()[-2000:]}")
        assert self.proc is not None
        return all(port in _listening_ports(self.proc.pid) for port in ports)

    def stop(self, kill: bool = False) -> None:
        """SIGTERM (mosquitto saves its persistence file) or SIGKILL."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        path = self.directory / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def client_cert(self, cn: str) -> dict[str, str]:
        """Broker options (ca/cert/key) for a client whose certificate CN is `cn`."""
        assert self.ca is not None
        cert, key = self.ca.issue(cn)
        return {"ca": str(self.ca.ca_path), "cert": cert, "key": key}


@contextlib.contextmanager
def running_broker(directory: Path, tls: bool = True) -> Iterator[Broker]:
    broker = Broker(directory, tls=tls)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop(kill=True)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A fresh mosquitto (TLS + ACL listener and a plain loopback listener) per test."""
    with running_broker(tmp_path / "broker") as b:
        yield b


# -- appliances and fleet clients ------------------------------------------------------------

def fleet_settings(broker: Broker, cn: str = "fleet") -> Any:
    from appliance.contract.broker import BrokerSettings

    o = broker.client_cert(cn)
    return BrokerSettings.from_options(broker.tls_url, ca=o["ca"], cert=o["cert"], key=o["key"])


def fleet_env(broker: Broker, key: str | None = None) -> dict[str, str]:
    """Environment for `wardtap fleet ...` as the fleet operator."""
    o = broker.client_cert("fleet")
    env = dict(os.environ, PYTHONPATH=str(ROOT), WARDTAP_BROKER=broker.tls_url,
               WARDTAP_CA=o["ca"], WARDTAP_TLS_CERT=o["cert"], WARDTAP_TLS_KEY=o["key"])
    if key:
        env["WARDTAP_FLEET_KEY"] = key
    return env


def write_appliance(directory: Path, broker: Broker, appliance: str, site: str = "st-marys",
                    packets: int = 5000, fleet_pub: str | None = None,
                    mode: str = "monitor", extra: str = "") -> Path:
    """A daemon directory: demo ward capture, policy, config reporting to `broker` (TLS)."""
    from demoward.ward import DEMO_POLICY, write_demo_ward

    directory.mkdir(parents=True, exist_ok=True)
    if not (directory / "ward.pcap").exists():
        write_demo_ward(str(directory / "ward.pcap"), packets=packets)
    (directory / "policy.toml").write_text(DEMO_POLICY)
    o = broker.client_cert(appliance)
    key_line = f'fleet_key = "{fleet_pub}"\n' if fleet_pub else ""
    (directory / "wardtap.toml").write_text(
        f'[appliance]\nmode = "{mode}"\n'
        '[datapath]\ntype = "replay"\nfiles = ["ward.pcap"]\nstay = true\n'
        '[policy]\nfile = "policy.toml"\n[store]\npath = "wardtap.db"\n'
        '[events]\nlog = "events.jsonl"\n[control]\nsocket = "control.sock"\n'
        f'[broker]\nurl = "{broker.tls_url}"\nsite = "{site}"\nappliance = "{appliance}"\n'
        f'ca = "{o["ca"]}"\ncert = "{o["cert"]}"\nkey = "{o["key"]}"\n'
        f'reconnect_max = 2\nlinger = 0.05\nmin_interval = 0.2\n{key_line}{extra}')
    return directory


class ApplianceProcess:
    """`wardtap run` as a real process (start, SIGTERM, SIGKILL)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    def start(self) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.runs += 1
        log = open(self.dir / f"daemon-{self.runs}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "appliance.cli", "run", "--config",
             str(self.dir / "wardtap.toml"), "--log-level", "debug"],
            cwd=self.dir, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.terminate()
        return self.proc.wait(timeout=30)

    def log(self) -> str:
        return "\n".join((self.dir / f"daemon-{i}.log").read_text(errors="replace")
                         for i in range(1, self.runs + 1))

    def close(self) -> None:
        if self.alive():
            self.kill9()


def spool_facts(db: Path) -> tuple[str, int, int]:
    """(epoch, highest row id ever allocated, rows waiting) of an appliance's spool."""
    import sqlite3

    if not db.exists():
        return "", 0, 0
    conn = sqlite3.connect(db, timeout=10)
    try:
        epoch = conn.execute("SELECT value FROM meta WHERE key = 'spool.epoch'").fetchone()
        seq = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'spool'").fetchone()
        depth = conn.execute("SELECT count(*) FROM spool").fetchone()[0]
    except sqlite3.OperationalError:       # the store is still being created
        return "", 0, 0
    finally:
        conn.close()
    return (epoch[0] if epoch else ""), (int(seq[0]) if seq else 0), int(depth)


class Watcher:
    """A fleet-side subscriber recording every message (retained flag kept)."""

    def __init__(self, settings: Any, filters: list[str]) -> None:
        from appliance.fleet.client import FleetClient

        self.fc = FleetClient(settings)
        self.fc.__enter__()
        self.fc.subscribe(filters)
        self.seen: list[Any] = []

    def poll(self) -> list[Any]:
        import queue

        while True:
            try:
                self.seen.append(self.fc.messages.get_nowait())
            except queue.Empty:
                return self.seen

    def last(self, topic_name: str) -> Any:
        for msg in reversed(self.poll()):
            if msg.topic == topic_name:
                return msg
        return None

    def close(self) -> None:
        self.fc.close()
