"""`wardtap events | violations | flows`: what the store holds, read back and filtered.

Tables fit the terminal (--wide: every column); --json and --csv for programs. Times are
local, with the zone in the header; they are the packets' own times (a replayed capture's
times for `wardtap replay --db`).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import textwrap
from collections.abc import Callable
from typing import Any

from appliance.cli import args as checked
from appliance.common.table import Column, render, terminal_width
from appliance.common.when import iso_local, local, zone_name
from appliance.outputs.history import EVENT_TYPES, Filters, open_store, service

DEFAULT_LIMIT = 200


def _device(text: str) -> str:
    """A MAC in any form, or an IP address."""
    import ipaddress

    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        pass
    try:
        return checked.mac(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a MAC address (dc:a6:32:7e:5b:19) nor an IP address"
        ) from None


def _common(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--db", default=os.environ.get("WARDTAP_DB", "wardtap.db"),
                   help="the store (default $WARDTAP_DB or ./wardtap.db)")
    p.add_argument("--since", type=checked.time_point, metavar="TIME",
                   help="from this time: 2024-11-28T10:00 (local time unless it ends in Z "
                        "or +01:00), or an age: 15m, 2h, 3d (before now)")
    p.add_argument("--until", type=checked.time_point, metavar="TIME", help="up to this time")
    p.add_argument("--device", type=_device, metavar="MAC|IP",
                   help="only this device (a MAC in any form, or an address)")
    p.add_argument("--limit", type=checked.count(0, 10**9), default=DEFAULT_LIMIT,
                   help=f"the most recent N {what} (default {DEFAULT_LIMIT}; 0: all)")
    checked.add_output_format(p, csv=True)


def _reasons() -> list[str]:
    from fastpath import MALFORMED_FIRST, REASON_NAMES

    return [n for c, n in REASON_NAMES.items() if 1 < c < MALFORMED_FIRST]


def add_violations(p: argparse.ArgumentParser) -> None:
    _common(p, "violations")
    p.add_argument("--rule", help="only violations whose nearest rule is this one")
    p.add_argument("--reason", type=checked.choice_text(_reasons(), "reason"),
                   help=f"only this reason ({', '.join(_reasons())})")


def add_flows(p: argparse.ArgumentParser) -> None:
    _common(p, "flows")
    p.add_argument("--rule", help="only flows this rule decided")
    p.add_argument("--verdict", type=checked.choice_text(["allow", "deny", "monitor"],
                                                         "verdict"),
                   help="only flows with this verdict (allow, deny, monitor)")


def add_events(p: argparse.ArgumentParser) -> None:
    _common(p, "events")
    p.add_argument("--type", dest="types", action="append", default=[],
                   type=checked.choice_text(list(EVENT_TYPES), "event type"),
                   help=f"only this type (repeatable): {', '.join(EVENT_TYPES)}")
    p.add_argument("--rule", help="only violations whose nearest rule is this one")
    p.add_argument("--reason", type=checked.choice_text(_reasons(), "reason"),
                   help="only violations with this reason")


def _filters(args: argparse.Namespace) -> Filters:
    from appliance.errors import WardtapError

    if args.since is not None and args.until is not None and args.since > args.until:
        raise WardtapError(f"--since ({local(args.since)}) is after --until "
                           f"({local(args.until)})")
    return Filters(args.since, args.until, args.device, getattr(args, "rule", None),
                   getattr(args, "reason", None), getattr(args, "types", []),
                   getattr(args, "verdict", None), args.limit)


def _emit(args: argparse.Namespace, rows: list[dict[str, Any]], fields: list[str],
          times: list[str], columns: tuple[Column, ...],
          cells: Callable[[dict[str, Any]], tuple[Any, ...]], what: str,
          clocks: str = "the packets' own") -> int:
    if args.json:
        print(json.dumps([{**r, **{f"{t}_iso": iso_local(r.get(t)) for t in times}}
                          for r in rows], indent=2, default=str))
        return 0
    if args.csv:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(fields)
        for r in rows:
            writer.writerow([iso_local(r.get(f)) if f in times else
                             (json.dumps(r[f], default=str) if isinstance(r.get(f), dict)
                              else r.get(f)) for f in fields])
        sys.stdout.write(out.getvalue())
        return 0
    if not rows:
        print(f"no {what} in {args.db}" + (" matching the filters" if _filtered(args) else ""))
        return 0
    print(render(columns, [cells(r) for r in rows], wide=args.wide))
    more = " (--limit shows more)" if args.limit and len(rows) == args.limit else ""
    noun = what if len(rows) != 1 else what[:-1]
    print(textwrap.fill(f"{len(rows):,} {noun}{more}; times are local ({zone_name()}), "
                        f"{clocks}", width=max(40, terminal_width())))
    return 0


def _filtered(args: argparse.Namespace) -> bool:
    return any(getattr(args, k, None) for k in ("since", "until", "device", "rule", "reason",
                                                "types", "verdict"))


def _when(ts: float | None) -> str:
    return local(ts, zone=False)


def run_violations(args: argparse.Namespace) -> int:
    from appliance.outputs.history import violations

    with open_store(args.db) as conn:
        rows = violations(conn, _filters(args))
    columns = (Column(f"TIME ({zone_name()})"), Column("FROM", wrap=True, min_width=15),
               Column("TO", wrap=True, min_width=15), Column("SERVICE"), Column("REASON", 1),
               Column("DEVICE", 2, wrap=True, min_width=12), Column("VLAN", 4, align=">"),
               Column("NEAREST RULE", 3, wrap=True, min_width=12), Column("MAC", 5))
    return _emit(args, rows, ["ts", "src", "dst", "proto", "sport", "dport", "icmp_type",
                              "vlan", "reason", "nearest_rule", "smac", "dmac",
                              "device_class", "device_name"], ["ts"], columns,
                 lambda r: (_when(r["ts"]), r["src"], r["dst"], service(r), r["reason"],
                            " ".join(x for x in (r["device_name"], r["device_class"]) if x)
                            or "-", r["vlan"] or "-", r["nearest_rule"] or "-",
                            r["smac"] or "-"), "violations")


def run_flows(args: argparse.Namespace) -> int:
    from appliance.outputs.history import flows

    with open_store(args.db) as conn:
        rows = flows(conn, _filters(args))
    columns = (Column(f"LAST ({zone_name()})"), Column("FROM", wrap=True, min_width=15),
               Column("TO", wrap=True, min_width=15), Column("SERVICE"), Column("VERDICT"),
               Column("RULE", 2, wrap=True, min_width=12), Column("PACKETS", 3, align=">"),
               Column("BYTES", 4, align=">"), Column("END", 5), Column("FIRST", 6))
    return _emit(args, rows, ["first", "last", "src", "dst", "proto", "sport", "dport",
                              "icmp_type", "vlan", "packets", "bytes", "verdict", "rule",
                              "end"], ["first", "last"], columns,
                 lambda r: (_when(r["last"]), r["src"], r["dst"], service(r), r["verdict"],
                            r["rule"] or "-", f"{r['packets'] or 0:,}", f"{r['bytes'] or 0:,}",
                            r["end"] or "-", _when(r["first"])), "flows")


def run_events(args: argparse.Namespace) -> int:
    from appliance.outputs.history import events

    with open_store(args.db) as conn:
        rows = events(conn, _filters(args))
    columns = (Column(f"TIME ({zone_name()})"), Column("TYPE"),
               Column("WHAT", wrap=True, min_width=30), Column("DEVICE", 1))
    return _emit(args, rows, ["ts", "type", "device", "summary", "detail"], ["ts"], columns,
                 lambda r: (_when(r["ts"]), r["type"], r["summary"], r["device"] or "-"),
                 "events", "the packets' for violations and new devices, the appliance's "
                 "clock for classes, commands and runs")
