"""The provisioning file checked, all of it, before anything is written.

`check(path)` reads `wardtap-provision.toml` (docs: appliance.system.provision) and returns
a Plan (what to write) or raises ProvisionError with one line per problem, naming the
file, line and field: TLS material (certificates, chains, key pairs, names, validity), the
fleet's signing key, management networking and SSH keys. It never writes.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import re
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from appliance.common.bounded import BoundsError, load_toml
from appliance.common.tomlfile import TomlLines
from appliance.errors import WardtapError

MODES = ("learn", "monitor", "enforce", "bypass")
TIME_SYNCED = "/run/systemd/timesync/synchronized"
MAX_PROVISION_BYTES = 1 << 20     # the file carries PEM text; 1 MiB is far above that
_SSH_KEY = re.compile(r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|"
                      r"sk-ssh-ed25519@openssh\.com|sk-ecdsa-sha2-nistp256@openssh\.com) "
                      r"[A-Za-z0-9+/=]+( .*)?$")
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")

SCHEMA: dict[str, dict[str, type | tuple[type, ...]]] = {
    "appliance": {"site": str, "id": str, "mode": str, "datapath": str, "interface": str,
                  "bridge": str},
    "broker": {"url": str, "ca": str, "cert": str, "key": str, "fleet_key": str},
    "policy": {"file": str},
    "management": {"interface": str, "vlan": int, "address": str, "gateway": str,
                   "dns": list},
    "ssh": {"user": str, "authorized_keys": list},
}
REQUIRED = {"appliance": ("site", "id"), "broker": ("url", "ca", "cert", "key", "fleet_key")}


class ProvisionError(WardtapError):
    """The provisioning file is not valid; `problems` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass
class Plan:
    """A fully validated provisioning file: what `apply` will write."""

    source: str
    source_sha256: str
    site: str
    appliance: str
    mode: str
    datapath: dict[str, Any]
    broker_url: str
    files: dict[str, bytes] = field(default_factory=dict)   # config-relative path -> bytes
    policy: bytes | None = None
    ssh_user: str = "wardadmin"
    warnings: list[str] = field(default_factory=list)


# -- checking --------------------------------------------------------------------------------

class _Checker:
    def __init__(self, path: str, text: str, clock: Callable[[], float],
                 clock_synced: bool) -> None:
        self.path = path
        self.base = os.path.dirname(os.path.abspath(path))
        self.lines = TomlLines(text)
        self.problems: list[str] = []
        self.warnings: list[str] = []
        self.now = datetime.datetime.fromtimestamp(clock(), datetime.UTC)
        self.clock_synced = clock_synced

    def problem(self, table: str, key: str | None, message: str) -> None:
        line = self.lines.key(f"[{table}]", key) if key else self.lines.table(f"[{table}]")
        loc = f":{line}" if line else ""
        what = f"{table}.{key}" if key else table
        self.problems.append(f"{self.path}{loc} [{what}]: {message}")

    def material(self, table: str, key: str, value: str) -> bytes | None:
        """PEM text given inline, or read from a file beside the provisioning file."""
        if value.lstrip().startswith("-----BEGIN"):
            return value.encode()
        target = os.path.join(self.base, value)
        try:
            with open(target, "rb") as fh:
                return fh.read()
        except FileNotFoundError:
            self.problem(table, key, f"{value}: no such file beside {os.path.basename(self.path)}")
        except OSError as exc:
            self.problem(table, key, f"{value}: cannot read: {exc.strerror}")
        return None

    def _when(self, moment: datetime.datetime) -> str:
        return moment.strftime("%Y-%m-%d %H:%M UTC")

    def validity(self, table: str, key: str, cert: Any, what: str) -> bool:
        start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
        if self.now > end:
            self.problem(table, key, f"{what} expired on {self._when(end)} (the appliance "
                         f"clock says {self._when(self.now)})")
            return False
        if self.now < start:
            if self.clock_synced:
                self.problem(table, key, f"{what} is not valid before {self._when(start)} "
                             f"(the clock, synchronised, says {self._when(self.now)})")
                return False
            self.warnings.append(f"{what} becomes valid on {self._when(start)}; the clock "
                                 f"({self._when(self.now)}) is not synchronised yet, so "
                                 "this was not held against it")
        return True


def _load_certs(data: bytes) -> list[Any]:
    from cryptography import x509

    return list(x509.load_pem_x509_certificates(data))


def _cn(cert: Any) -> str | None:
    from cryptography.x509.oid import NameOID

    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


def _issued_by(cert: Any, issuer: Any) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except Exception:  # noqa: BLE001  (ValueError, TypeError, InvalidSignature: not issued)
        return False
    return True


def _spki(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return bytes(key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo))


def check(path: str, clock: Callable[[], float] = time.time,
          clock_synced: bool | None = None) -> Plan:
    """Validate a provisioning file completely; raise ProvisionError listing every problem."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_PROVISION_BYTES + 1)
    except FileNotFoundError:
        raise ProvisionError([f"{path}: no such file (write wardtap-provision.toml to the "
                              "boot partition)"]) from None
    except OSError as exc:
        raise ProvisionError([f"{path}: cannot read: {exc.strerror}"]) from None
    try:
        if len(raw) > MAX_PROVISION_BYTES:
            raise BoundsError(f"more than the {MAX_PROVISION_BYTES:,} bytes allowed")
        text = raw.decode("utf-8")
        doc = load_toml(text, max_bytes=MAX_PROVISION_BYTES)
    except UnicodeDecodeError:
        raise ProvisionError([f"{path}: not UTF-8 text"]) from None
    except BoundsError as exc:
        raise ProvisionError([f"{path}: {exc}"]) from None
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"line (\d+)", str(exc))
        raise ProvisionError([f"{path}{':' + match.group(1) if match else ''}: TOML syntax: "
                              f"{exc}"]) from None
    if clock_synced is None:
        clock_synced = os.path.exists(TIME_SYNCED)
    c = _Checker(path, text, clock, clock_synced)
    for table, values in doc.items():
        if table not in SCHEMA or not isinstance(values, dict):
            c.problem(table, None, f"unknown table (expected: {', '.join(SCHEMA)})")
            continue
        for key, value in values.items():
            expected = SCHEMA[table].get(key)
            if expected is None:
                c.problem(table, key, f"unknown field (expected: {', '.join(SCHEMA[table])})")
            elif not isinstance(value, expected) or isinstance(value, bool):
                kinds = expected if isinstance(expected, tuple) else (expected,)
                c.problem(table, key, f"must be {' or '.join(k.__name__ for k in kinds)}")
    for table, keys in REQUIRED.items():
        for key in keys:
            if not isinstance(doc.get(table, {}).get(key), str):
                if key not in doc.get(table, {}):
                    c.problem(table, None, f"{key} = \"...\" is missing")
    if c.problems:
        raise ProvisionError(c.problems)

    appliance, broker = doc["appliance"], doc["broker"]
    from appliance.contract.broker import ContractError, check_id, parse_url

    for key in ("site", "id"):
        try:
            check_id(appliance[key], "appliance id" if key == "id" else "site")
        except ContractError as exc:
            c.problem("appliance", key, str(exc))
    mode = appliance.get("mode", "monitor")
    if mode not in MODES:
        c.problem("appliance", "mode", f"must be one of {', '.join(MODES)}")
    kind = appliance.get("datapath", "inline")
    datapath: dict[str, Any] = {"type": kind}
    if kind == "inline":
        datapath["bridge"] = appliance.get("bridge", "br0")
        datapath["queue"] = 0
    elif kind == "tap":
        if "interface" not in appliance:
            c.problem("appliance", "datapath", "tap needs interface = \"eth1\" (the mirror port)")
        datapath["interface"] = appliance.get("interface", "")
    else:
        c.problem("appliance", "datapath", "must be inline or tap")
    for key in ("bridge", "interface"):
        if key in appliance and not _IFNAME.match(appliance[key]):
            c.problem("appliance", key, f"{appliance[key]!r} is not an interface name")
    try:
        tls, _, _, _ = parse_url(broker["url"])
        if not tls:
            c.problem("broker", "url", "the fleet broker must be reached over TLS: mqtts://")
    except ContractError as exc:
        c.problem("broker", "url", str(exc))

    plan = Plan(source=path, source_sha256=hashlib.sha256(raw).hexdigest(),
                site=appliance["site"], appliance=appliance["id"], mode=mode,
                datapath=datapath, broker_url=broker["url"])
    _check_tls(c, broker, plan)
    _check_fleet_key(c, broker, plan)

    if "policy" in doc and "file" in doc["policy"]:
        policy_bytes = c.material("policy", "file", doc["policy"]["file"])
        if policy_bytes is not None:
            from appliance.errors import PolicyError
            from appliance.policy.model import compile_policy, parse_policy

            try:
                compile_policy(parse_policy(policy_bytes.decode("utf-8"),
                                            os.path.join(c.base, doc["policy"]["file"])))
                plan.policy = policy_bytes
            except UnicodeDecodeError:
                c.problem("policy", "file", "not UTF-8 text")
            except PolicyError as exc:
                c.problems.append(f"{exc} (from {path} [policy.file])")
    elif mode in ("monitor", "enforce"):
        c.problem("appliance", "mode", f"mode {mode} needs a policy: [policy] file = \"...\"")

    _check_management(c, doc.get("management", {}), plan)
    ssh = doc.get("ssh", {})
    plan.ssh_user = ssh.get("user", "wardadmin")
    if not _USER.match(plan.ssh_user):
        c.problem("ssh", "user", f"{plan.ssh_user!r} is not a user name")
    keys = ssh.get("authorized_keys", [])
    for n, key in enumerate(keys, 1):
        if not isinstance(key, str) or not _SSH_KEY.match(key.strip()):
            c.problem("ssh", "authorized_keys", f"entry {n} is not an OpenSSH public key "
                      "line (ssh-ed25519 AAAA... comment)")
    if keys:
        plan.files[f"ssh/authorized_keys.{plan.ssh_user}"] = \
            ("\n".join(k.strip() for k in keys) + "\n").encode()
    if c.problems:
        raise ProvisionError(c.problems)
    plan.warnings = c.warnings
    return plan


def _check_tls(c: _Checker, broker: dict[str, Any], plan: Plan) -> None:
    from cryptography.hazmat.primitives import serialization

    ca_data = c.material("broker", "ca", broker["ca"])
    cert_data = c.material("broker", "cert", broker["cert"])
    key_data = c.material("broker", "key", broker["key"])
    cas: list[Any] = []
    if ca_data is not None:
        try:
            cas = _load_certs(ca_data)
        except ValueError as exc:
            c.problem("broker", "ca", f"not a PEM certificate: {exc}")
        for ca in cas:
            c.validity("broker", "ca", ca, f"CA certificate {_cn(ca)!r}")
    chain: list[Any] = []
    if cert_data is not None:
        try:
            chain = _load_certs(cert_data)
        except ValueError as exc:
            c.problem("broker", "cert", f"not a PEM certificate: {exc}")
    if chain:
        leaf = chain[0]
        cn = _cn(leaf)
        c.validity("broker", "cert", leaf, f"client certificate {cn!r}")
        if cn != plan.appliance:
            c.problem("broker", "cert", f"the certificate is for {cn!r}, this appliance is "
                      f"{plan.appliance!r} (the broker's ACLs use the certificate's CN)")
        if cas:
            issuer, seen = leaf, 0
            while seen < 5 and not any(_issued_by(issuer, ca) for ca in cas):
                parent = next((p for p in chain[1:] if _issued_by(issuer, p)), None)
                if parent is None:
                    c.problem("broker", "cert", f"not issued by the CA in [broker] ca "
                              f"(issuer {issuer.issuer.rfc4514_string()!r}): a certificate "
                              "from another CA, or the wrong CA file")
                    break
                issuer, seen = parent, seen + 1
    key = None
    if key_data is not None:
        try:
            key = serialization.load_pem_private_key(key_data, password=None)
        except TypeError:
            c.problem("broker", "key", "the private key is encrypted; the appliance needs it "
                      "unencrypted (it is stored readable by the wardtap service only)")
        except ValueError as exc:
            c.problem("broker", "key", f"not a PEM private key: {exc}")
    if key is not None and chain:
        if _spki(key.public_key()) != _spki(chain[0].public_key()):
            c.problem("broker", "key", "this key does not belong to the certificate in "
                      "[broker] cert (mismatched pair)")
    if ca_data and cert_data and key_data:
        plan.files["tls/ca.pem"] = ca_data
        plan.files["tls/client.pem"] = cert_data
        plan.files["tls/client.key"] = key_data


def _check_fleet_key(c: _Checker, broker: dict[str, Any], plan: Plan) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    data = c.material("broker", "fleet_key", broker["fleet_key"])
    if data is None:
        return
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        c.problem("broker", "fleet_key", f"not a PEM public key: {exc}")
        return
    if not isinstance(key, Ed25519PublicKey):
        c.problem("broker", "fleet_key", "not an Ed25519 public key (make the fleet key "
                  "with `wardtap fleet keygen`)")
        return
    plan.files["fleet.pub"] = data


def _check_management(c: _Checker, mgmt: dict[str, Any], plan: Plan) -> None:
    interface = mgmt.get("interface", "eth2")
    if not _IFNAME.match(interface):
        c.problem("management", "interface", f"{interface!r} is not an interface name")
        return
    if interface in ("eth0", "eth1", "br0", plan.datapath.get("bridge")) and \
            "vlan" not in mgmt:
        c.problem("management", "interface", f"{interface} carries ward traffic; management "
                  "needs its own interface or a vlan")
    vlan = mgmt.get("vlan")
    if vlan is not None and not 1 <= vlan <= 4094:
        c.problem("management", "vlan", "must be 1..4094")
    address = mgmt.get("address", "dhcp")
    lines = ["# written by wardtap-provision; the management network (image/README.md)"]
    net_name = f"{interface}.{vlan}" if vlan else interface
    network = [*lines, "[Match]", f"Name={net_name}", "", "[Network]",
               "LinkLocalAddressing=no", "IPv6AcceptRA=no" if address != "dhcp" else
               "IPv6AcceptRA=yes"]
    if address == "dhcp":
        network.append("DHCP=yes")
    else:
        try:
            ipaddress.ip_interface(address)
            network.append(f"Address={address}")
        except ValueError:
            c.problem("management", "address", f"{address!r}: give \"dhcp\" or an address "
                      "with its prefix, e.g. \"10.20.0.41/24\"")
    if "gateway" in mgmt:
        try:
            ipaddress.ip_address(mgmt["gateway"])
            network.append(f"Gateway={mgmt['gateway']}")
        except ValueError:
            c.problem("management", "gateway", f"{mgmt['gateway']!r} is not an IP address")
    for server in mgmt.get("dns", []):
        try:
            ipaddress.ip_address(server)
            network.append(f"DNS={server}")
        except ValueError:
            c.problem("management", "dns", f"{server!r} is not an IP address")
    files = {f"network/60-wardtap-mgmt-{net_name}.network": network}
    if vlan:
        files[f"network/60-wardtap-mgmt-{interface}.network"] = [
            *lines, "[Match]", f"Name={interface}", "", "[Network]", "LinkLocalAddressing=no",
            "IPv6AcceptRA=no", f"VLAN={net_name}"]
        files[f"network/60-wardtap-mgmt-{net_name}.netdev"] = [
            *lines, "[NetDev]", f"Name={net_name}", "Kind=vlan", "", "[VLAN]", f"Id={vlan}"]
    for name, content in files.items():
        plan.files[name] = ("\n".join(content) + "\n").encode()


# -- applying --------------------------------------------------------------------------------
