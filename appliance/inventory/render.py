"""The inventory for people: an aligned table, CSV, and one device's evidence (`--why`)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from appliance.common.text import csv_cell, shown


def _when(ts: float | None) -> str:
    if not ts:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts))


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


def render_table(devices: Sequence[dict[str, Any]]) -> str:
    """The inventory as an aligned text table (`wardtap devices`), times in UTC."""
    head = ("MAC", "VENDOR", "CLASS", "CONF", "NAME", "ADDRESSES", "PROTOCOLS", "FIRST SEEN",
            "LAST SEEN", "BYTES")
    rows = []
    for d in devices:
        vendor = (d["vendor"] or ("(randomized MAC)" if d["randomized_mac"] else "-"))[:24]
        protocols = [p for p in d["protocols"] if " " not in p] + \
                    [p for p in d["protocols"] if " " in p]
        proto = ", ".join(protocols[:3]) + (f" +{len(protocols) - 3}"
                                            if len(protocols) > 3 else "")
        rows.append((d["mac"], vendor, d["class"] + (" (router)" if d["router"] else ""),
                     f"{d['confidence']:.2f}", (d["names"] or ["-"])[0][:20], _ips(d) or "-",
                     proto or "-", _when(d["first_seen"]), _when(d["last_seen"]),
                     _bytes(d["bytes_sent"] + d["bytes_received"])))
    cells = [tuple(shown(c) for c in r) for r in [head, *rows]]   # names come from the wire
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in cells)


CSV_FIELDS = ("mac", "vendor", "randomized_mac", "class", "confidence", "names", "ips", "vlan",
              "router", "protocols", "first_seen", "last_seen", "packets_sent", "bytes_sent",
              "packets_received", "bytes_received", "class_reasons")


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
                   first_seen=_iso(d["first_seen"]), last_seen=_iso(d["last_seen"]))
        writer.writerow([csv_cell(row[f]) for f in CSV_FIELDS])
    return out.getvalue()


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
    lines.append("evidence")
    for e in d["evidence"]:
        lines.append(f"  {e['key']:<22} {e['value'][:60]:<60}  {e['source']}, "
                     f"{_when(e['first_seen'])}, x{e['count']}")
    return "\n".join(shown(line) for line in lines)
