"""Decode conformance: `wardtap replay --packets-out` against tshark on real captures.

    .venv/bin/python bench/conformance.py [CAPTURE_OR_DIR ...] [--jobs 2] [--out bench/out]
                                          [--show 20]

Default input: bench/corpus/ (fetched by bench/fetch_corpus.py). For every capture, wardtap
replay runs as its own process (so a crash is seen as one) and tshark reads the same file
(IP reassembly off, as wardtap does not reassemble). Packet by packet and field by field:

- addresses (the outer IP header's for tunnels: the first occurrence in tshark),
- the upper-layer protocol after IPv6 extension headers (hop-by-hop, routing, destination
  options, fragment, AH),
- ports (TCP, UDP, UDP-Lite, SCTP) or ICMP/ICMPv6 type and code,
- VLAN ids (802.1Q, 802.1ad), source MAC,
- fragment offset and more-fragments (IPv4 and IPv6),
- the tunnel type wardtap reports (GRE, IP-in-IP, 6in4, ...) against tshark's layer after
  the outer IP header,
- and for a packet wardtap calls malformed: that tshark flags it too or cannot decode it.

Every capture is read (its packets compared) or refused; a refusal must be one line on
stderr with exit status 2, anything else (a traceback, a signal, another status) is a crash.
Prints the totals and the disagreements by field with examples; writes OUT/conformance.json.
Asserts nothing: a measurement. The functions are also used by tests/test_conformance.py.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
TSHARK_FIELDS = [
    "frame.number", "frame.protocols", "eth.src", "sll.src.eth", "wlan.sa", "vlan.id",
    "ieee8021ad.id",
    "ip.src", "ip.dst", "ip.proto", "ip.frag_offset", "ip.flags.mf",
    "ipv6.src", "ipv6.dst", "ipv6.nxt", "ipv6.hopopts.nxt", "ipv6.routing.nxt",
    "ipv6.fraghdr.nxt", "ipv6.fraghdr.offset", "ipv6.fraghdr.more", "ipv6.dstopts.nxt",
    "ah.next_header", "tcp.srcport", "tcp.dstport", "udp.srcport", "udp.dstport",
    "sctp.srcport", "sctp.dstport",
    "icmp.type", "icmp.code", "icmpv6.type", "icmpv6.code",
    "_ws.malformed", "_ws.short", "_ws.expert.severity",
    "_ws.expert.message",  # last: free text
]
TEXT_FIELDS = ("frame.protocols", "_ws.malformed", "_ws.short", "_ws.expert.message")
IPV6_EXT = {"ipv6.hopopts": "ipv6.hopopts.nxt", "ipv6.routing": "ipv6.routing.nxt",
            "ipv6.fraghdr": "ipv6.fraghdr.nxt", "ipv6.dstopts": "ipv6.dstopts.nxt",
            "ah": "ah.next_header"}
PORT_LAYER = {6: "tcp", 17: "udp", 136: "udp", 132: "sctp"}   # tshark: UDP-Lite as udp.*
# wardtap's tunnel names and the layer tshark shows after the outer IP header.
TUNNEL_LAYER = {"gre": {"gre"}, "ipip": {"ip"}, "6in4": {"ipv6"}, "etherip": {"etherip"},
                "l2tpv3": {"l2tp"}, "mpls-in-ip": {"mpls"}}
SEVERITY_ERROR = 0x00800000
ZERO_MAC = "00:00:00:00:00:00"   # a link address of zeros (loopback, tests) identifies no
                                 # device: the same as none on either side
# Layers wardtap decodes itself: a malformed label about one of them matters.
OWN_LAYERS = ("Ethernet", "VLAN", "IEEE 802.1ad", "ARP/RARP", "IPv4", "IPv6", "TCP", "UDP",
              "UDP-Lite", "ICMP", "ICMPv6", "SCTP", "SLL", "PPPoE", "PPP", "Null/Loopback")
# The layer a malformed reason is about: tshark "cannot decode it" when it is absent.
REASON_LAYER = {
    "ethernet_truncated": "eth", "sll_truncated": "sll", "vlan_truncated": "vlan",
    "raw_ip_bad_version": "ip", "arp_truncated": "arp", "ipv4_truncated": "ip",
    "ipv4_bad_version": "ip", "ipv4_bad_header_length": "ip",
    "ipv4_bad_total_length": "ip", "ipv6_truncated": "ipv6", "ipv6_bad_version": "ipv6",
    "ipv6_extension_truncated": "ipv6", "tcp_truncated": "tcp",
    "tcp_bad_data_offset": "tcp", "udp_truncated": "udp", "udp_bad_length": "udp",
    "icmp_truncated": "icmp", "sctp_truncated": "sctp", "link_truncated": "",
    "pppoe_truncated": "pppoes",
}
# wardtap's stated limits: frames tshark decodes but wardtap refuses on purpose.
DELIBERATE_LIMITS = {"vlan_too_deep", "ipv6_too_many_extensions", "encapsulation_too_deep"}


# --- running both tools -------------------------------------------------------------------


def run_tshark(path: Path, tshark: str = "tshark") -> list[dict[str, Any]] | str:
    """tshark's fields, one dict per packet; or its error text when it cannot read the file."""
    cmd = [tshark, "-n", "-r", str(path), "-o", "ip.defragment:FALSE",
           "-o", "ipv6.defragment:FALSE", "-T", "fields", "-E", "separator=/t",
           "-E", "occurrence=a", "-E", "aggregator=,"]
    for name in TSHARK_FIELDS:
        cmd += ["-e", name]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          errors="replace")
    rows = []
    for line in proc.stdout.splitlines():
        parts = line.split("\t")
        if len(parts) != len(TSHARK_FIELDS):
            continue
        row: dict[str, Any] = {}
        for name, value in zip(TSHARK_FIELDS, parts, strict=True):
            row[name] = value if name in TEXT_FIELDS else (value.split(",") if value else [])
        rows.append(row)
    if proc.returncode != 0 and not rows:
        return " ".join(proc.stderr.split())[:200] or f"tshark exit {proc.returncode}"
    return rows


@dataclass
class Replay:
    lines: list[dict[str, Any]]
    returncode: int
    stderr: str
    crashed: bool


def run_replay(path: Path, workdir: Path) -> Replay:
    out = workdir / "packets.jsonl"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "appliance.cli", "replay", str(path),
                           "--packets-out", str(out)], capture_output=True, text=True,
                          timeout=600, env=env, errors="replace")
    lines = [json.loads(x) for x in out.read_text().splitlines() if x.strip()] \
        if out.exists() else []
    err = proc.stderr.strip()
    crashed = (proc.returncode not in (0, 2) or "Traceback" in err
               or (proc.returncode == 2 and len(err.splitlines()) != 1))
    return Replay(lines, proc.returncode, err, crashed)


# --- comparing one packet -----------------------------------------------------------------


def first(row: dict[str, Any], name: str) -> str | None:
    values = row[name]
    return values[0] if values else None


def as_int(value: str | None) -> int | None:
    if value is None or value == "":
        return None
    if value in ("True", "False"):
        return int(value == "True")
    return int(value, 16) if value.startswith("0x") else int(value)


def tshark_l3(layers: list[str]) -> tuple[str | None, int]:
    for i, name in enumerate(layers):
        if name in ("ip", "ipv6"):
            return name, i
    return None, -1


def tshark_proto(row: dict[str, Any], layers: list[str], l3: str, idx: int) -> int | None:
    """The outer packet's protocol after its extension headers."""
    if l3 == "ip":
        return as_int(first(row, "ip.proto"))
    j = idx + 1
    while j < len(layers) and layers[j] in IPV6_EXT:
        j += 1
    if j == idx + 1:
        return as_int(first(row, "ipv6.nxt"))
    last = layers[j - 1]
    nth = layers[idx + 1:j].count(last) - 1
    values = row[IPV6_EXT[last]]
    return as_int(values[nth]) if nth < len(values) else None


def tshark_flagged(row: dict[str, Any]) -> bool:
    return bool(row["_ws.malformed"] or row["_ws.short"]
                or any(as_int(s) == SEVERITY_ERROR for s in row["_ws.expert.severity"]))


def compare_packet(w: dict[str, Any], t: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """Disagreements of one packet as (field, wardtap, tshark); empty when they agree."""
    layers = t["frame.protocols"].split(":")
    bad: list[tuple[str, Any, Any]] = []
    if w["verdict"] == "malformed":
        reason = w["reason"]
        layer = REASON_LAYER.get(reason)
        if reason in DELIBERATE_LIMITS or tshark_flagged(t) or (layer and layer not in layers):
            return bad
        return [("malformed", reason, t["_ws.expert.message"] or "decoded without complaint")]
    malformed = t["_ws.malformed"]
    if malformed and any(f"Malformed Packet: {name}" in malformed for name in OWN_LAYERS) \
            and not w.get("tunnel") and not icmp_error(w):
        bad.append(("malformed", "decoded", malformed[:80]))
    tmac = first(t, "eth.src") or first(t, "sll.src.eth") or first(t, "wlan.sa")
    ours = w.get("smac")
    if (ours if ours != ZERO_MAC else None) != (tmac if tmac != ZERO_MAC else None):
        bad.append(("source MAC", ours, tmac))
    l3, idx = tshark_l3(layers)
    tags = tshark_tags(t, layers[:idx] if idx >= 0 else layers)
    ours = [v for v in (w.get("vlan_outer"), w["vlan"]) if v]
    if tags != ours:
        bad.append(("VLAN ids", ours, tags))
    if w["src"] is None:
        if l3 is not None and "arp" not in layers[:idx]:
            bad.append(("IP layer", None, l3))
        return bad
    if l3 is None:
        return bad + [("IP layer", w["src"], None)]
    addr = (first(t, f"{l3}.src"), first(t, f"{l3}.dst"))
    if (w["src"], w["dst"]) != addr:
        bad.append(("addresses", (w["src"], w["dst"]), addr))
    proto = tshark_proto(t, layers, l3, idx)
    if w["proto"] != proto:
        bad.append(("protocol", w["proto"], proto))
    bad += _compare_fragment(w, t, l3)
    tunnel = w.get("tunnel")
    if tunnel:
        after = [x for x in layers[idx + 1:] if x not in IPV6_EXT]
        if not after or after[0] not in TUNNEL_LAYER.get(tunnel, {tunnel}):
            bad.append(("tunnel", tunnel, after[0] if after else None))
    name = PORT_LAYER.get(w["proto"])
    if name and w.get("sport") is not None:
        theirs = (as_int(first(t, f"{name}.srcport")), as_int(first(t, f"{name}.dstport")))
        if (w["sport"], w["dport"]) != theirs:
            bad.append(("ports", (w["sport"], w["dport"]), theirs))
    elif w["proto"] in (1, 58) and w.get("icmp_type") is not None:
        name = "icmp" if w["proto"] == 1 else "icmpv6"
        theirs = (as_int(first(t, f"{name}.type")), as_int(first(t, f"{name}.code")))
        if (w["icmp_type"], w["icmp_code"]) != theirs:
            bad.append(("ICMP type/code", (w["icmp_type"], w["icmp_code"]), theirs))
    return bad


def tshark_tags(t: dict[str, Any], layers: list[str]) -> list[int]:
    """VLAN ids of the tags before the (outer) IP header, outermost first; a tag of id 0
    only carries a priority (no VLAN) and is left out, as wardtap reports no VLAN for it."""
    dot1q, dot1ad = iter(t["vlan.id"]), iter(t["ieee8021ad.id"])
    tags = []
    for name in layers:
        if name == "vlan":
            tags.append(as_int(next(dot1q, None)) or 0)
        elif name == "ieee8021ad":
            tags.append(as_int(next(dot1ad, None)) or 0)
    return [tag for tag in tags if tag]


def icmp_error(w: dict[str, Any]) -> bool:
    """An ICMP error: wardtap reads its type, code and the first bytes of the packet it
    quotes, not the rest (extensions, the quoted payload), where tshark may find damage."""
    kind = w.get("icmp_type")
    return (w.get("proto") == 1 and kind in (3, 4, 5, 11, 12)) or (
        w.get("proto") == 58 and kind in (1, 2, 3, 4))


def _compare_fragment(w: dict[str, Any], t: dict[str, Any], l3: str) -> list[tuple[str, Any,
                                                                                   Any]]:
    # tshark gives both offsets in 8-byte units; wardtap in bytes.
    if l3 == "ip":
        offset = as_int(first(t, "ip.frag_offset")) or 0
        more = as_int(first(t, "ip.flags.mf")) or 0
    else:
        offset = as_int(first(t, "ipv6.fraghdr.offset")) or 0
        more = as_int(first(t, "ipv6.fraghdr.more")) or 0
    ours = (w.get("frag_offset", 0) // 8, int(w.get("more_fragments", False)))
    return [] if ours == (offset, more) else [("fragment offset/MF", ours, (offset, more))]


# --- one capture, many captures -------------------------------------------------------------


@dataclass
class Result:
    path: str
    status: str                       # read, refused, crashed, tshark_only_error
    message: str = ""
    packets: int = 0
    compared: int = 0
    agreed: int = 0
    disagreements: list[tuple[int, str, Any, Any]] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)


def check_capture(path: Path, tshark: str = "tshark") -> Result:
    with tempfile.TemporaryDirectory() as tmp:
        replay = run_replay(path, Path(tmp))
    result = Result(str(path), "read", packets=len(replay.lines))
    if replay.crashed:
        result.status, result.message = "crashed", replay.stderr[-400:]
        return result
    if replay.returncode == 2:
        result.message = replay.stderr
        if not replay.lines:
            result.status = "refused"
            return result
        result.status = "partial"          # read up to damage, then one error line
    rows = run_tshark(path, tshark)
    if isinstance(rows, str):
        result.message = result.message or f"tshark: {rows}"
        if not replay.lines:
            return result
        rows = []
    for w in replay.lines:
        result.reasons[w["reason"]] += 1
        i = w["i"]
        if i >= len(rows) or w["reason"] == "unsupported_linktype":
            continue            # not decoded on purpose: counted in `reasons`, not compared
        result.compared += 1
        bad = compare_packet(w, rows[i])
        if bad:
            result.disagreements += [(i, *b) for b in bad]
        else:
            result.agreed += 1
    return result


def captures_in(paths: list[str]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file()
                          and f.name not in ("SOURCES.json", "SOURCES.md"))
        else:
            out.append(p)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="*", default=[str(BENCH / "corpus")])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", default=str(BENCH / "out"))
    ap.add_argument("--show", type=int, default=20, help="examples shown per field")
    ap.add_argument("--tshark", default="tshark")
    args = ap.parse_args(argv)
    files = captures_in(args.paths)
    if not files:
        print("no captures: run bench/fetch_corpus.py first", file=sys.stderr)
        return 2
    started = time.monotonic()
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda p: check_capture(p, args.tshark), files))
    report = summarise(results, time.monotonic() - started)
    print_report(report, results, args.show)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "conformance.json").write_text(json.dumps(report, indent=1) + "\n")
    return 0


def summarise(results: list[Result], elapsed: float) -> dict[str, Any]:
    status = Counter(r.status for r in results)
    compared = sum(r.compared for r in results)
    agreed = sum(r.agreed for r in results)
    by_field: Counter[str] = Counter()
    packets_by_field: Counter[str] = Counter()
    for r in results:
        by_field.update(d[1] for d in r.disagreements)
        for i in {d[0] for d in r.disagreements}:
            for name in {d[1] for d in r.disagreements if d[0] == i}:
                packets_by_field[name] += 1
    refusals = Counter(refusal(r.message) for r in results if r.status == "refused")
    return {
        "captures": len(results), "status": dict(status),
        "crashes": [r.path for r in results if r.status == "crashed"],
        "packets": sum(r.packets for r in results), "compared": compared, "agreed": agreed,
        "agreement": agreed / compared if compared else None,
        "disagreeing_packets_by_field": dict(packets_by_field.most_common()),
        "refusals": dict(refusals.most_common()),
        "partial": {r.path: r.message for r in results if r.status == "partial"},
        "elapsed_s": round(elapsed, 1),
    }


def refusal(message: str) -> str:
    """The reason of a one-line refusal ("wardtap: error: PATH at byte N: REASON")."""
    found = re.search(r" at byte \d+: (.*)", message)
    reason = found.group(1) if found else message.rsplit(": ", 1)[-1]
    return re.sub(r"; supported: .*", "", reason)


def print_report(report: dict[str, Any], results: list[Result], show: int) -> None:
    print(f"captures: {report['captures']}  {report['status']}")
    print(f"crashes: {len(report['crashes'])}")
    for path in report["crashes"]:
        print(f"  CRASH {path}")
    if report["compared"]:
        print(f"packets compared with tshark: {report['compared']:,}; agree: "
              f"{report['agreed']:,} ({100 * report['agreement']:.3f}%)")
    for name, n in report["disagreeing_packets_by_field"].items():
        print(f"  {name}: {n} packets")
        shown = 0
        for r in results:
            for i, fname, ours, theirs in r.disagreements:
                if fname == name and shown < show:
                    print(f"    {Path(r.path).name} #{i + 1}: wardtap {ours!r}, "
                          f"tshark {theirs!r}")
                    shown += 1
    print("refused:")
    for message, n in report["refusals"].items():
        print(f"  {n:4d}  {message}")
    for path, message in report["partial"].items():
        print(f"read up to damage: {Path(path).name}: {message}")
    print(f"({report['elapsed_s']} s)")


if __name__ == "__main__":
    sys.exit(main())
