"""RFC 8520 Manufacturer Usage Description (MUD) files as wardtap allow-lists.

A MUD file describes what one *kind* of device needs: access lists (RFC 8519) for packets
from the device and to it. wardtap's rules are per flow (both directions, one initiator), so
each accepted ACE becomes a rule from the initiator to the responder on the responder's
port, and the from-device/to-device halves of one conversation fold into one rule.

What cannot be carried over is never dropped silently: it is an error naming the JSON path
(`MudError`, nothing written) when the rule would not mean what the manufacturer wrote, or a
warning naming the path when the rule is only broader (a field wardtap does not match on,
such as DSCP). DNS names (ietf-acldns) become groups that list the names: the appliance
binds them to addresses from the DNS answers it forwards (docs/policy.md, "Names"). The
well-known DNS and NTP controllers become groups of the inventory's server roles, the
manufacturer's other devices a group of its OUIs and its name as the inventory knows makers,
and `my-controller` the addresses the appliance's configuration gives for the MUD URL
(`[mud] controllers`). What the appliance cannot know (a controller class no one configured,
another model's devices) becomes a placeholder group, written commented out with the rules
that use it, and a warning.
See docs/learn.md for the mapping table.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from appliance.common.bounded import BoundsError, load_json
from appliance.common.userfile import read_bytes
from appliance.errors import WardtapError
from appliance.policy.writer import safe_name

LOCAL_NETWORKS = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7", "fe80::/10"]
_ICMP_REPLIES = {(1, 0): 8, (1, 14): 13, (58, 129): 128}
PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp"}

_MUD_KEYS = {"mud-version", "mud-url", "last-update", "mud-signature", "cache-validity",
             "is-supported", "systeminfo", "mfg-name", "model-name", "firmware-rev",
             "software-rev", "documentation", "extensions", "from-device-policy",
             "to-device-policy", "serial-number", "hardware-rev"}
_IGNORED_IP = {"dscp", "ecn", "length", "ttl", "ihl", "flags", "offset", "identification",
               "flow-label"}
_IGNORED_TCP = {"sequence-number", "acknowledgement-number", "data-offset", "reserved",
                "flags", "window-size", "urgent-pointer", "options"}
_IGNORED_UDP = {"length"}
_ACLS = "ietf-access-control-list:acls"
_DRAFT_ACLS = "ietf-access-control-list:access-lists"
MAX_MUD_BYTES = 1 << 20
MAX_MUD_DEPTH = 64
_MUD_MATCHES = {"manufacturer", "same-manufacturer", "model", "local-networks", "controller",
                "my-controller"}
# RFC 8520 section 8.2's well-known controller classes: the servers of the ward that play
# that part, as the inventory names their server roles (group name, role)
WELL_KNOWN_CONTROLLERS = {"urn:ietf:params:mud:dns": ("dns-servers", "DNS server"),
                          "urn:ietf:params:mud:ntp": ("ntp-servers", "NTP server")}


class MudError(WardtapError):
    """A MUD file that cannot be imported; names the file and the JSON path."""

    def __init__(self, path: str, message: str, where: str | None = None) -> None:
        super().__init__(f"{path}: {where}: {message}" if where else f"{path}: {message}")
        self.path = path
        self.where = where


@dataclass
class Peer:
    """The other side of a MUD rule: an address block, the device's own kind, or a group
    the operator fills in (DNS names, controllers, manufacturers)."""

    name: str                      # group name in the policy ("any", a CIDR, or a group)
    kind: str                      # any, network, device, local-networks, dns, controller...
    value: str = ""
    members: list[str] = field(default_factory=list)
    placeholder: bool = False
    note: str = ""
    role: str = ""                 # kind "role": the inventory's server role
    warning: str = ""              # the placeholder's warning, dropped once it is resolved
    configured: list[str] = field(default_factory=list)   # [mud.controllers] at import


@dataclass
class MudRule:
    acl: str
    ace: str
    where: str                     # JSON path of the ACE
    direction: str                 # from-device / to-device (the ACL it came from)
    peer: Peer
    initiator: str                 # device, peer, either
    proto: int                     # 0: any
    ports: list[tuple[int, int]] | None = None
    icmp_types: list[int] | None = None
    text: str = ""


@dataclass
class MudProfile:
    path: str
    url: str
    info: dict[str, Any]
    rules: list[MudRule]
    peers: dict[str, Peer]
    warnings: list[str]

    @property
    def device_name(self) -> str:
        label = self.info.get("model-name") or self.info.get("systeminfo") or "mud-device"
        return safe_name(str(label).lower(), 40)


class _Reader:
    def __init__(self, path: str) -> None:
        self.path = path
        self.warnings: list[str] = []
        self.peers: dict[str, Peer] = {}
        self.url = ""

    def fail(self, where: str, message: str) -> MudError:
        return MudError(self.path, message, where)

    def warn(self, where: str, message: str) -> None:
        self.warnings.append(f"{self.path}: {where}: {message}")

    def obj(self, value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(where, f"must be a JSON object, not {_kind(value)}")
        return value

    def lst(self, value: Any, where: str) -> list[Any]:
        if not isinstance(value, list):
            raise self.fail(where, f"must be a JSON array, not {_kind(value)}")
        return value

    def string(self, value: Any, where: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(where, f"must be a non-empty string, not {_kind(value)}")
        return value

    def integer(self, value: Any, where: str, lo: int, hi: int) -> int:
        if isinstance(value, str) and value.isdigit():
            value = int(value)   # YANG JSON encodes some integers as strings
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise self.fail(where, f"must be a whole number {lo}-{hi}, not {value!r}")
        return value

    # --- the document ------------------------------------------------------------------

    def read(self, doc: Any) -> MudProfile:
        doc = self.obj(doc, "$")
        for key in doc:
            if key not in ("ietf-mud:mud", _ACLS, _DRAFT_ACLS):
                self.warn(f"$.{key}", "not part of a MUD file; ignored")
        if _DRAFT_ACLS in doc:       # the name before RFC 8519; MUDgee and others write it
            if _ACLS in doc:
                raise self.fail(f"$.{_DRAFT_ACLS}", f"contradictory: both {_ACLS} and "
                                f"{_DRAFT_ACLS}")
            doc = {**doc, _ACLS: doc[_DRAFT_ACLS]}
        if "ietf-mud:mud" not in doc:
            raise self.fail("$.ietf-mud:mud", "missing: not a MUD file (RFC 8520)")
        mud = self.obj(doc["ietf-mud:mud"], "$.ietf-mud:mud")
        base = "$.ietf-mud:mud"
        for key in mud:
            if key not in _MUD_KEYS:
                self.warn(f"{base}.{key}", "unknown MUD field; ignored")
        if "mud-version" not in mud:
            raise self.fail(f"{base}.mud-version", "missing")
        if self.integer(mud["mud-version"], f"{base}.mud-version", 0, 255) != 1:
            raise self.fail(f"{base}.mud-version", "only MUD version 1 is supported")
        self.url = self.string(mud.get("mud-url"), f"{base}.mud-url")
        if _parsed(self.url) is None:
            raise self.fail(f"{base}.mud-url", f"{self.url[:80]!r} is not a URL")
        if urlparse(self.url).scheme != "https":
            self.warn(f"{base}.mud-url", "is not an https URL (RFC 8520 requires https)")
        if mud.get("is-supported") is False:
            self.warn(f"{base}.is-supported", "false: the manufacturer no longer supports "
                      "this device (no more updates)")
        info = {k: mud[k] for k in ("systeminfo", "mfg-name", "model-name", "firmware-rev",
                                    "software-rev", "documentation", "last-update")
                if isinstance(mud.get(k), str)}
        acls = self._acls(doc.get(_ACLS))
        rules: list[MudRule] = []
        used: set[str] = set()
        for direction in ("from-device-policy", "to-device-policy"):
            if direction not in mud:
                continue
            where = f"{base}.{direction}"
            pol = self.obj(mud[direction], where)
            lists = self.obj(pol.get("access-lists"), f"{where}.access-lists")
            entries = self.lst(lists.get("access-list"), f"{where}.access-lists.access-list")
            for i, entry in enumerate(entries):
                ewhere = f"{where}.access-lists.access-list[{i}]"
                name = self.string(self.obj(entry, ewhere).get("name"), f"{ewhere}.name")
                if name not in acls:
                    known = ", ".join(sorted(acls)) or "none"
                    raise self.fail(f"{ewhere}.name", f"names ACL {name!r}, which is not in "
                                    f"ietf-access-control-list:acls (ACLs: {known})")
                used.add(name)
                acl_where, acl = acls[name]
                rules += self._acl(acl, acl_where, direction.removesuffix("-policy"))
        for name, (where, _) in sorted(acls.items()):
            if name not in used:
                self.warn(where, f"ACL {name!r} is not used by from-device-policy or "
                          "to-device-policy; ignored")
        if not rules and not self.warnings:
            self.warn(base, "no access lists: the device may not talk at all")
        return MudProfile(self.path, self.url, info, rules, self.peers, self.warnings)

    def _acls(self, raw: Any) -> dict[str, tuple[str, dict[str, Any]]]:
        where = "$.ietf-access-control-list:acls"
        if raw is None:
            return {}
        acls = self.obj(raw, where)
        out: dict[str, tuple[str, dict[str, Any]]] = {}
        for i, acl in enumerate(self.lst(acls.get("acl"), f"{where}.acl")):
            awhere = f"{where}.acl[{i}]"
            acl = self.obj(acl, awhere)
            name = self.string(acl.get("name"), f"{awhere}.name")
            if name in out:
                raise self.fail(f"{awhere}.name", f"ACL name {name!r} is used twice "
                                f"(first at {out[name][0]})")
            out[name] = (awhere, acl)
        return out

    def _acl(self, acl: dict[str, Any], where: str, direction: str) -> list[MudRule]:
        kind = str(acl.get("type", "")).split(":")[-1]
        if kind and kind not in ("ipv4-acl-type", "ipv6-acl-type", "eth-acl-type",
                                 "ethernet-acl-type", "mixed-eth-ipv4-acl-type",
                                 "mixed-eth-ipv6-acl-type", "mixed-eth-ipv4-ipv6-acl-type"):
            raise self.fail(f"{where}.type", f"ACL type {kind!r} is not supported (wardtap "
                            "matches IPv4 and IPv6)")
        aces = self.obj(acl.get("aces"), f"{where}.aces")
        out = []
        names: set[str] = set()
        for i, ace in enumerate(self.lst(aces.get("ace"), f"{where}.aces.ace")):
            awhere = f"{where}.aces.ace[{i}]"
            ace = self.obj(ace, awhere)
            name = self.string(ace.get("name", f"ace{i}"), f"{awhere}.name")
            if name in names:
                raise self.fail(f"{awhere}.name", f"ACE name {name!r} is used twice in "
                                f"ACL {acl['name']!r}")
            names.add(name)
            rule = self._ace(ace, awhere, str(acl["name"]), name, direction, kind)
            if rule is not None:
                out.append(rule)
        return out

    def _ace(self, ace: dict[str, Any], where: str, acl: str, name: str, direction: str,
             acl_type: str) -> MudRule | None:
        for key in ace:
            if key not in ("name", "matches", "actions", "statistics"):
                raise self.fail(f"{where}.{key}", "unknown ACE field")
        actions = self.obj(ace.get("actions"), f"{where}.actions")
        forwarding = str(actions.get("forwarding", "")).split(":")[-1]
        for key in actions:
            if key not in ("forwarding", "logging"):
                raise self.fail(f"{where}.actions.{key}", "unknown action")
        if "logging" in actions:
            self.warn(f"{where}.actions.logging", "ignored: wardtap reports violations, "
                      "not allowed flows")
        if forwarding in ("drop", "reject"):
            self.warn(f"{where}.actions.forwarding", f"{forwarding!r} entry not carried over: "
                      "wardtap denies whatever no rule allows, but cannot carve an exception "
                      "out of a broader allow entry; check the rules around it")
            return None
        if forwarding != "accept":
            raise self.fail(f"{where}.actions.forwarding", "must be accept, drop or reject, "
                            f"not {actions.get('forwarding')!r}")
        matches = self.obj(ace.get("matches", {}), f"{where}.matches")
        mwhere = f"{where}.matches"
        l3 = [k for k in ("ipv4", "ipv6") if k in matches]
        l4 = [k for k in ("tcp", "udp", "icmp") if k in matches]
        for key in matches:
            if key in ("ipv4", "ipv6", "tcp", "udp", "icmp", "ietf-mud:mud", "eth"):
                continue
            if key in ("l2", "egress-interface", "ingress-interface"):
                raise self.fail(f"{mwhere}.{key}", "not supported: wardtap matches "
                                "addresses, protocols and ports, not Ethernet fields or "
                                "interfaces")
            raise self.fail(f"{mwhere}.{key}", "unknown match")
        if len(l3) > 1 or len(l4) > 1:
            raise self.fail(mwhere, "contradictory: matches both "
                            + " and ".join([*l3, *l4]))
        family = l3[0] if l3 else None
        if "eth" in matches and not self._eth(matches["eth"], f"{mwhere}.eth", family):
            return None
        if family and acl_type in ("ipv4-acl-type", "ipv6-acl-type") \
                and not acl_type.startswith(family):
            raise self.fail(f"{mwhere}.{family}", f"contradictory: {family} match in an ACL "
                            f"of type {acl_type}")
        ip = self.obj(matches[family], f"{mwhere}.{family}") if family else {}
        proto = 0
        if "protocol" in ip:
            proto = self.integer(ip["protocol"], f"{mwhere}.{family}.protocol", 0, 255)
            if proto == 0 and not l4:
                # 0 is the hop-by-hop options header (MLD reports carry it); a rule cannot
                # name an extension header, so say that the rule covers every protocol
                self.warn(f"{mwhere}.{family}.protocol", "0 (hop-by-hop options) is read as "
                          "any protocol: the rule is broader than the MUD entry")
        implied = {"tcp": 6, "udp": 17, "icmp": 58 if family == "ipv6" else 1}
        if l4:
            want = implied[l4[0]]
            if l4[0] == "icmp" and proto in (1, 58):
                want = proto
            if proto and proto != want:
                raise self.fail(f"{mwhere}.{family}.protocol", f"contradictory: protocol "
                                f"{proto} with a {l4[0]} match")
            proto = want
        peer = self._peer(matches, ip, family, mwhere, direction)
        rule = MudRule(acl, name, where, direction, peer, "either", proto)
        for key in ip:
            if key in _IGNORED_IP:
                self.warn(f"{mwhere}.{family}.{key}", "not matched by wardtap: the rule is "
                          "broader than the MUD entry")
            elif key not in ("protocol", "destination-ipv4-network", "source-ipv4-network",
                             "destination-ipv6-network", "source-ipv6-network",
                             "ietf-acldns:src-dnsname", "ietf-acldns:dst-dnsname"):
                raise self.fail(f"{mwhere}.{family}.{key}", "unknown IP match")
        if l4 and l4[0] in ("tcp", "udp"):
            self._ports(rule, self.obj(matches[l4[0]], f"{mwhere}.{l4[0]}"),
                        f"{mwhere}.{l4[0]}", l4[0])
        elif l4:
            self._icmp(rule, self.obj(matches["icmp"], f"{mwhere}.icmp"), f"{mwhere}.icmp")
        # without ports, types or direction-initiated either side may start (initiator stays
        # "either"), as in the MUD file
        rule.text = _describe(rule)
        return rule

    def _eth(self, raw: Any, where: str, family: str | None) -> bool:
        """Ethernet fields beside an IP match: the ethertype of that IP family says nothing
        more; a MAC address is not matched (a warning: broader). An Ethernet-only entry is
        not carried over (False): it is not IP, and the policy's non_ip and arp settings
        decide such frames."""
        eth = self.obj(raw, where)
        ethertype = str(eth.get("ethertype", "")).lower()
        if family is None:
            self.warn(where, f"Ethernet-only entry (ethertype {ethertype or 'any'}) not "
                      "carried over: wardtap's rules are for IP; the policy's non_ip and arp "
                      "settings decide other frames")
            return False
        own = {"ipv4": ("0x0800", "2048"), "ipv6": ("0x86dd", "34525")}[family]
        for key in eth:
            if key == "ethertype":
                if ethertype not in own:
                    raise self.fail(f"{where}.ethertype", f"contradictory: ethertype "
                                    f"{eth[key]} with an {family} match")
            elif key in ("destination-mac-address", "source-mac-address",
                         "destination-mac-address-mask", "source-mac-address-mask"):
                self.warn(f"{where}.{key}", "not matched by wardtap (addresses, protocols "
                          "and ports): the rule is broader than the MUD entry")
            else:
                raise self.fail(f"{where}.{key}", "unknown Ethernet match")
        return True

    def _peer(self, matches: dict[str, Any], ip: dict[str, Any], family: str | None,
              where: str, direction: str) -> Peer:
        out = direction == "from-device"
        far, near = ("destination", "source") if out else ("source", "destination")
        dns_far, dns_near = ("dst", "src") if out else ("src", "dst")
        found: list[tuple[str, Peer]] = []
        if family:
            net_key = f"{far}-{family}-network"
            if net_key in ip:
                text = self.string(ip[net_key], f"{where}.{family}.{net_key}")
                try:
                    net = ipaddress.ip_network(text, strict=False)
                except ValueError:
                    raise self.fail(f"{where}.{family}.{net_key}",
                                    f"{text!r} is not a network") from None
                if net.version != (4 if family == "ipv4" else 6):
                    raise self.fail(f"{where}.{family}.{net_key}",
                                    f"contradictory: {text} in an {family} match")
                found.append((f"{where}.{family}.{net_key}", Peer(str(net), "network")))
            if f"{near}-{family}-network" in ip:
                self.warn(f"{where}.{family}.{near}-{family}-network", "limits the device's "
                          "own address; not matched (the device group decides who the device "
                          "is): the rule is broader")
            dns_key = f"ietf-acldns:{dns_far}-dnsname"
            if dns_key in ip:
                host = self.string(ip[dns_key], f"{where}.{family}.{dns_key}").rstrip(".")
                found.append((f"{where}.{family}.{dns_key}", self._dns(
                    host, f"{where}.{family}.{dns_key}")))
            if f"ietf-acldns:{dns_near}-dnsname" in ip:
                self.warn(f"{where}.{family}.ietf-acldns:{dns_near}-dnsname",
                          "names the device itself; ignored: the rule is broader")
        if "ietf-mud:mud" in matches:
            mwhere = f"{where}.ietf-mud:mud"
            mud = self.obj(matches["ietf-mud:mud"], mwhere)
            for key in mud:
                if key not in _MUD_MATCHES:
                    raise self.fail(f"{mwhere}.{key}", "unknown MUD match (expected one of: "
                                    f"{', '.join(sorted(_MUD_MATCHES))})")
                found.append((f"{mwhere}.{key}", self._mud_match(key, mud[key],
                                                                 f"{mwhere}.{key}")))
        kinds = [p.kind for _, p in found]
        if len(found) == 2 and sorted(kinds) == ["local-networks", "network"]:
            # both must hold: the address block, where it is local (link multicast and
            # broadcast, which no router forwards, count as local)
            w, block = next((w, p) for w, p in found if p.kind == "network")
            if not _is_local(block.name):
                raise self.fail(w, f"contradictory: {block.name} with local-networks "
                                f"({block.name} is not a local network)")
            return block
        if len(found) > 1:
            raise self.fail(where, "contradictory: names more than one peer ("
                            + ", ".join(w.rsplit(".", 1)[-1] for w, _ in found)
                            + "); split it into one entry per peer")
        return found[0][1] if found else Peer("any", "any")

    def _mud_match(self, key: str, value: Any, where: str) -> Peer:
        if key == "local-networks":
            peer = self.peers.get("local-networks")
            if peer is None:
                self.warn(where, "local-networks: the private address blocks (" + ", ".join(
                    LOCAL_NETWORKS) + "); set group local-networks to the site's own")
                peer = self.peers["local-networks"] = Peer(
                    "local-networks", "local-networks", members=list(LOCAL_NETWORKS),
                    note="MUD local-networks: REVIEW, the site's local address blocks")
            return peer
        if key == "my-controller":       # resolved by mud_draft from the configuration
            return self._resolved("my-controller", self.url, "my-controller",
                                  f"the controller(s) this ward uses for {self.url}")
        if key == "same-manufacturer":   # resolved by mud_draft from the device's OUIs
            authority = urlparse(self.url).netloc
            return self._resolved("same-manufacturer", authority, "same-manufacturer",
                                  f"devices from the maker of {authority}'s devices")
        text = self.string(value, where)
        if key == "controller" and text in WELL_KNOWN_CONTROLLERS:
            group, role = WELL_KNOWN_CONTROLLERS[text]
            peer = self._resolved("role", text, group, f"the ward's {role}s: the devices the "
                                  f"inventory has seen answering as {role}")
            peer.role = role
            return peer
        if key == "model":
            if text == self.url:
                return Peer("", "device")    # the device's own kind: the device group
            return self._named("model", text, f"model-{_host_path(text)}",
                               f"devices whose MUD URL is {text}", where)
        if key == "manufacturer":
            return self._named("manufacturer", text, f"manufacturer-{text.lower()}",
                               f"devices whose MUD URL is from {text}", where)
        return self._named("controller", text, f"controller-{_host_path(text)}",
                           f"controllers of class {text}", where)

    def _dns(self, host: str, where: str) -> Peer:
        """A DNS name: a group listing it, matched through the DNS answers the ward gets."""
        from appliance.policy.conditions import dns_name

        def fail(message: str, _field: str, _line: int | None) -> Exception:
            return self.fail(where, message)

        name = dns_name(host, where, None, fail)
        key = f"dns:{name}"
        peer = self.peers.get(key)
        if peer is None:
            peer = self.peers[key] = Peer(safe_name(f"dns-{name}"), "dns", name,
                                          note=f"{name}: its addresses as the ward's DNS "
                                          "answers give them")
        return peer

    def _resolved(self, kind: str, value: str, name: str, note: str) -> Peer:
        """A peer the appliance resolves by itself (a role, the configuration, the device's
        maker): a group, not a placeholder."""
        key = f"{kind}:{value}"
        peer = self.peers.get(key)
        if peer is None:
            peer = self.peers[key] = Peer(safe_name(name), kind, value, note=note)
        return peer

    def _named(self, kind: str, value: str, name: str, note: str, where: str) -> Peer:
        key = f"{kind}:{value}"
        peer = self.peers.get(key)
        if peer is None:
            peer = self.peers[key] = Peer(safe_name(name), kind, value, placeholder=True,
                                          note=note)
            source = ("[mud.controllers]" if kind == "controller" else "[mud.devices]")
            self.warn(where, f"{kind} {value!r}: fill in group {peer.name!r} (appliance "
                      f"configuration {source} with --config, or --fill); until then it and "
                      "its rules stay commented out")
            peer.warning = self.warnings[-1]
        return peer

    def _ports(self, rule: MudRule, l4: dict[str, Any], where: str, proto: str) -> None:
        ignored = _IGNORED_TCP if proto == "tcp" else _IGNORED_UDP
        for key in l4:
            if key in ignored:
                self.warn(f"{where}.{key}", "not matched by wardtap: the rule is broader "
                          "than the MUD entry")
            elif key not in ("source-port", "destination-port", "ietf-mud:direction-initiated"):
                raise self.fail(f"{where}.{key}", f"unknown {proto} match")
        src = self._port_ranges(l4.get("source-port"), f"{where}.source-port")
        dst = self._port_ranges(l4.get("destination-port"), f"{where}.destination-port")
        initiated = l4.get("ietf-mud:direction-initiated")
        out = rule.direction == "from-device"
        if initiated is not None:
            iwhere = f"{where}.ietf-mud:direction-initiated"
            if proto != "tcp":
                raise self.fail(iwhere, "contradictory: direction-initiated applies to TCP "
                                "only (RFC 8520)")
            if initiated not in ("from-device", "to-device"):
                raise self.fail(iwhere, f"must be from-device or to-device, not {initiated!r}")
            by_device = initiated == "from-device"
            rule.initiator = "device" if by_device else "peer"
            # packets from the initiator carry the responder's port as destination
            sender_initiates = by_device == out
            rule.ports = dst if sender_initiates else src
        elif dst is not None:
            rule.initiator = "device" if out else "peer"
            rule.ports = dst
        elif src is not None:
            rule.initiator = "peer" if out else "device"
            rule.ports = src

    def _port_ranges(self, raw: Any, where: str) -> list[tuple[int, int]] | None:
        if raw is None:
            return None
        spec = self.obj(raw, where)
        for key in spec:
            if key not in ("operator", "port", "lower-port", "upper-port"):
                raise self.fail(f"{where}.{key}", "unknown port field")
        if "lower-port" in spec or "upper-port" in spec:
            lo = self.integer(spec.get("lower-port"), f"{where}.lower-port", 0, 65535)
            hi = self.integer(spec.get("upper-port"), f"{where}.upper-port", 0, 65535)
            if lo > hi:
                raise self.fail(where, f"contradictory: lower-port {lo} above upper-port {hi}")
            return [(lo, hi)]
        port = self.integer(spec.get("port"), f"{where}.port", 0, 65535)
        op = str(spec.get("operator", "eq")).split(":")[-1]
        if op == "eq":
            return [(port, port)]
        if op == "lte":
            return [(0, port)]
        if op == "gte":
            return [(port, 65535)]
        if op == "neq":
            return [r for r in ((0, port - 1), (port + 1, 65535)) if r[0] <= r[1]]
        raise self.fail(f"{where}.operator", f"unsupported operator {op!r} (eq, lte, gte, "
                        "neq, or lower-port/upper-port)")

    def _icmp(self, rule: MudRule, icmp: dict[str, Any], where: str) -> None:
        for key in icmp:
            if key in ("code", "rest-of-header"):
                self.warn(f"{where}.{key}", "not matched by wardtap (types only): the rule "
                          "is broader")
            elif key != "type":
                raise self.fail(f"{where}.{key}", "unknown icmp match")
        sender = "device" if rule.direction == "from-device" else "peer"
        other = "peer" if sender == "device" else "device"
        if "type" in icmp:
            rule.initiator = sender
            itype = self.integer(icmp["type"], f"{where}.type", 0, 255)
            request = _ICMP_REPLIES.get((rule.proto, itype))
            if request is not None:      # a reply: the other side asked
                rule.initiator, itype = other, request
            rule.icmp_types = [itype]


def _is_local(text: str) -> bool:
    """Within the private blocks, or multicast or the limited broadcast address (which do
    not leave the local network)."""
    block: Any = ipaddress.ip_network(text)
    if block.is_multicast or text == "255.255.255.255/32":
        return True
    return any(block.subnet_of(n) for n in map(ipaddress.ip_network, LOCAL_NETWORKS)
               if n.version == block.version)


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "true/false",
            type(None): "null"}.get(type(value), "a number")


def _parsed(uri: str) -> Any:
    """urlparse(uri), or None when it is no URL at all (urlparse raises on "https://[")."""
    try:
        return urlparse(uri)
    except ValueError:
        return None


def _host_path(uri: str) -> str:
    parsed = _parsed(uri)
    if parsed is None:
        return uri.lower()
    return (parsed.netloc + parsed.path).strip("/").lower() or uri.lower()


def _describe(rule: MudRule) -> str:
    proto = PROTO_NAMES.get(rule.proto, str(rule.proto)) if rule.proto else "any protocol"
    ports = ""
    if rule.ports:
        ports = "/" + ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in rule.ports)
    if rule.icmp_types:
        ports = f" type {rule.icmp_types[0]}"
    peer = {"dns": rule.peer.value, "device": "same model"}.get(rule.peer.kind, rule.peer.name)
    arrow = {"device": "device -> ", "peer": "device <- ", "either": "device <-> "}
    return f"{arrow[rule.initiator]}{peer} {proto}{ports}"


def load_mud(path: str) -> MudProfile:
    """Read and check a MUD file; MudError (one line, JSON path) when it cannot be used."""
    try:
        raw = read_bytes(path, "a MUD file", MAX_MUD_BYTES)
    except ValueError as exc:
        raise MudError(path, str(exc)) from None
    return parse_mud(raw, path)


def parse_mud(raw: bytes, path: str = "<mud>") -> MudProfile:
    """Check MUD JSON bytes (bounded: size, nesting, finite numbers); MudError when they
    cannot be used."""
    try:
        doc = load_json(raw, max_bytes=MAX_MUD_BYTES, max_depth=MAX_MUD_DEPTH)
    except BoundsError as exc:
        raise MudError(path, exc.message, exc.where) from None
    return _Reader(path).read(doc)
