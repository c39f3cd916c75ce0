"""A MUD profile (appliance.policy.mud) as a policy draft people review.

The device group comes from the command line's selectors; the peers the appliance resolves
by itself become live groups: DNS names (`names`), the well-known DNS and NTP controllers
(`role`), the manufacturer's other devices (`oui` of the device, `maker` its mfg-name),
`my-controller` (the configuration's [mud.controllers] for the MUD URL). What stays unknown
is a placeholder, written commented out with its rules, and one warning naming it.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

from appliance.errors import WardtapError
from appliance.policy.model import MAX_MAKER
from appliance.policy.mud import PROTO_NAMES, MudProfile, Peer
from appliance.policy.writer import GroupSpec, PolicyDraft, RuleSpec, safe_name, unique


@dataclass
class DeviceSelectors:
    """Who the MUD file's device is on this ward (a MUD file describes a kind of device)."""

    mac: list[str] = field(default_factory=list)
    oui: list[str] = field(default_factory=list)
    ip: list[str] = field(default_factory=list)
    vlan: list[int] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.mac or self.oui or self.ip or self.vlan)


def mud_draft(profile: MudProfile, device: DeviceSelectors,
              fills: dict[str, list[str]] | None = None,
              name: str | None = None,
              controllers: dict[str, list[str]] | None = None,
              devices: dict[str, list[str]] | None = None) -> PolicyDraft:
    """The MUD profile as a policy draft. `fills` gives members to groups (by group name,
    DNS name or URI); unknown names are an error. `controllers` is the configuration's
    MUD URL -> controller addresses (`my-controller`) and controller class URI -> addresses
    (`controller`); `devices` its [mud.devices]: another maker's MUD URL authority
    (`manufacturer`) or another model's MUD URL (`model`) -> OUIs, MACs or addresses."""
    fills = dict(fills or {})
    for peer in profile.peers.values():
        for key in (peer.name, peer.value):
            if key and key in fills and (peer.placeholder or peer.kind in _FILLABLE):
                peer.members += fills.pop(key)
                _resolved(profile, peer)
            elif key and key in fills and peer.kind == "local-networks":
                peer.members = fills.pop(key)
    if fills:
        known = ", ".join(sorted(p.name for p in profile.peers.values())) or "none"
        raise WardtapError(f"--fill {', '.join(sorted(fills))}: no such group in "
                           f"{profile.path} (groups: {known})")
    ouis = list(dict.fromkeys([*device.oui, *(m[:8] for m in device.mac)]))
    maker = str(profile.info.get("mfg-name") or "").strip()[:MAX_MAKER]
    for peer in profile.peers.values():
        _resolve(profile, peer, controllers or {}, ouis, maker)
        _from_config(profile, peer, controllers or {}, devices or {})
    dev_name = profile.device_name
    dev = GroupSpec(dev_name, mac=list(device.mac), oui=list(device.oui), ip=list(device.ip),
                    vlan=list(device.vlan), placeholder=device.empty)
    dev.description = f"devices described by {profile.url}"
    dev.comments.append("The MUD file's device: " + ", ".join(
        f"{k} {v}" for k, v in profile.info.items() if k != "documentation") or profile.url)
    if device.empty:
        dev.comments.append("FILL IN: which devices these are (mac, oui, ip or vlan), or "
                            "import with --mac/--oui/--ip/--vlan")
    groups = [dev]
    taken = {dev_name}
    for peer in sorted(profile.peers.values(), key=lambda p: p.name):
        if peer.name in taken:
            peer.name = unique(peer.name, taken)
        taken.add(peer.name)
        same_maker = peer.kind == "same-manufacturer" and not peer.placeholder
        macs = [m for m in peer.members if _MAC.fullmatch(m)]
        peer_ouis = [m for m in peer.members if _OUI.fullmatch(m)]
        addrs = [m for m in peer.members if m not in macs and m not in peer_ouis]
        g = GroupSpec(peer.name, ip=addrs, mac=macs, placeholder=peer.placeholder,
                      description=peer.note,
                      names=[peer.value] if peer.kind == "dns" else [],
                      role=[peer.role] if peer.role else [],
                      oui=ouis if same_maker else peer_ouis,
                      maker=[maker] if same_maker and maker else [],
                      mud_controller=[peer.value] if peer.configured else [])
        g.comments.append(f"MUD {peer.kind}" + (f" {peer.value}" if peer.value else "")
                          + (": FILL IN the addresses, then uncomment this group and its "
                             "rules" if peer.placeholder else ""))
        if peer.role:
            g.comments.append(f"role: the devices the inventory has seen answering as "
                              f"{peer.role}, at each policy load or reload; a server behind "
                              "a router is not one of the ward's devices: add its address "
                              "with ip (or --fill)")
        if peer.configured:
            g.comments.append(f"mud_controller: the addresses the appliance configuration's "
                              f"[mud.controllers] gives for it at each policy load or reload "
                              f"(now {', '.join(peer.configured)})")
        if same_maker:
            g.comments.append("oui: the MUD device's own OUIs; maker: devices whose make or "
                              "MAC vendor the inventory knows by this name")
        groups.append(g)
    rules: list[RuleSpec] = []
    seen: dict[tuple[Any, ...], RuleSpec] = {}
    names: set[str] = set()
    for r in profile.rules:
        other = dev_name if r.peer.kind == "device" else r.peer.name
        if r.initiator == "peer":
            src, dst = other, dev_name
        else:
            src, dst = dev_name, other
        proto: str | int = PROTO_NAMES.get(r.proto, r.proto) if r.proto else "any"
        ports: list[int | str] | None = None
        if r.ports is not None and not (len(r.ports) == 1 and r.ports[0] == (0, 65535)):
            ports = [lo if lo == hi else f"{lo}-{hi}" for lo, hi in r.ports]
        icmp: list[int | str] | None = list(r.icmp_types) if r.icmp_types else None
        initiate = "either" if r.initiator == "either" else "from"
        same = (src, dst, proto, tuple(ports or ()), tuple(icmp or ()), initiate)
        origin = f"MUD {r.direction} ACL {r.acl!r} entry {r.ace!r} ({r.where}): {r.text}"
        if same in seen:
            seen[same].comments.append(origin)
            continue
        spec = RuleSpec(unique(safe_name(f"{r.acl}-{r.ace}"), names), [src], [dst], proto,
                        ports, icmp, initiate, comments=[origin])
        seen[same] = spec
        rules.append(spec)
    header = [f"Imported by `wardtap policy import-mud` from {profile.path}",
              f"MUD URL {profile.url}"]
    header += [f"{k}: {v}" for k, v in profile.info.items()]
    header += ["Each accepted ACE is one rule from the side that starts the flow to the side",
               "that answers; the from-device and to-device halves of a flow are one rule."]
    if profile.warnings:
        header.append("Warnings:")
        header += [f"  {w}" for w in profile.warnings]
    draft = PolicyDraft(name or f"mud-{dev_name}", 1, header=header, groups=groups,
                        rules=rules)
    draft.setting_notes["arp"] = "MUD files say nothing about ARP; IPv4 needs it"
    draft.setting_notes["non_ip"] = "MUD files describe IP traffic only"
    return draft


_FILLABLE = {"dns", "role", "my-controller", "same-manufacturer"}


def _resolve(profile: MudProfile, peer: Peer, controllers: dict[str, list[str]],
             ouis: list[str], maker: str) -> None:
    """my-controller from the configuration, same-manufacturer from the device's OUIs and
    maker; what cannot be resolved stays a placeholder, with one warning naming it."""
    if peer.kind == "my-controller" and not peer.members:
        configured = controllers.get(profile.url)
        if configured:
            peer.configured = list(configured)
            peer.note += " (configuration: [mud.controllers])"
        else:
            peer.placeholder = True
            profile.warnings.append(
                f"{profile.path}: my-controller: no controller configured for MUD URL "
                f"{profile.url}; its rules stay commented out until it is (appliance "
                "configuration [mud.controllers] with --config, or --fill my-controller=ADDR)")
    if peer.kind == "same-manufacturer" and not (peer.members or ouis or maker):
        peer.placeholder = True
        profile.warnings.append(
            f"{profile.path}: same-manufacturer: no OUI (--oui/--mac) and no mfg-name to "
            f"know the maker of {profile.url} by; its rules stay commented out (give "
            "--oui, or --fill same-manufacturer=ADDR)")


_OUI = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){2}")
_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")


def _resolved(profile: MudProfile, peer: Peer) -> None:
    peer.placeholder = False
    if peer.warning in profile.warnings:
        profile.warnings.remove(peer.warning)


def _from_config(profile: MudProfile, peer: Peer, controllers: dict[str, list[str]],
                 devices: dict[str, list[str]]) -> None:
    """A controller class from [mud.controllers], another maker's or model's devices from
    [mud.devices]: what the operator told the appliance, as a live group."""
    if not peer.placeholder:
        return
    table, source = ((controllers, "[mud.controllers]") if peer.kind == "controller"
                     else (devices, "[mud.devices]") if peer.kind in ("manufacturer", "model")
                     else ({}, ""))
    members = table.get(peer.value)
    if members and peer.kind == "controller":
        peer.configured = list(members)       # read again at each load: mud_controller
    elif members:
        peer.members = list(members)
    if members:
        peer.note += f" (configuration: {source})"
        _resolved(profile, peer)


def parse_fills(items: list[str]) -> dict[str, list[str]]:
    """`--fill NAME=ADDR[,ADDR...]` options as {name: [addresses]}, addresses checked."""
    out: dict[str, list[str]] = {}
    for item in items:
        name, sep, values = item.partition("=")
        addrs = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not name or not addrs:
            raise WardtapError(f"--fill {item!r}: expected NAME=ADDRESS[,ADDRESS...]")
        for a in addrs:
            try:
                ipaddress.ip_network(a, strict=False)
            except ValueError:
                raise WardtapError(f"--fill {item!r}: {a!r} is not an address or CIDR "
                                   "block") from None
        out.setdefault(name, []).extend(addrs)
    return out


_MAC = re.compile(r"^[0-9a-f]{2}([:-][0-9a-f]{2}){5}$", re.I)
_OUI = re.compile(r"^[0-9a-f]{2}([:-][0-9a-f]{2}){2}$", re.I)


def device_selectors(mac: list[str], oui: list[str], ip: list[str],
                     vlan: list[str]) -> DeviceSelectors:
    """Command-line selectors (repeatable, comma-separated) checked and normalised."""
    def split(values: list[str]) -> list[str]:
        return [v.strip() for item in values for v in item.split(",") if v.strip()]

    out = DeviceSelectors()
    for m in split(mac):
        if not _MAC.match(m):
            raise WardtapError(f"--mac {m!r}: not a MAC address like 00:1a:2b:3c:4d:5e")
        out.mac.append(m.lower().replace("-", ":"))
    for o in split(oui):
        if not _OUI.match(o):
            raise WardtapError(f"--oui {o!r}: not an OUI like 00:1a:2b")
        out.oui.append(o.lower().replace("-", ":"))
    for a in split(ip):
        try:
            out.ip.append(str(ipaddress.ip_network(a, strict=False)) if "/" in a
                          else str(ipaddress.ip_address(a)))
        except ValueError:
            raise WardtapError(f"--ip {a!r}: not an address or CIDR block") from None
    for v in split(vlan):
        if not v.isdigit() or not 0 <= int(v) <= 4095:
            raise WardtapError(f"--vlan {v!r}: not a VLAN id 0-4095")
        out.vlan.append(int(v))
    return out
