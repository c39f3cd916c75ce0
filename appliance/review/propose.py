"""A proposed allow-list from a baseline, for people to review (docs/learn.md).

:func:`propose` turns a :class:`~appliance.review.baseline.Baseline` into a policy draft:

- servers are the responders; rules name the responder's port only, so client ports never
  appear; a responder port used by a single flow above 32767 is an ephemeral port and
  becomes a range with a REVIEW note.
- grouping: endpoints that have exactly the same conversations (with the same groups, the
  same protocols and ports, in the same direction) form one group: the coarsest such
  partition, found by refinement. Groups are named after their vendor (OUI) or behaviour.
- every rule says what was seen: flows, packets, bytes, first and last seen (UTC), devices.

The proposal allows every conversation it was learned from (:func:`check_allows`, run before
it is written), so replaying the same capture under it gives no violations.
"""

from __future__ import annotations

import copy
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from appliance.common.oui import slug, vendors
from appliance.errors import WardtapError
from appliance.policy.evaluate import Endpoint, Evaluator
from appliance.policy.model import ICMP, PORTED, PROTOCOL_NAMES, compile_policy, parse_policy
from appliance.policy.writer import GroupSpec, PolicyDraft, RuleSpec, iso, safe_name, unique
from appliance.review.baseline import (
    Baseline,
    Conv,
    Key,
    Stats,
    View,
    ip_order,
    key_order,
    literal_of,
    proto_label,
    service,
)
from appliance.review.caution import TITLES, Caution, Flag, assess, is_public

EPHEMERAL_LO = 32768          # Linux starts its ephemeral ports here (32768-60999)
EPHEMERAL_WINDOWS = 49152     # Windows, macOS and IANA: 49152-65535
EPH = -1                      # port token: an ephemeral responder port
MANY_PORTS = 16               # more distinct ports than this to one host: say it may be a scan
LIST_DEVICES = 6              # devices named in a rule's comment before "and N more"

SERVICES = {
    (6, 20): "ftp-data", (6, 21): "ftp", (6, 22): "ssh", (6, 23): "telnet", (6, 25): "smtp",
    (17, 53): "dns", (6, 53): "dns", (17, 67): "dhcp", (17, 68): "dhcp-client",
    (17, 69): "tftp", (6, 80): "http", (6, 88): "kerberos", (17, 88): "kerberos",
    (6, 104): "dicom", (17, 123): "ntp", (6, 135): "msrpc", (17, 137): "netbios-ns",
    (17, 138): "netbios-dgm", (6, 139): "netbios", (17, 161): "snmp", (17, 162): "snmp-trap",
    (6, 389): "ldap", (6, 443): "https", (17, 443): "quic", (6, 445): "smb",
    (17, 514): "syslog", (6, 515): "lpd", (6, 502): "modbus", (17, 546): "dhcpv6-client",
    (17, 547): "dhcpv6", (6, 631): "ipp", (6, 636): "ldaps", (6, 1433): "mssql",
    (6, 1883): "mqtt", (17, 1812): "radius", (17, 1900): "ssdp", (6, 2575): "hl7",
    (6, 3306): "mysql", (6, 3389): "rdp", (6, 4840): "opc-ua", (17, 5060): "sip",
    (6, 5060): "sip", (17, 5353): "mdns", (17, 5355): "llmnr", (6, 5432): "postgres",
    (6, 5900): "vnc", (6, 6514): "syslog-tls", (6, 8080): "http-alt", (6, 8443): "https-alt",
    (6, 8883): "mqtts", (6, 9100): "jetdirect", (6, 11112): "dicom",
}
ICMP_NAMES = {(1, 8): "ping", (1, 13): "icmp-timestamp", (1, 3): "icmp-unreachable",
              (1, 11): "icmp-time-exceeded", (1, 5): "icmp-redirect", (58, 128): "ping6",
              (58, 1): "icmpv6-unreachable", (58, 2): "icmpv6-too-big",
              (58, 3): "icmpv6-time-exceeded", (58, 133): "nd-router-solicit",
              (58, 134): "nd-router-advert", (58, 135): "nd-neighbour-solicit",
              (58, 136): "nd-neighbour-advert", (58, 137): "nd-redirect", (58, 130): "mld",
              (58, 131): "mld", (58, 132): "mld", (58, 143): "mld"}

USED_LABELS = {(17, 68): "dhcp", (17, 546): "dhcpv6"}   # sending to it means serving



@dataclass
class Block:
    """A group in the making: endpoints that behave alike."""

    members: list[Key]
    local: bool
    name: str = ""
    served: Counter[tuple[int, int]] = field(default_factory=Counter)
    used: Counter[tuple[int, int]] = field(default_factory=Counter)


def _port_tokens(view: View) -> dict[tuple[Key, Key, int, int], int]:
    """Each conversation's port as it goes into a rule: the port, or EPH (ephemeral)."""
    uses: Counter[tuple[Key, int, int]] = Counter()
    for conv in view.convs.values():
        uses[(conv.responder, conv.proto, conv.port)] += conv.stats.flows
    out = {}
    for k, conv in view.convs.items():
        eph = (conv.proto in PORTED and conv.port >= EPHEMERAL_LO
               and uses[(conv.responder, conv.proto, conv.port)] == 1)
        out[k] = EPH if eph else conv.port
    return out


port_tokens = _port_tokens


def _partition(view: View, tokens: dict[tuple[Key, Key, int, int], int],
               caution: Caution) -> dict[Key, int]:
    """The coarsest grouping in which members of a group have the same conversations with
    the same groups (partition refinement; at most one round per endpoint).

    Only the conversations the proposal allows count. Internet addresses never share a
    group with internal hosts; flagged devices and endpoints seen only in conversations
    left out for review are groups of their own."""
    trusted = {k for k in view.convs if not caution.left_out(k)}
    used = {end for k in trusted for end in (view.convs[k].initiator, view.convs[k].responder)}
    block: dict[Key, Any] = {}
    for key, ent in view.entities.items():
        if (caution.leave_out and key in caution.devices) or key not in used:
            block[key] = ("alone", key)
        elif key[0] == "mac":
            block[key] = ("local", tuple(sorted(ent.vlans)))
        else:
            block[key] = ("remote", is_public(key[1]))
    ids = _renumber(block)
    convs = [(c.initiator, c.responder, c.proto, tokens[k]) for k, c in view.convs.items()
             if k in trusted]
    for _ in range(len(view.entities) + 1):
        signature: dict[Key, set[tuple[Any, ...]]] = {k: set() for k in view.entities}
        for i, r, proto, port in convs:
            peer_r = ids[r] if r[0] != "lit" else r
            peer_i = ids[i] if i[0] != "lit" else i
            if i[0] != "lit":
                signature[i].add(("out", peer_r, proto, port))
            if r[0] != "lit":
                signature[r].add(("in", peer_i, proto, port))
        refined = {k: (ids[k], tuple(sorted(signature[k], key=repr))) for k in view.entities}
        new_ids = _renumber(refined)
        if len(set(new_ids.values())) == len(set(ids.values())):
            return ids
        ids = new_ids
    return ids


def _renumber(labels: dict[Key, Any]) -> dict[Key, int]:
    order: dict[Any, int] = {}
    for key in sorted(labels, key=key_order):
        order.setdefault(labels[key], len(order))
    return {k: order[labels[k]] for k in labels}


def _svc_label(proto: int, port: int) -> str:
    if port == EPH:
        return "ephemeral"
    if proto in ICMP:
        return ICMP_NAMES.get((proto, port), f"{proto_label(proto)}{port}")
    if proto in PORTED:
        return SERVICES.get((proto, port), f"{proto_label(proto)}{port}")
    return proto_label(proto)


def _name_blocks(blocks: list[Block], names: dict[str, str]) -> None:
    """Vendor names for devices of one vendor, else behaviour; unique and deterministic.

    Behaviour is the conversation with the most packets: what the group mostly serves
    ("hl7-server") or uses ("https-clients").
    """
    wanted: list[list[str]] = []
    for b in blocks:
        top = [(n, 0, k) for k, n in b.served.items()] + [(n, 1, k) for k, n in b.used.items()]
        svc, role = "", "hosts"
        if top:
            _, used, (proto, port) = min(top, key=lambda t: (-t[0], t[1], t[2]))
            svc = USED_LABELS.get((proto, port), "") if used else ""
            svc = svc or _svc_label(proto, port)
            plural = len(b.members) > 1
            role = ("clients" if plural else "client") if used else (
                "servers" if plural else "server")
        behaviour = f"{svc}-{role}" if svc else role
        options = []
        if b.local:
            vendor = {names.get(k[1][:8]) for k in b.members}
            if len(vendor) == 1 and None not in vendor:
                v = slug(next(iter(vendor)))  # type: ignore[arg-type]
                options += [v, f"{v}-{behaviour}"]
            options.append(behaviour)
        elif is_public(b.members[0][1]):      # never named like an internal server
            options.append(f"internet-{b.members[0][1]}" if len(b.members) == 1
                           else "internet-hosts")
        else:
            if len(b.members) == 1:
                options.append(f"{svc}-{b.members[0][1]}" if svc else b.members[0][1])
            options.append(behaviour)
        wanted.append([safe_name(o) for o in options])
    taken: set[str] = set()
    for level in range(3):
        counts = Counter(w[min(level, len(w) - 1)] for b, w in zip(blocks, wanted, strict=True)
                         if not b.name)
        for b, w in zip(blocks, wanted, strict=True):
            choice = w[min(level, len(w) - 1)]
            if not b.name and (counts[choice] == 1 or level == 2) and choice not in taken:
                b.name = choice
                taken.add(choice)
    for b, w in zip(blocks, wanted, strict=True):
        if not b.name:
            b.name = unique(w[-1], taken)


def _ports_value(proto: int, tokens: set[int], eph_min: int) -> list[int | str]:
    """Sorted ports, runs of three or more as "a-b", ephemeral ports as one range."""
    ports = sorted(p for p in tokens if p != EPH)
    out: list[int | str] = []
    i = 0
    while i < len(ports):
        j = i
        while j + 1 < len(ports) and ports[j + 1] == ports[j] + 1:
            j += 1
        if j - i >= 2:
            out.append(f"{ports[i]}-{ports[j]}")
        else:
            out.extend(ports[i:j + 1])
        i = j + 1
    if EPH in tokens:
        lo = EPHEMERAL_WINDOWS if eph_min >= EPHEMERAL_WINDOWS else EPHEMERAL_LO
        out.append(f"{lo}-65535")
    return out


def _who(key: Key, view: View, names: dict[str, str]) -> str:
    kind, value = key
    if kind == "mac":
        ent = view.entities.get(key)
        ips = sorted(ent.ips, key=ip_order) if ent else []
        ip = next((i for i in ips if ":" not in i), ips[0] if ips else "")
        vendor = names.get(value[:8])
        extra = ", ".join(x for x in (ip, vendor) if x)
        return f"{value} ({extra})" if extra else value
    return value


def _n(value: int) -> str:
    return f"{value:,}"


def _count(n: int, word: str) -> str:
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}s"


def _flows(n: int) -> str:
    return _count(n, "flow")


def propose(baseline: Baseline, name: str = "learned", captures: Sequence[str] = (),
            view: View | None = None, caution: Caution | None = None) -> PolicyDraft:
    """A policy allowing the baseline's conversations, grouped and commented, except those
    `caution` flags (appliance.review.caution.assess): they are written as rules with
    `enabled = false`, each with its reasons."""
    view = view or baseline.view()
    tokens = _port_tokens(view)
    if caution is None:
        caution = assess(view, tokens, baseline.identities(), baseline.span())
    ids = _partition(view, tokens, caution)
    names = vendors(m for k, m in view.entities if k == "mac")
    members: dict[int, list[Key]] = defaultdict(list)
    for key in sorted(view.entities, key=key_order):
        members[ids[key]].append(key)
    blocks = {bid: Block(keys, keys[0][0] == "mac") for bid, keys in members.items()}
    for k, conv in view.convs.items():
        if caution.left_out(k):
            continue
        if conv.responder[0] != "lit":
            blocks[ids[conv.responder]].served[(conv.proto, tokens[k])] += conv.stats.packets
        if conv.initiator[0] != "lit":
            blocks[ids[conv.initiator]].used[(conv.proto, tokens[k])] += conv.stats.packets
    ordered = [blocks[b] for b in sorted(blocks)]
    _name_blocks(ordered, names)

    def label(key: Key) -> str:
        return key[1] if key[0] == "lit" else blocks[ids[key]].name

    # rules: one per (from, to, protocol), ports merged
    @dataclass
    class Pending:
        tokens: set[int] = field(default_factory=set)
        eph_min: int = 65536
        stats: Stats = field(default_factory=Stats)
        initiators: Counter[Key] = field(default_factory=Counter)
        responders: Counter[Key] = field(default_factory=Counter)
        via: Counter[str] = field(default_factory=Counter)
        ports: Counter[int] = field(default_factory=Counter)

    pending: dict[tuple[str, str, int], Pending] = defaultdict(Pending)
    flagged: dict[tuple[str, str, int], list[Flag]] = defaultdict(list)
    for k, conv in view.convs.items():
        if caution.left_out(k):
            continue
        p = pending[(label(conv.initiator), label(conv.responder), conv.proto)]
        flagged[(label(conv.initiator), label(conv.responder), conv.proto)] += \
            caution.convs.get(k, [])
        tok = tokens[k]
        p.tokens.add(tok)
        if tok == EPH:
            p.eph_min = min(p.eph_min, conv.port)
        p.stats.add(conv.stats)
        p.initiators[conv.initiator] += conv.stats.flows
        p.responders[conv.responder] += conv.stats.flows
        p.via.update(conv.via)
        p.ports[conv.port] += conv.stats.flows

    rules: list[RuleSpec] = []
    done: set[tuple[str, str, int]] = set()
    rule_names: set[str] = set()
    for rkey in sorted(pending):
        if rkey in done:
            continue
        src, dst, proto = rkey
        p = pending[rkey]
        either = False
        back = (dst, src, proto)
        if back != rkey and back in pending and pending[back].tokens == p.tokens:
            q = pending[back]
            either = True
            done.add(back)
            merged = Pending(p.tokens, min(p.eph_min, q.eph_min), Stats(),
                             p.initiators + q.initiators, p.responders + q.responders,
                             p.via + q.via, p.ports + q.ports)
            merged.stats.add(p.stats)
            merged.stats.add(q.stats)
            p = merged
        done.add(rkey)
        rules.append(_rule(src, dst, proto, p.tokens, p.eph_min, p.stats, p.initiators,
                           p.responders, p.via, p.ports, either, view, names, rule_names))
        if proto == 6 and not either:
            rules[-1:] = _first_payloads(rules[-1], baseline, [
                (raw[1], raw[3], raw[6]) for raw, (ik, rk) in view.raw.items()
                if raw[5] == 6 and (label(ik), label(rk)) == (src, dst)
                and not caution.left_out((ik, rk, 6, raw[6]))], rule_names)
        kept = flagged.get(rkey, []) + (flagged.get(back, []) if either else [])
        for why in dict.fromkeys(f"REVIEW ({TITLES[f.kind]}): {f.why}" for f in kept):
            rules[-1].comments.append(why)       # allowed on request (--allow-flagged)

    def split(spec: RuleSpec, convs: list[Conv]) -> list[RuleSpec]:
        keys = {(c.initiator, c.responder, c.proto, c.port) for c in convs}
        return _first_payloads(spec, baseline, [
            (raw[1], raw[3], raw[6]) for raw, (ik, rk) in view.raw.items()
            if (ik, rk, raw[5], raw[6]) in keys], rule_names)

    rules += left_out_rules(view, tokens, caution, ids, blocks, label, names, rule_names,
                            split)
    groups = [_group(b, view, names, caution) for b in ordered]
    first, last = baseline.span()
    flows = sum(s.flows for s in baseline.conversations.values())
    devices = sum(1 for k in view.entities if k[0] == "mac")
    header = [
        f"Proposed by `wardtap learn` from {', '.join(captures or baseline.captures) or 'events'}",
        f"seen {iso(first)} .. {iso(last)}: {_n(baseline.packets)} packets, {_n(flows)} flows, "
        f"{devices} devices on the ward, {len(view.entities) - devices} hosts known by "
        f"address" if baseline.conversations else "nothing seen",
        "Review before you enforce it (docs/learn.md): every group and rule below says what "
        "was seen.",
        "It allows what was seen, grouped: devices that had the same conversations share a "
        "group,",
        "except what a careful engineer would not allow without looking: those rules are "
        "written with",
        "`enabled = false` and say why (appliance.review.caution; docs/learn.md).",
        f"Devices identified by {baseline.identified_by}.",
    ]
    left = caution.counts()
    if left:
        header.append(f"LEFT OUT FOR REVIEW: {sum(left.values())} conversations ("
                      + ", ".join(f"{TITLES[k]} {n}" for k, n in left.most_common()) + ")")
    if view.routers:
        header.append("routers (their MAC carries several addresses; hosts behind them are "
                      "matched by address): " + ", ".join(
                          _who(("mac", m), view, vendors(view.routers))
                          for m in sorted(view.routers)))
    draft = PolicyDraft(name, 1, header=header, groups=groups, rules=rules)
    l2 = sorted(baseline.l2_only - view.routers)
    draft.setting_notes["arp"] = "IPv4 needs ARP; ARP is not a flow, so it is not learned"
    draft.setting_notes["non_ip"] = (
        "seen from " + ", ".join(_who(("mac", m), view, vendors(l2)) for m in l2[:4])
        + (f" and {len(l2) - 4} more" if len(l2) > 4 else "") + " (LLDP, STP?)"
        if l2 else "learn mode does not count non-IP frames; set \"deny\" if the ward has none")
    unmatched = baseline.counters.get("fragments_unmatched", 0)
    draft.setting_notes["fragment_unmatched"] = (
        f"{unmatched} later fragments arrived without their first one: review"
        if unmatched else "no stray fragments seen")
    return draft


def _rule(src: str, dst: str, proto: int, tokens: set[int], eph_min: int, stats: Stats,
          initiators: Counter[Key], responders: Counter[Key], via: Counter[str],
          ports: Counter[int], either: bool, view: View, names: dict[str, str],
          taken: set[str]) -> RuleSpec:
    proto_text: str | int = PROTOCOL_NAMES.get(proto, proto)
    joiner = "-and-" if either else "-to-"
    svc = _svc_label(proto, min(tokens)) if len(tokens) == 1 and proto in PORTED | ICMP \
        else str(proto_text)
    full = f"{_LITERAL_NAMES.get(src, src)}{joiner}{dst}-{svc}"
    rname = unique(safe_name(full if len(safe_name(full, 999)) <= 64 else f"{src}-{svc}"),
                   taken)
    what = service(proto, min(tokens)) if len(tokens) == 1 and EPH not in tokens else (
        str(proto_text))
    comments = [
        f"{src} {'<->' if either else '->'} {dst} {what}: {_flows(stats.flows)}, "
        f"{_n(stats.packets)} packets, {_n(stats.bytes)} bytes",
        f"  first seen {iso(stats.first)}, last seen {iso(stats.last)}",
    ]
    who = [f"{_who(k, view, names)} {_flows(n)}"
           for k, n in sorted(initiators.items(), key=lambda kv: (-kv[1], key_order(kv[0])))
           if k[0] != "lit"]
    who += [f"{_who(('mac', m), view, names)} {_flows(n)}"
            for m, n in sorted(via.items(), key=lambda kv: (-kv[1], kv[0]))]
    if who:
        more = f"; and {len(who) - LIST_DEVICES} more" if len(who) > LIST_DEVICES else ""
        comments.append("  started by: " + "; ".join(who[:LIST_DEVICES]) + more)
    servers = [f"{_who(k, view, names)}" for k in sorted(responders, key=key_order)
               if k[0] != "lit"]
    if len(servers) > 1 or (servers and not who):
        more = f"; and {len(servers) - LIST_DEVICES} more" if len(servers) > LIST_DEVICES \
            else ""
        comments.append("  answered by: " + "; ".join(servers[:LIST_DEVICES]) + more)
    comments.extend(_notes(src, dst, proto, tokens, eph_min, ports, either))
    spec = RuleSpec(rname, [src], [dst], proto_text, initiate="either" if either else "from",
                    comments=comments)
    if proto in PORTED:
        spec.ports = _ports_value(proto, tokens, eph_min)
    elif proto in ICMP:
        spec.icmp_types = sorted(tokens)
    return spec


def _first_payloads(spec: RuleSpec, baseline: Baseline, convs: list[tuple[str, str, int]],
                    taken: set[str]) -> list[RuleSpec]:
    """The rule with HL7 or DICOM conditions from what its conversations' first payloads
    said, split by port when its ports speak different protocols (docs/learn.md), and the TLS
    server names seen noted."""
    by_port: dict[int, list[tuple[str, str, int]]] = defaultdict(list)
    for conv in convs:
        by_port[conv[2]].append(conv)
    kinds: dict[str, list[int]] = defaultdict(list)
    for port, group in sorted(by_port.items()):
        hl7, dicom, _ = baseline.payloads.conditions(group)
        kinds["hl7" if hl7 else "dicom" if dicom else ""].append(port)
    out = [spec]
    if len(kinds) > 1 and spec.ports:
        out = []
        for kind, ports in sorted(kinds.items()):
            if kind:
                part = copy.deepcopy(spec)
                part.name = unique(safe_name(f"{spec.name}-{kind}"), taken)
                part.ports = list(ports)
                out.append(part)
        rest = [p for p in spec.ports if not (isinstance(p, int) and p in
                                               {x for k, v in kinds.items() if k for x in v})]
        if rest:
            spec.ports = rest
            out.insert(0, spec)
    for part in out:
        exact = {p for p in (part.ports or []) if isinstance(p, int)}
        hl7, dicom, server_names = baseline.payloads.conditions(
            [c for c in convs if c[2] in exact] if exact else convs)
        if hl7:
            part.hl7 = hl7
            part.comments.append("  hl7: what the sampled first messages said (MSH-9, "
                                 "MSH-3, MSH-5); anything else would be denied")
        if dicom:
            part.dicom = dicom
            part.comments.append("  dicom: what the sampled associations said (AE titles, "
                                 "SOP classes); anything else would be denied")
        if server_names:
            part.comments.append("  TLS server names seen: " + ", ".join(server_names[:8])
                                 + ("..." if len(server_names) > 8 else "")
                                 + " (a group's `names` follows them wherever DNS points)")
    return out


_LITERAL_NAMES = {"::": "unspecified6", "0.0.0.0": "unspecified"}


def _notes(src: str, dst: str, proto: int, tokens: set[int], eph_min: int,
           ports: Counter[int], either: bool) -> list[str]:
    out = []
    if proto == 17 and src == "0.0.0.0" and dst == "255.255.255.255" and tokens == {67}:
        out.append("DHCP: devices without an address yet ask for one. Any device may ask "
                   "(restricting it would stop a replaced device from booting).")
    elif proto == 17 and dst == "255.255.255.255" and tokens == {68}:
        out.append("DHCP offers and acknowledgements, broadcast (from the server or relay).")
    elif proto == 58 and tokens & {133, 134, 135, 136, 137}:
        out.append("IPv6 neighbour discovery: IPv6 does not work without it.")
    elif proto == 58 and tokens & {130, 131, 132, 143}:
        out.append("IPv6 multicast listener reports (MLD).")
    if src in ("0.0.0.0", "::") and proto != 17:
        out.append("From the unspecified address: a device that has no address yet.")
    if EPH in tokens:
        eph = sorted(p for p in ports if p >= EPHEMERAL_LO)
        out.append(f"REVIEW: the answering side's port changed from flow to flow ({len(eph)} "
                   f"ports, {eph[0]}..{eph[-1]}): ephemeral ports, allowed as a range. "
                   "A protocol with a separate data connection (FTP, SIP/RTP)?")
    distinct = len([p for p in tokens if p != EPH])
    if distinct > MANY_PORTS:
        out.append(f"REVIEW: {distinct} different ports to the same group: a scan?")
    if either:
        out.append("Seen started from both sides on the same ports, so either may start it.")
    return out


def left_out_rules(view: View, tokens: dict[tuple[Key, Key, int, int], int],
                   caution: Caution, ids: dict[Key, int], blocks: dict[int, Block],
                   label: Callable[[Key], str], names: dict[str, str],
                   taken: set[str],
                   split: Callable[[RuleSpec, list[Conv]], list[RuleSpec]] | None = None
                   ) -> list[RuleSpec]:
    """The flagged conversations as rules with `enabled = false`, one per pair of groups,
    protocol and reason, each saying why. A side names its group only when every member of
    the group took part; otherwise the addresses of those that did, so that enabling the
    rule allows what was seen and no more."""
    buckets: dict[tuple[Any, Any, int, str], list[Conv]] = defaultdict(list)
    for k, conv in view.convs.items():
        flags = caution.convs.get(k)
        if not flags or not caution.left_out(k):
            continue
        side = tuple(("lit", e[1]) if e[0] == "lit" else ("block", ids[e])
                     for e in (conv.initiator, conv.responder))
        buckets[(side[0], side[1], conv.proto, flags[0].kind)].append(conv)
    out = []
    for (_, _, proto, kind), convs in sorted(buckets.items(), key=lambda kv: (
            kv[0][3], repr(kv[0][:3]))):
        src = _left_out_side([c.initiator for c in convs], ids, blocks, label, view)
        dst = _left_out_side([c.responder for c in convs], ids, blocks, label, view)
        ports = {c.port for c in convs}       # as seen: a scan's ports are not ephemeral
        stats = Stats()
        initiators: Counter[Key] = Counter()
        for c in convs:
            stats.add(c.stats)
            initiators[c.initiator] += c.stats.flows
        proto_text: str | int = PROTOCOL_NAMES.get(proto, proto)
        svc = _svc_label(proto, min(ports)) if len(ports) == 1 and proto in PORTED | ICMP \
            else str(proto_text)
        rname = unique(safe_name(f"review-{kind}-{src[0]}-to-{dst[0]}-{svc}"), taken)
        what = service(proto, min(ports)) if len(ports) == 1 else (
            f"{proto_text}, {len(ports)} ports")
        reasons = []
        for c in convs:
            for flag in caution.convs[(c.initiator, c.responder, c.proto, c.port)]:
                if flag.why not in reasons:
                    reasons.append(flag.why)
        kinds = []
        for c in convs:
            for flag in caution.convs[(c.initiator, c.responder, c.proto, c.port)]:
                if TITLES[flag.kind] not in kinds:
                    kinds.append(TITLES[flag.kind])
        comments = [f"LEFT OUT FOR REVIEW ({', '.join(kinds)}):"]
        comments += [f"  {why}" for why in reasons[:LIST_DEVICES]]
        if len(reasons) > LIST_DEVICES:
            comments.append(f"  ... and {len(reasons) - LIST_DEVICES} more reasons")
        comments.append(f"seen: {', '.join(src)} -> {', '.join(dst)} {what}: "
                        f"{_flows(stats.flows)}, {_n(stats.packets)} packets, "
                        f"{_n(stats.bytes)} bytes, {iso(stats.first)} .. {iso(stats.last)}")
        who = [f"{_who(k, view, names)} {_flows(n)}" for k, n in sorted(
            initiators.items(), key=lambda kv: (-kv[1], key_order(kv[0]))) if k[0] != "lit"]
        if who:
            more = f"; and {len(who) - LIST_DEVICES} more" if len(who) > LIST_DEVICES else ""
            comments.append("  started by: " + "; ".join(who[:LIST_DEVICES]) + more)
        spec = RuleSpec(rname, src, dst, proto_text, comments=comments, enabled=False)
        if proto in PORTED:
            spec.ports = _ports_value(proto, ports, 65536)
        elif proto in ICMP:
            spec.icmp_types = sorted(ports)
        out += split(spec, convs) if split is not None and proto == 6 else [spec]
    return out


def _left_out_side(keys: list[Key], ids: dict[Key, int], blocks: dict[int, Block],
                   label: Callable[[Key], str], view: View) -> list[str]:
    first = keys[0]
    if first[0] == "lit":
        return [first[1]]
    involved = set(keys)
    if set(blocks[ids[first]].members) <= involved:
        return [label(first)]
    out: list[str] = []
    for key in sorted(involved, key=key_order):
        if key[0] == "ip":
            out.append(key[1])
            continue
        ips = sorted((i for i in view.entities[key].ips if literal_of(i, None) is None),
                     key=ip_order)
        routable = [i for i in ips if not i.lower().startswith("fe80:")]
        out += routable or ips
    return sorted(set(out), key=ip_order) or [label(first)]


def _group(b: Block, view: View, names: dict[str, str], caution: Caution) -> GroupSpec:
    g = GroupSpec(b.name)
    for key in b.members:
        for flag in caution.devices.get(key, ()):
            g.comments.append(f"REVIEW ({TITLES[flag.kind]}): {flag.why}")
    if not (b.served or b.used):
        g.comments.append("seen only in conversations left out for review (rules with "
                          "`enabled = false` below)")
    stats = Stats()
    vlans: set[int] = set()
    ips: set[str] = set()
    for key in b.members:
        ent = view.entities[key]
        stats.add(ent.stats)
        vlans |= ent.vlans
        ips |= {ip for ip in ent.ips if literal_of(ip, None) is None}
        if key[0] == "mac":
            g.mac.append(key[1])
            eips = sorted((i for i in ent.ips if literal_of(i, None) is None), key=ip_order)
            vendor = names.get(key[1][:8])
            g.notes[key[1]] = ", ".join(x for x in (
                " ".join(eips[:2]), vendor, _flows(ent.stats.flows),
                f"{iso(ent.stats.first)} .. {iso(ent.stats.last)}") if x)
        else:
            g.notes[key[1]] = (f"{_flows(ent.stats.flows)}, {iso(ent.stats.first)} .. "
                               f"{iso(ent.stats.last)}")
    g.ip = sorted(ips, key=ip_order)
    if b.local and vlans and 0 not in vlans:
        g.vlan = sorted(vlans)
    kinds = "devices" if b.local else "hosts known by address"
    if b.local:
        vend = Counter(names.get(k[1][:8], "unknown vendor") for k in b.members)
        who = ", ".join(f"{v} ({n})" if n > 1 else v for v, n in sorted(vend.items()))
        g.comments.append(f"{len(b.members)} {kinds} that behave alike: {who}"
                          if len(b.members) > 1 else f"one device: {who}")
    else:
        g.comments.append(f"{len(b.members)} {kinds} that behave alike"
                          if len(b.members) > 1 else "a host known by its address")
    if b.served:
        g.comments.append("answers: " + ", ".join(
            service(p, t) if t != EPH else f"{proto_label(p)}/ephemeral" for p, t in
            sorted(b.served)))
    if b.used:
        g.comments.append("starts: " + ", ".join(
            service(p, t) if t != EPH else f"{proto_label(p)}/ephemeral" for p, t in
            sorted(b.used)))
    g.comments.append(f"seen {iso(stats.first)} .. {iso(stats.last)}: {_flows(stats.flows)}, "
                      f"{_n(stats.packets)} packets, {_n(stats.bytes)} bytes")
    return g


def check_allows(text: str, baseline: Baseline, path: str,
                 caution: Caution | None = None, view: View | None = None) -> int:
    """Validate a proposal and make sure it allows every conversation it was learned from,
    except those left out for review; return how many of those it allows all the same (a
    group rule that covers them: the same conversation was seen outside the flagged
    traffic)."""
    policy = parse_policy(text, path)
    compile_policy(policy)
    evaluator = Evaluator(policy)
    view = view if view is not None or caution is None else baseline.view()
    covered = 0
    for raw in baseline.conversations:
        smac, src, dmac, dst, vlan, proto, port = raw
        d = evaluator.decide(Endpoint(smac, src, vlan), Endpoint(dmac, dst, vlan), proto, port)
        if caution is not None and view is not None:
            ikey, rkey = view.raw[raw]
            if caution.left_out((ikey, rkey, proto, port)):
                covered += d.allowed
                continue
        if not d.allowed:
            raise WardtapError(f"{path}: internal error: the proposal does not allow "
                               f"{src} -> {dst} {service(proto, port)} ({d.reason}); "
                               "please report it")
    return covered


