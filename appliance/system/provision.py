"""First-boot provisioning from a file on the boot partition.

A technician writes `wardtap-provision.toml` to the SD card's boot partition (FAT, readable
on any laptop) before the first boot. `wardtap-provision.service` runs

    python -m appliance.system.provision apply /boot/firmware/wardtap-provision.toml

which checks the whole file first and changes nothing unless every part of it is valid:

```toml
[appliance]
site = "st-marys"                  # fleet site id (MQTT topics)
id = "ward4b-01"                   # appliance id; the client certificate's CN must match
mode = "monitor"                   # initial mode: learn | monitor | enforce | bypass
datapath = "inline"                # inline (bridge br0, the default) | tap
# interface = "eth1"               # tap: the mirror port

[broker]
url = "mqtts://broker.hosp.example:8883"     # TLS only
ca = "ca.pem"                      # a file beside this one, or the PEM text itself
cert = "ward4b-01.pem"             # client certificate (CN = appliance id), signed by ca
key = "ward4b-01.key"              # its private key, unencrypted
fleet_key = "fleet.pub"            # Ed25519 public key that signs fleet commands

[policy]                           # optional; monitor and enforce need it
file = "ward4b.policy.toml"

[management]                       # optional; default: DHCP on eth2
interface = "eth2"                 # a NIC outside the bypassed pair (see image/README.md)
# vlan = 20                        # or: a tagged VLAN on that interface
# address = "10.20.0.41/24"        # default "dhcp"
# gateway = "10.20.0.1"
# dns = ["10.20.0.2"]

[ssh]                              # optional: keys for the admin account (no passwords)
user = "wardadmin"
authorized_keys = ["ssh-ed25519 AAAA... it-team@hospital"]
```

On success one new generation is written under the data partition and switched on with a
single atomic rename (`config` -> `config.<generation>`; /etc/wardtap points at it), the
integrity manifest of the configuration is written with it, and the provisioning file (it
holds a private key) is deleted from the boot partition. On any error nothing is written:
the message goes to the console and the journal (one line per problem, naming the file,
line and field), the LEDs show the provisioning fault (see image/README.md), and the
appliance stays in bypass: wardtap.service needs /etc/wardtap/wardtap.toml to start.

`python -m appliance.system.provision check FILE` runs the same checks on a laptop.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import grp
import hashlib
import ipaddress
import json
import os
import pwd
import re
import shutil
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from appliance.common.bounded import BoundsError, load_toml
from appliance.common.tomlfile import TomlLines
from appliance.errors import WardtapError

DATA_DIR = "/var/lib/wardtap"
INSTALL_MANIFEST = "/usr/share/wardtap/install.manifest.json"
ETC_LINK = "/etc/wardtap"
MODES = ("learn", "monitor", "enforce", "bypass")
TIME_SYNCED = "/run/systemd/timesync/synchronized"
ERROR_FILE = "/run/wardtap-provision.error"
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

def _config_text(plan: Plan, generation: str, data: str, etc: str,
                 install_manifest: str | None) -> str:
    state = os.path.join(data, "state", generation)
    manifests = [m for m in (install_manifest, os.path.join(state, "integrity.json")) if m]
    lines = [
        f"# Written by wardtap-provision from {os.path.basename(plan.source)} "
        f"(sha256 {plan.source_sha256[:16]}) on {time.strftime('%Y-%m-%d %H:%M:%S %Z')}.",
        "# Do not edit: changes are reported by the integrity check. Provision again.",
        "[appliance]", f'mode = "{plan.mode}"', f'name = "{plan.appliance}"', "",
        "[datapath]",
        *(f"{k} = {json.dumps(v)}" for k, v in plan.datapath.items()), "",
        "[store]", f'path = "{os.path.join(data, "state", "wardtap.db")}"', "",
        "[control]", 'socket = "/run/wardtap/control.sock"', "",
    ]
    if plan.policy is not None:
        lines += ["[policy]", f'file = "{os.path.join(state, "policy.toml")}"', ""]
    lines += ["[broker]", f"url = {json.dumps(plan.broker_url)}", f'site = "{plan.site}"',
              f'appliance = "{plan.appliance}"', f'ca = "{etc}/tls/ca.pem"',
              f'cert = "{etc}/tls/client.pem"', f'key = "{etc}/tls/client.key"',
              f'fleet_key = "{etc}/fleet.pub"', "",
              "[integrity]", f"manifests = {json.dumps(manifests)}", "interval = 900", ""]
    return "\n".join(lines)


def _ids(user: str | None, group: str | None) -> tuple[int, int]:
    uid = pwd.getpwnam(user).pw_uid if user else -1
    gid = grp.getgrnam(group).gr_gid if group else -1
    return uid, gid


def _write(path: str, data: bytes, mode: int, uid: int = -1, gid: int = -1) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    if uid != -1 or gid != -1:
        os.chown(path, uid, gid)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def apply(plan: Plan, data: str = DATA_DIR, etc: str = ETC_LINK,
          install_manifest: str | None = INSTALL_MANIFEST, user: str | None = "wardtap",
          group: str | None = "wardtap", generation: str | None = None) -> str:
    """Write the plan as a new generation and switch to it atomically; return the
    generation. A failure before the switch removes what it wrote and leaves the previous
    configuration (or none) in force."""
    from appliance.system import integrity
    from appliance.system.config import load_config

    if not os.path.isdir(data):
        raise WardtapError(f"{data}: the data partition is not mounted")
    generation = generation or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    uid, gid = _ids(user, group)
    config_dir = os.path.join(data, f"config.{generation}")
    state_dir = os.path.join(data, "state", generation)
    link = os.path.join(data, "config")
    written: list[str] = []
    try:
        for directory, owner in ((config_dir, (0, gid)), (state_dir, (uid, gid))):
            if os.path.lexists(directory):
                raise WardtapError(f"{directory} exists already: provisioned twice within a "
                                   "second?")
            os.makedirs(directory, mode=0o750)
            written.append(directory)
            if owner != (0, -1) and (uid != -1 or gid != -1):
                os.chown(directory, owner[0] if owner[0] != -1 else -1, owner[1])
        for name, content in sorted(plan.files.items()):
            # group-readable: the wardtap service reads its key; sshd reads the keys as the
            # admin (in the wardtap group). Nothing here is writable by the service.
            _write(os.path.join(config_dir, name), content, 0o640, 0 if gid != -1 else -1, gid)
        for sub in {os.path.dirname(n) for n in plan.files if "/" in n}:
            os.chmod(os.path.join(config_dir, sub), 0o750)
            if gid != -1:
                os.chown(os.path.join(config_dir, sub), 0, gid)
        text = _config_text(plan, generation, data, etc, install_manifest)
        _write(os.path.join(config_dir, "wardtap.toml"), text.encode(), 0o640,
               0 if gid != -1 else -1, gid)
        load_config(os.path.join(config_dir, "wardtap.toml"))    # what we wrote must load
        _write(os.path.join(config_dir, "provision.json"), json.dumps({
            "site": plan.site, "appliance": plan.appliance, "generation": generation,
            "source_sha256": plan.source_sha256, "provisioned": time.time(),
            "warnings": plan.warnings}, indent=1).encode(), 0o644)
        if plan.policy is not None:
            # the service's own directory: a policy pushed by the fleet replaces this file
            _write(os.path.join(state_dir, "policy.toml"), plan.policy, 0o640, uid, gid)
        # The manifest names files as the daemon sees them: through /etc/wardtap.
        doc = integrity.build([os.path.join(config_dir, n) for n in
                               [*plan.files, "wardtap.toml"]] +
                              ([os.path.join(state_dir, "policy.toml")] if plan.policy else []))
        doc["files"] = {(os.path.join(etc, os.path.relpath(p, config_dir))
                         if p.startswith(config_dir + os.sep) else p): v
                        for p, v in doc["files"].items()}
        doc["generation"] = generation
        manifest = os.path.join(state_dir, "integrity.json")
        integrity.write(doc, manifest, 0o640)
        if uid != -1 or gid != -1:
            os.chown(manifest, uid, gid)
        for directory in (config_dir, state_dir, os.path.dirname(state_dir)):
            _fsync_dir(directory)
        # the switch: one rename of a symbolic link
        tmp_link = os.path.join(data, f".config.{generation}.link")
        os.symlink(os.path.basename(config_dir), tmp_link)
        written.append(tmp_link)
        os.replace(tmp_link, link)
        written.clear()
        _fsync_dir(data)
    except BaseException:
        for path in reversed(written):
            with contextlib.suppress(OSError):
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                else:
                    os.unlink(path)
        raise
    _prune(data, generation)
    return generation


def _prune(data: str, keep: str, generations: int = 2) -> None:
    """Keep the newest `generations` configurations (the previous one for reference)."""
    names = sorted(n for n in os.listdir(data) if n.startswith("config.") and
                   os.path.isdir(os.path.join(data, n)))
    for name in names[:-generations]:
        gen = name.removeprefix("config.")
        if gen == keep:
            continue
        shutil.rmtree(os.path.join(data, name), ignore_errors=True)
        shutil.rmtree(os.path.join(data, "state", gen), ignore_errors=True)


# -- the fault display -----------------------------------------------------------------------

def show_fault(message: str, console: str | None = "/dev/console",
               issue_dir: str | None = "/run/issue.d") -> None:
    """Tell the person at the appliance: console, login prompt, journal."""
    text = ("\nwardtap: PROVISIONING FAILED: the appliance stays in bypass (the ward link is "
            "not inspected).\n" + "".join(f"  {line}\n" for line in message.splitlines()) +
            "Fix wardtap-provision.toml on the boot partition and restart.\n\n")
    print(text, file=sys.stderr, flush=True)
    for target, content in ((console, text), (issue_dir and os.path.join(
            issue_dir, "50-wardtap-provision.issue"), text.replace("\\", "\\\\"))):
        if not target:
            continue
        with contextlib.suppress(OSError):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "w") as fh:
                fh.write(content)


def blink_fault(stop: Any = None, pin_factory: Any = None) -> None:
    """The provisioning-fault LED pattern until stopped: health off, violation red double
    flash, bypass white fast blink (bypass after a fault)."""
    import threading

    from appliance.panel.leds import LedPanel

    stop = stop or threading.Event()
    with contextlib.closing(LedPanel(pin_factory=pin_factory)) as leds:
        leds.update(mode="bypass", bypass=True, healthy=False, integrity_alarm=True,
                    datapath_running=False, broker_configured=False)
        while not stop.wait(1.0):
            pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m appliance.system.provision",
                                     description="wardtap first-boot provisioning")
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="validate a provisioning file, change nothing")
    c.add_argument("file")
    a = sub.add_parser("apply", help="validate, then write the configuration atomically")
    a.add_argument("file")
    a.add_argument("--data", default=DATA_DIR)
    a.add_argument("--etc", default=ETC_LINK)
    a.add_argument("--install-manifest", default=INSTALL_MANIFEST)
    a.add_argument("--user", default="wardtap")
    a.add_argument("--group", default="wardtap")
    a.add_argument("--keep-source", action="store_true",
                   help="do not delete the file (it holds the private key) after applying")
    a.add_argument("--error-file", default=ERROR_FILE)
    a.add_argument("--console", default="/dev/console", help="'' for none")
    a.add_argument("--issue-dir", default="/run/issue.d",
                   help="where the login prompt's messages go ('' for none)")
    f = sub.add_parser("fault", help="show the provisioning fault on the LEDs until stopped")
    f.add_argument("--error-file", default=ERROR_FILE)
    args = parser.parse_args(argv)
    if args.command == "fault":
        import signal
        import threading

        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        with contextlib.suppress(OSError):
            with open(args.error_file) as fh:
                show_fault(fh.read().strip(), console=None, issue_dir=None)
        blink_fault(stop)
        return 0
    if args.command == "apply" and not os.path.exists(args.file) and \
            os.path.exists(os.path.join(args.etc, "wardtap.toml")):
        print(f"wardtap-provision: already provisioned ({os.path.realpath(args.etc)}); "
              f"no {args.file}")
        return 0
    try:
        plan = check(args.file)
        for warning in plan.warnings:
            print(f"wardtap-provision: warning: {warning}", file=sys.stderr)
        if args.command == "check":
            print(f"{args.file}: ok: {plan.site}/{plan.appliance}, mode {plan.mode}, "
                  f"{plan.datapath['type']}, broker {plan.broker_url}")
            return 0
        manifest = args.install_manifest if os.path.exists(args.install_manifest) else None
        generation = apply(plan, args.data, args.etc, manifest, args.user or None,
                           args.group or None)
    except WardtapError as exc:
        if args.command == "check":
            print(f"wardtap-provision: error: {exc}", file=sys.stderr)
            return exc.exit_code
        with contextlib.suppress(OSError):
            with open(args.error_file, "w") as fh:
                fh.write(str(exc) + "\n")
        show_fault(str(exc), console=args.console or None, issue_dir=args.issue_dir or None)
        return exc.exit_code
    for stale in (args.error_file, os.path.join(args.issue_dir or "/nonexistent",
                                                "50-wardtap-provision.issue")):
        with contextlib.suppress(OSError):
            os.unlink(stale)
    if not args.keep_source:
        try:
            os.unlink(args.file)
        except OSError as exc:
            print(f"wardtap-provision: warning: could not delete {args.file} (it holds the "
                  f"private key): {exc.strerror}", file=sys.stderr)
    print(f"wardtap-provision: provisioned {plan.site}/{plan.appliance} (generation "
          f"{generation}), mode {plan.mode}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
