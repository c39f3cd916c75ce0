"""The inventory for people: an aligned table, CSV, and one device's evidence (`--why`)."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Sequence
from typing import Any

from appliance.common.table import Column, render
from appliance.common.text import csv_cell, shown
from appliance.common.when import local, zone_name


def _when(ts: float | None) -> str:
    """Local time with the zone (the table's header names the zone once)."""
    return local(ts, seconds=False, zone=False) if ts else "-"


def _bytes(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}"
        n = n / 1000           # type: ignore[assignment]
    return f"{n:.0f} TB"


def _ips(d: dict[str, Any], limit: int = 2) -> str:
    ips = [i["ip"] for i in d["ips"] if not i["ip"].lower().startswith("fe80:")] or \
          [i["ip"] for i in d["ips"]]
    text = ", ".join(ips[:limit])
    return text + (f" +{len(ips) - limit}" if len(ips) > limit else "")


# The inventory's columns: priority 0 always shown, higher numbers dropped first when the
# terminal is narrow; wrapped columns wrap instead of being cut. MAKE / MODEL falls back to
# the MAC's vendor (marked "by MAC"), so the VENDOR column is the first to go.
TABLE_COLUMNS = (
    Column("MAC"), Column("VENDOR", 8, wrap=True, min_width=16),
    Column("CLASS", wrap=True, min_width=16), Column("CONF", 7, align=">"),
    Column("NAME", 4, wrap=True, min_width=10),
    Column("MAKE / MODEL", 1, wrap=True, min_width=22), Column("VERSION", 6, wrap=True),
    Column("ADDRESSES", 2, wrap=True, min_width=15),
    Column("PROTOCOLS", 9, wrap=True, min_width=16), Column("FIRST SEEN", 10),
    Column("LAST SEEN", 5), Column("BYTES", 11, align=">"), Column("RISK", 1),
)


def _table_order(d: dict[str, Any]) -> tuple[bool, str, int, str]:
    """Known classes first, by name; within one, by the lowest IPv4 address."""
    v4 = []
    for entry in d["ips"]:
        try:
            v4.append(int(ipaddress.IPv4Address(entry["ip"])))
        except ValueError:
            continue
    return (d["class"] == "unknown", d["class"], min(v4, default=1 << 32), d["mac"])


def render_table(devices: Sequence[dict[str, Any]], width: int | None = None,
                 wide: bool = False) -> str:
    """The inventory as a table that fits the terminal (`wardtap devices`); times are
    local, in the zone the header names. Rows go by class, then address, so a ward's pumps
    or monitors read as one block (JSON and CSV keep the order first seen)."""
    rows = []
    for d in sorted(devices, key=_table_order):
        vendor = d["vendor"] or ("(randomized MAC)" if d["randomized_mac"] else "-")
        protocols = [p for p in d["protocols"] if " " not in p] + \
                    [p for p in d["protocols"] if " " in p]
        proto = ", ".join(protocols[:3]) + (f" +{len(protocols) - 3}"
                                            if len(protocols) > 3 else "")
        model = " ".join(x for x in (d.get("make"), d.get("model")) if x) or \
            (f"{d['vendor']} (by MAC)" if d["vendor"] else "-")
        rows.append((d["mac"], vendor, d["class"] + (" (router)" if d["router"] else ""),
                     f"{d['confidence']:.2f}", (d["names"] or ["-"])[0], model,
                     d.get("software_version") or "-", _ips(d) or "-",
                     proto or "-", _when(d["first_seen"]), _when(d["last_seen"]),
                     _bytes(d["bytes_sent"] + d["bytes_received"]), _risk(d)))
    zone = zone_name()
    columns = [Column(f"{c.header} ({zone})", c.priority) if "SEEN" in c.header else c
               for c in TABLE_COLUMNS]
    return render(columns, rows, width, wide)


def _risk(d: dict[str, Any]) -> str:
    """CLEAR: patient data in the clear; ADV n: advisories that (may) apply."""
    marks = ["CLEAR"] if d.get("unencrypted_patient_data") else []
    if d.get("advisories"):
        marks.append(f"ADV {len(d['advisories'])}")
    return " ".join(marks) or "-"


CSV_FIELDS = ("mac", "vendor", "randomized_mac", "class", "confidence", "roles", "make",
              "model", "software_version", "names", "ips", "vlan", "router", "protocols",
              "first_seen", "last_seen", "packets_sent", "bytes_sent", "packets_received",
              "bytes_received", "class_reasons", "unencrypted_patient_data", "data_flows",
              "advisories")


def render_csv(devices: Sequence[dict[str, Any]]) -> str:
    import csv
    import io

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for d in devices:
        row = dict(d, names=";".join(d["names"]), ips=";".join(i["ip"] for i in d["ips"]),
                   protocols=";".join(d["protocols"]),
                   class_reasons=";".join(r["rule"] for r in d["class_reasons"]),
                   roles=";".join(d.get("roles") or []),
                   data_flows=";".join(_flow_text(f) for f in d.get("data_flows") or []),
                   advisories=";".join(f"{a['id']} ({a['status']})"
                                       for a in d.get("advisories") or []),
                   first_seen=_iso(d["first_seen"]), last_seen=_iso(d["last_seen"]))
        writer.writerow([csv_cell(row[f]) for f in CSV_FIELDS])
    return out.getvalue()


def _flow_text(f: dict[str, Any]) -> str:
    to = "to" if f["direction"] == "sends" else "from"
    return (f"{f['direction']} {f['protocol']} {'/'.join(f['what'])} {to} {f['peer']} "
            f"({'encrypted' if f['encrypted'] else 'in the clear'}"
            f"{', patient data' if f['patient_data'] else ''})")


def _iso(ts: float | None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts)) if ts else ""


def render_why(d: dict[str, Any]) -> str:
    """One device: its class, the rules and evidence behind it, everything it showed."""
    lines = [f"{d['mac']}  {d['vendor'] or '(no vendor)'}"
             + ("  (locally administered MAC: likely randomized)" if d["randomized_mac"] else ""),
             f"class       {d['class']}  confidence {d['confidence']:.2f}"]
    for r in d["class_reasons"]:
        ev = ", ".join(f"{e['key']}={e['value']}" for e in r["evidence"])
        lines.append(f"  because   {r['rule']} ({r['score']}): {ev}")
    for r in d["contradicting"]:
        ev = ", ".join(f"{e['key']}={e['value']}" for e in r["evidence"])
        lines.append(f"  against   {r['rule']} ({r['score']}): {ev}")
    if d.get("roles"):
        lines.append(f"roles       {', '.join(d['roles'])}")
    ident = d.get("identity") or {}
    if ident:
        lines.append(f"make        {ident.get('make')}  model {ident.get('model')}  software "
                     f"{ident.get('software_version') or 'unknown'}")
        for e in ident.get("evidence") or []:
            lines.append(f"  named by  {e['key']}={e['value']}")
        if ident.get("version_from"):
            v = ident["version_from"]
            lines.append(f"  version   from {v['key']}={v['value']}")
    lines.append(f"names       {', '.join(d['names']) or '-'}")
    lines.append("addresses   " + (", ".join(f"{i['ip']} ({i['source']}, {_when(i['first_seen'])}"
                                             f" - {_when(i['last_seen'])})" for i in d["ips"])
                                   or "-"))
    lines.append(f"protocols   {', '.join(d['protocols']) or '-'}")
    lines.append("peers       " + (", ".join(f"{p['ip']} ({'/'.join(p['services'])}, "
                                             f"{p['flows']} flows)" for p in d["peers"][:8])
                                   or "-"))
    lines.append(f"seen        {_when(d['first_seen'])} - {_when(d['last_seen'])}  sent "
                 f"{_bytes(d['bytes_sent'])}, received {_bytes(d['bytes_received'])}")
    flows = d.get("data_flows") or []
    lines.append("data        " + ("-" if not flows else _flow_text(flows[0])))
    lines += [f"            {_flow_text(f)}" for f in flows[1:]]
    if d.get("unencrypted_patient_data"):
        lines.append("  risk      patient data crosses the network unencrypted")
    advisories = d.get("advisories") or []
    lines.append("advisories  " + ("-" if not advisories else ""))
    for a in advisories:
        cvss = a["cvss"] if a["cvss"] is not None else "-"
        lines.append(f"  {a['id']:<16} {a['status']}  CVSS {cvss}  {a['title'][:60]}")
        lines.append(f"    product  {a['product']} {a['product_version']}".rstrip())
        lines.append(f"    why      {a['why']}")
        fix = a.get("remediation") or {}
        if fix.get("details"):
            lines.append(f"    fix      {fix['details'][:160]}")
    lines.append("evidence")
    for e in d["evidence"]:
        lines.append(f"  {e['key']:<22} {e['value'][:60]:<60}  {e['source']}, "
                     f"{_when(e['first_seen'])}, x{e['count']}")
    return "\n".join(shown(line) for line in lines)
