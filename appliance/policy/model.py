"""Allow-list policies: load and validate a TOML file, compile it into fast-path tables.

The format is documented in docs/policy.md. Validation is complete before anything is
compiled, so a broken policy is never partly applied; every error names the file, the line
and the field.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from appliance.common.bounded import BoundsError, load_toml, toml_error
from appliance.common.tomlfile import TomlLines as _Lines
from appliance.common.userfile import read_bytes
from appliance.errors import PolicyError
from appliance.policy.conditions import (
    NAME_TTL,
    DicomCondition,
    Hl7Condition,
    compile_conditions,
    dicom_condition,
    dns_name,
    hl7_condition,
)
from fastpath import CompiledPolicy

PROTOCOLS = {"any": 0, "icmp": 1, "tcp": 6, "udp": 17, "icmpv6": 58, "sctp": 132}
PROTOCOL_NAMES = {v: k for k, v in PROTOCOLS.items() if v}
PORTED = {6, 17, 132}
ICMP = {1, 58}
MAX_GROUPS = 256
MAX_SELECTORS = 4096
MAX_RULE_ENTRIES = 4096
MAX_NAMES = 1024              # DNS names over all groups (fastpath policytable.pxi)
MAX_CLINICAL = 1024           # HL7/DICOM values over all rules
MAX_POLICY_BYTES = 1 << 20       # 1 MiB: far above the compiled tables' limits
MAX_POLICY_VERSION = 2**31 - 1
MAX_NAME = 128                   # the policy's name: kept as written, shown escaped

SEL_MAC, SEL_OUI, SEL_NET, SEL_VLAN = 1, 2, 3, 4

_MAC = re.compile(r"^[0-9a-f]{2}([:-][0-9a-f]{2}){5}$", re.I)
_OUI = re.compile(r"^[0-9a-f]{2}([:-][0-9a-f]{2}){2}$", re.I)
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# the inventory's selectors, `class = ["infusion pump"]`, `role = ["DNS server"]`,
# `maker = ["B. Braun"]`: (selector, value) -> the MACs the inventory put there (and, for a
# server role, the servers' addresses)
ClassMembers = Callable[[str, str], list[str]]
INVENTORY_SELECTORS = ("class", "role", "maker")
MAX_MAKER = 64


@dataclass(frozen=True)
class Group:
    name: str
    macs: tuple[bytes, ...] = ()
    ouis: tuple[bytes, ...] = ()
    nets: tuple[Network, ...] = ()
    vlans: tuple[int, ...] = ()
    line: int | None = None
    classes: tuple[str, ...] = ()     # device classes; their MACs are already in `macs`
    loose: tuple[str, ...] = ()       # `ip` entries written with host bits (for lint)
    names: tuple[str, ...] = ()       # DNS names ("*.suffix": names under it), lower case
    roles: tuple[str, ...] = ()       # server roles; their MACs are already in `macs`
    makers: tuple[str, ...] = ()      # makes / MAC vendors; their MACs are in `macs`
    resolved: int = 0                 # MACs in `macs` that class/role/maker put there
    # MUD controllers (MUD URLs, controller class URIs): the appliance configuration's
    # [mud.controllers] addresses for them, read at each load; they are in `nets`
    controllers: tuple[str, ...] = ()

    def inventory(self) -> tuple[tuple[str, str], ...]:
        """(selector, value) of every selector resolved at load: class, role, maker (the
        inventory), mud_controller (the configuration)."""
        return tuple([("class", c) for c in self.classes] + [("role", r) for r in self.roles]
                     + [("maker", m) for m in self.makers]
                     + [("mud_controller", u) for u in self.controllers])


@dataclass(frozen=True)
class Rule:
    name: str
    sources: tuple[str, ...]          # group names, "any", or address/CIDR text
    destinations: tuple[str, ...]
    proto: int                        # 0: any
    ports: tuple[tuple[int, int], ...]   # responder port ranges (ICMP: type ranges)
    either: bool
    line: int | None = None
    hl7: Hl7Condition | None = None       # judged on the flow's first payload
    dicom: DicomCondition | None = None

    def describe(self) -> str:
        proto = PROTOCOL_NAMES.get(self.proto, str(self.proto)) if self.proto else "any"
        ports = ",".join(f"{lo}" if lo == hi else f"{lo}-{hi}" for lo, hi in self.ports)
        arrow = "<->" if self.either else "->"
        src, dst = ",".join(self.sources), ",".join(self.destinations)
        clinical = self.hl7 or self.dicom
        return (f"{src} {arrow} {dst} {proto}{'/' + ports if ports else ''}"
                + (f" {clinical.describe()}" if clinical else ""))


@dataclass(frozen=True)
class Policy:
    path: str
    name: str
    version: int
    arp: bool
    non_ip: bool
    fragment_unmatched: bool
    groups: dict[str, Group]
    rules: tuple[Rule, ...]
    digest: str = ""
    text: str = field(default="", repr=False)
    # rules written with `enabled = false` (a proposal's conversations left out for review):
    # validated, never compiled or evaluated
    disabled: tuple[Rule, ...] = ()
    name_ttl: tuple[int, int] = NAME_TTL     # bounds of a name binding's life, seconds

    def rule_name(self, index: int) -> str | None:
        return self.rules[index].name if 0 <= index < len(self.rules) else None


def load_policy(path: str, classes: ClassMembers | None = None) -> Policy:
    """Read and validate a policy file; raise PolicyError naming line and field.

    `classes` resolves the inventory's group selectors (`class`, `role`, `maker`) to MACs
    (appliance.inventory.identify.class_members over the store), once, now; without it they
    select no device.
    """
    try:
        raw = read_bytes(path, "a policy file", MAX_POLICY_BYTES)
    except ValueError as exc:
        raise PolicyError(path, str(exc)) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise PolicyError(path, "not UTF-8 text", line) from None
    return parse_policy(text, path, classes)


def parse_policy(text: str, path: str = "<policy>",
                 classes: ClassMembers | None = None) -> Policy:
    try:
        doc = load_toml(text, max_bytes=MAX_POLICY_BYTES)
    except BoundsError as exc:
        raise PolicyError(path, str(exc)) from None
    except tomllib.TOMLDecodeError as exc:
        message, line = toml_error(exc)
        raise PolicyError(path, f"TOML syntax: {message}", line) from None
    if not doc:
        raise PolicyError(path, "the policy is empty (no [policy] table, no groups, no rules): "
                          "it would allow nothing")
    return _Validator(text, path, classes).policy(doc)


def check_usable(policy: Policy, mode: str) -> None:
    """Monitor and enforce need a policy that allows something: without a rule every flow is
    a violation (and in enforce, dropped). Raise PolicyError saying so."""
    if mode in ("monitor", "enforce") and not policy.rules:
        raise PolicyError(policy.path, f"the policy has no [[rules]]: in {mode} mode it would "
                          f"{'deny' if mode == 'enforce' else 'report'} every conversation; "
                          "refused", None, "rules")


class _Validator:
    def __init__(self, text: str, path: str, classes: ClassMembers | None = None) -> None:
        self.text = text
        self.path = path
        self.classes = classes
        self.lines = _Lines(text)

    def fail(self, message: str, field_name: str, line: int | None) -> PolicyError:
        return PolicyError(self.path, message, line, field_name)

    def policy(self, doc: dict[str, Any]) -> Policy:
        self._unknown(doc, {"policy", "groups", "rules"}, "", None, "")
        head = doc.get("policy", {})
        if not isinstance(head, dict):
            raise self.fail("must be a table", "policy", self.lines.key("", "policy"))
        self._unknown(head, {"name", "version", "arp", "non_ip", "fragment_unmatched",
                             "name_ttl_min", "name_ttl_max"}, "policy",
                      self.lines.table("[policy]"), "[policy]")
        name = head.get("name", "unnamed")
        if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME:
            raise self.fail(f"must be a non-empty string of at most {MAX_NAME} characters",
                            "policy.name", self.lines.key("[policy]", "name"))
        version = head.get("version", 1)
        if (not isinstance(version, int) or isinstance(version, bool)
                or not 0 <= version <= MAX_POLICY_VERSION):
            raise self.fail(f"must be a whole number from 0 to {MAX_POLICY_VERSION}",
                            "policy.version", self.lines.key("[policy]", "version"))
        arp = self._action(head, "arp")
        non_ip = self._action(head, "non_ip")
        fragments = self._action(head, "fragment_unmatched", "deny")
        ttl = []
        for key, default in (("name_ttl_min", NAME_TTL[0]), ("name_ttl_max", NAME_TTL[1])):
            value = head.get(key, default)
            if (not isinstance(value, int) or isinstance(value, bool)
                    or not 1 <= value <= 7 * 86400):
                raise self.fail("must be whole seconds, 1 to 604800", f"policy.{key}",
                                self.lines.key("[policy]", key))
            ttl.append(value)
        if ttl[0] > ttl[1]:
            raise self.fail("must not be above name_ttl_max", "policy.name_ttl_min",
                            self.lines.key("[policy]", "name_ttl_min"))
        groups = self._groups(doc.get("groups", {}))
        rules, disabled = self._rules(doc.get("rules", []), groups)
        digest = hashlib.sha256(self.text.encode()).hexdigest()
        return Policy(self.path, name, version, arp, non_ip, fragments, groups, rules, digest,
                      self.text, disabled, (ttl[0], ttl[1]))

    def _unknown(self, table: dict[str, Any], allowed: set[str], where: str,
                 line: int | None, header: str | None = None, nth: int = 0) -> None:
        for key in table:
            if key not in allowed:
                at = self.lines.key(header, key, nth) if header is not None else line
                name = f"{where}.{key}" if where else key
                raise self.fail(f"unknown field (expected one of: {', '.join(sorted(allowed))})",
                                name, at)

    def _action(self, head: dict[str, Any], key: str, default: str = "allow") -> bool:
        value = head.get(key, default)
        if value not in ("allow", "deny"):
            raise self.fail('must be "allow" or "deny"', f"policy.{key}",
                            self.lines.key("[policy]", key))
        return value == "allow"

    def _groups(self, raw: Any) -> dict[str, Group]:
        if not isinstance(raw, dict):
            raise self.fail("must be a table of groups", "groups", None)
        groups: dict[str, Group] = {}
        for name, spec in raw.items():
            header = f"[groups.{name}]"
            line = self.lines.table(header)
            where = f"groups.{name}"
            if not _NAME.match(name) or name == "any":
                raise self.fail("group names are 1-64 letters, digits, '_', '.', '-' "
                                "(and not 'any')", where, line)
            if not isinstance(spec, dict):
                raise self.fail("must be a table", where, line)
            self._unknown(spec, {"mac", "oui", "ip", "vlan", "class", "role", "maker", "names",
                                 "mud_controller", "description"}, where, line, header)
            macs = tuple(self._mac(v, f"{where}.mac", self.lines.key(header, "mac"), _MAC, 6)
                         for v in self._list(spec, "mac", where, header))
            ouis = tuple(self._mac(v, f"{where}.oui", self.lines.key(header, "oui"), _OUI, 3)
                         for v in self._list(spec, "oui", where, header))
            ips = self._list(spec, "ip", where, header)
            nets = tuple(self._net(v, f"{where}.ip", self.lines.key(header, "ip"))
                         for v in ips)
            loose = tuple(v for v, net in zip(ips, nets, strict=True)
                          if "/" in v and str(net) != v)
            vlans = tuple(self._vlan(v, f"{where}.vlan", self.lines.key(header, "vlan"))
                          for v in self._list(spec, "vlan", where, header))
            classes = tuple(self._class(v, f"{where}.class", self.lines.key(header, "class"))
                            for v in self._list(spec, "class", where, header))
            names = tuple(dict.fromkeys(
                dns_name(v, f"{where}.names", self.lines.key(header, "names"), self.fail)
                for v in self._list(spec, "names", where, header)))
            roles = tuple(self._role(v, f"{where}.role", self.lines.key(header, "role"))
                          for v in self._list(spec, "role", where, header))
            makers = tuple(self._maker(v, f"{where}.maker", self.lines.key(header, "maker"))
                           for v in self._list(spec, "maker", where, header))
            controllers = tuple(self._controller(
                v, f"{where}.mud_controller", self.lines.key(header, "mud_controller"))
                for v in self._list(spec, "mud_controller", where, header))
            group = Group(name, macs, ouis, nets, vlans, line, classes, loose, names, roles,
                          makers, controllers=controllers)
            if self.classes is not None and group.inventory():
                found = [m for kind, value in group.inventory() for m in self.classes(kind, value)]
                every = tuple(dict.fromkeys(macs + tuple(bytes.fromhex(m.replace(":", ""))
                                                          for m in found if _MAC.match(m))))
                group = replace(group, macs=every, resolved=len(every) - len(set(macs)),
                                nets=tuple(dict.fromkeys(nets + tuple(
                                    ipaddress.ip_network(m) for m in found
                                    if not _MAC.match(m)))))
            if not (macs or ouis or nets or vlans or group.inventory() or names):
                raise self.fail("group has no members (give mac, oui, ip, vlan, class, role, "
                                "maker, names or mud_controller)", where, line)
            groups[name] = group
        return groups

    def _list(self, spec: dict[str, Any], key: str, where: str, header: str) -> list[Any]:
        value = spec.get(key, [])
        if not isinstance(value, list):
            value = [value]
        return value

    def _mac(self, value: Any, where: str, line: int | None, pattern: re.Pattern[str],
             size: int) -> bytes:
        if not isinstance(value, str) or not pattern.match(value):
            example = "00:1a:2b:3c:4d:5e" if size == 6 else "00:1a:2b"
            raise self.fail(f"{value!r} is not a {'MAC address' if size == 6 else 'OUI'} "
                            f"like {example}", where, line)
        return bytes.fromhex(value.replace(":", "").replace("-", ""))

    def _class(self, value: Any, where: str, line: int | None) -> str:
        known = _known_classes()
        if value not in known:
            raise self.fail(f"{value!r} is not a device class ({', '.join(known)})", where,
                            line)
        return str(value)

    def _role(self, value: Any, where: str, line: int | None) -> str:
        known = _known_roles()
        if value not in known:
            raise self.fail(f"{value!r} is not a server role ({', '.join(known)})", where,
                            line)
        return str(value)

    def _controller(self, value: Any, where: str, line: int | None) -> str:
        if not isinstance(value, str) or not value.startswith(("https://", "http://", "urn:")) \
                or any(c.isspace() for c in value) or len(value) > 1024:
            raise self.fail(f"{value!r} is not a MUD URL or controller class URI (https://... "
                            "or urn:..., as in the configuration's [mud.controllers])", where,
                            line)
        return value

    def _maker(self, value: Any, where: str, line: int | None) -> str:
        if not isinstance(value, str) or not value.strip() or len(value) > MAX_MAKER:
            raise self.fail(f"{value!r} is not a maker's name (1-{MAX_MAKER} characters, as "
                            "`wardtap devices` shows a make or MAC vendor)", where, line)
        return value.strip()

    def _net(self, value: Any, where: str, line: int | None) -> Network:
        if not isinstance(value, str):        # ip_network() would take 5 as 0.0.0.5
            raise self.fail(f"{value!r} is not an IP address or CIDR block", where, line)
        try:
            return ipaddress.ip_network(value, strict=False)
        except (ValueError, TypeError):
            raise self.fail(f"{value!r} is not an IP address or CIDR block", where,
                            line) from None

    def _vlan(self, value: Any, where: str, line: int | None) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 4095:
            raise self.fail(f"{value!r} is not a VLAN id 0-4095", where, line)
        return value

    def _rules(self, raw: Any, groups: dict[str, Group]
               ) -> tuple[tuple[Rule, ...], tuple[Rule, ...]]:
        """(enabled rules, rules with `enabled = false`)."""
        if not isinstance(raw, list):
            raise self.fail("must be an array of tables ([[rules]])", "rules",
                            self.lines.key("", "rules"))
        rules: list[Rule] = []
        disabled: list[Rule] = []
        names: set[str] = set()
        header = "[[rules]]"
        for nth, spec in enumerate(raw):
            line = self.lines.table(header, nth)
            where = f"rules[{nth}]"
            if not isinstance(spec, dict):
                raise self.fail("must be a table", where, line)

            def at(key: str, nth: int = nth) -> int | None:
                return self.lines.key(header, key, nth)

            self._unknown(spec, {"name", "from", "to", "proto", "ports", "initiate",
                                 "icmp_types", "description", "enabled", "hl7", "dicom"},
                          where, line, header, nth)
            name = spec.get("name", f"rule-{nth + 1}")
            if not isinstance(name, str) or not _NAME.match(name):
                raise self.fail("must be 1-64 letters, digits, '_', '.', '-'",
                                f"{where}.name", at("name"))
            if name in names:
                raise self.fail(f"rule name {name!r} is used twice", f"{where}.name", at("name"))
            names.add(name)
            where = f"rules.{name}"
            for key in ("from", "to"):
                if key not in spec:
                    raise self.fail("missing", f"{where}.{key}", line)
            sources = self._endpoints(spec["from"], groups, f"{where}.from", at("from"))
            destinations = self._endpoints(spec["to"], groups, f"{where}.to", at("to"))
            proto = self._proto(spec.get("proto", "any"), f"{where}.proto", at("proto"))
            ports: tuple[tuple[int, int], ...] = ()
            if "ports" in spec:
                if proto not in PORTED:
                    raise self.fail("ports need proto tcp, udp or sctp", f"{where}.ports",
                                    at("ports"))
                ports = self._ranges(spec["ports"], 65535, f"{where}.ports", at("ports"))
            if "icmp_types" in spec:
                if proto not in ICMP:
                    raise self.fail("icmp_types need proto icmp or icmpv6",
                                    f"{where}.icmp_types", at("icmp_types"))
                ports = self._ranges(spec["icmp_types"], 255, f"{where}.icmp_types",
                                     at("icmp_types"))
            initiate = spec.get("initiate", "from")
            if initiate not in ("from", "either"):
                raise self.fail('must be "from" or "either"', f"{where}.initiate",
                                at("initiate"))
            enabled = spec.get("enabled", True)
            if not isinstance(enabled, bool):
                raise self.fail("must be true or false", f"{where}.enabled", at("enabled"))
            hl7 = dicom = None
            if "hl7" in spec and "dicom" in spec:
                raise self.fail("a rule checks HL7 or DICOM, not both", f"{where}.dicom",
                                at("dicom"))
            for key in ("hl7", "dicom"):
                if key in spec and proto != 6:
                    raise self.fail(f"{key} needs proto tcp", f"{where}.{key}", at(key))
            if "hl7" in spec:
                hl7 = hl7_condition(spec["hl7"], f"{where}.hl7", at("hl7"), self.fail)
            if "dicom" in spec:
                dicom = dicom_condition(spec["dicom"], f"{where}.dicom", at("dicom"),
                                        self.fail)
            (rules if enabled else disabled).append(
                Rule(name, sources, destinations, proto, ports, initiate == "either", line,
                     hl7, dicom))
        return tuple(rules), tuple(disabled)

    def _endpoints(self, value: Any, groups: dict[str, Group], where: str,
                   line: int | None) -> tuple[str, ...]:
        items = value if isinstance(value, list) else [value]
        if not items:
            raise self.fail("must name at least one group, address or CIDR", where, line)
        out = []
        for item in items:
            if not isinstance(item, str):
                raise self.fail(f"{item!r} is not a group name, address or CIDR", where, line)
            if item != "any" and item not in groups:
                try:
                    ipaddress.ip_network(item, strict=False)
                except ValueError:
                    known = ", ".join(sorted(groups)) or "none defined"
                    raise self.fail(f"unknown group {item!r} (groups: {known})", where,
                                    line) from None
            out.append(item)
        return tuple(out)

    def _proto(self, value: Any, where: str, line: int | None) -> int:
        if isinstance(value, str) and value.lower() in PROTOCOLS:
            return PROTOCOLS[value.lower()]
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 255:
            return value
        raise self.fail(f"{value!r} is not a protocol ({', '.join(PROTOCOLS)} or 0-255)",
                        where, line)

    def _ranges(self, value: Any, top: int, where: str,
                line: int | None) -> tuple[tuple[int, int], ...]:
        items = value if isinstance(value, list) else [value]
        if not items:
            raise self.fail("must not be empty (leave it out to allow any)", where, line)
        out = []
        for item in items:
            lo = hi = None
            if isinstance(item, int) and not isinstance(item, bool):
                lo = hi = item
            elif isinstance(item, str) and re.fullmatch(r"\d+(-\d+)?", item.strip()):
                parts = item.strip().split("-")
                lo, hi = int(parts[0]), int(parts[-1])
            if lo is None or hi is None or not 0 <= lo <= hi <= top:
                raise self.fail(f"{item!r} is not a number or range like \"1000-2000\" "
                                f"within 0-{top}", where, line)
            out.append((lo, hi))
        return tuple(out)


@functools.lru_cache(maxsize=1)
def _known_classes() -> tuple[str, ...]:
    """The device class names (the shipped rules file, read once)."""
    from appliance.inventory.classes import UNKNOWN, ClassRules

    return tuple(c for c in ClassRules.load().classes if c != UNKNOWN)


@functools.lru_cache(maxsize=1)
def _known_roles() -> tuple[str, ...]:
    """The server roles (the shipped rules file's server classes, read once)."""
    from appliance.inventory.classes import ClassRules

    rules = ClassRules.load()
    return tuple(c for c in rules.classes if c in rules.server_classes)


def _net16(net: Network) -> tuple[bytes, int]:
    """A network as the fast path's 16-byte form (IPv4 mapped into ::ffff:0:0/96)."""
    if net.version == 4:
        return b"\0" * 10 + b"\xff\xff" + net.network_address.packed, 96 + net.prefixlen
    return net.network_address.packed, net.prefixlen


def compile_policy(policy: Policy, generation: int = 1) -> CompiledPolicy:
    """Turn a validated policy into the C tables the classifier reads."""
    ids: dict[str, int] = {"any": 0}
    selectors: list[tuple[int, int, bytes, int]] = []
    vlan_groups = 0
    open_groups = 0

    def add_group(key: str, group: Group) -> int:
        nonlocal vlan_groups, open_groups
        gid = len(ids)
        if gid >= MAX_GROUPS:
            raise PolicyError(policy.path, f"more than {MAX_GROUPS - 1} groups (addresses "
                              "in from/to count as one each)", group.line, "groups")
        ids[key] = gid
        for mac in group.macs:
            selectors.append((SEL_MAC, gid, mac.ljust(16, b"\0"), 0))
        for oui in group.ouis:
            selectors.append((SEL_OUI, gid, oui.ljust(16, b"\0"), 0))
        for net in group.nets:
            value, prefix = _net16(net)
            selectors.append((SEL_NET, gid, value, prefix))
        for vlan in group.vlans:
            selectors.append((SEL_VLAN, gid, vlan.to_bytes(2, "big").ljust(16, b"\0"), 0))
        if group.vlans:
            vlan_groups |= 1 << gid
        if not (group.macs or group.ouis or group.nets or group.inventory() or group.names):
            open_groups |= 1 << gid
        return gid

    for name, group in policy.groups.items():
        add_group(name, group)

    def bits(endpoints: tuple[str, ...], line: int | None) -> int:
        out = 0
        for item in endpoints:
            if item not in ids:
                net = ipaddress.ip_network(item, strict=False)
                add_group(item, Group(item, nets=(net,), line=line))
            out |= 1 << ids[item]
        return out

    entries = []
    for index, rule in enumerate(policy.rules):
        src = bits(rule.sources, rule.line)
        dst = bits(rule.destinations, rule.line)
        top = 255 if rule.proto in ICMP else 65535
        for lo, hi in rule.ports or ((0, top),):
            entries.append((src, dst, rule.proto, lo, hi, int(rule.either), index))
    if len(selectors) > MAX_SELECTORS:
        raise PolicyError(policy.path, f"more than {MAX_SELECTORS} group members", None, "groups")
    if len(entries) > MAX_RULE_ENTRIES:
        raise PolicyError(policy.path, f"more than {MAX_RULE_ENTRIES} rule port ranges", None,
                          "rules")
    names, ruleinfo, clinical = compile_conditions(
        policy.rules, [(ids[name], g.names) for name, g in policy.groups.items() if g.names],
        lambda rule: bits(rule.destinations + (rule.sources if rule.either else ()), rule.line))
    if len(names) > MAX_NAMES:
        raise PolicyError(policy.path, f"more than {MAX_NAMES} DNS names", None, "groups")
    if len(clinical) > MAX_CLINICAL:
        raise PolicyError(policy.path, f"more than {MAX_CLINICAL} HL7/DICOM values (a service "
                          "counts its SOP classes)", None, "rules")
    return CompiledPolicy(selectors, entries, vlan_groups, open_groups, arp=policy.arp,
                          non_ip=policy.non_ip,
                          fragment_unmatched=policy.fragment_unmatched, generation=generation,
                          source=policy, names=names, ruleinfo=ruleinfo, clinical=clinical,
                          name_ttl=policy.name_ttl)
