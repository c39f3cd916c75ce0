"""`wardtap devices`: the device inventory from the store."""

from __future__ import annotations

import argparse
import json
import os
import sys

from appliance.errors import WardtapError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", default=os.environ.get("WARDTAP_DB", "wardtap.db"),
                   help="the store (default $WARDTAP_DB or ./wardtap.db)")
    form = p.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="every field, evidence included")
    form.add_argument("--csv", action="store_true", help="one row per device")
    p.add_argument("--class", dest="cls", metavar="CLASS", help="only devices of this class")
    p.add_argument("--why", metavar="MAC", help="the evidence and rules behind one device")


def run(args: argparse.Namespace) -> int:
    from appliance.inventory.persist import inventory_list
    from appliance.inventory.render import render_csv, render_table, render_why

    if not os.path.exists(args.db):
        raise WardtapError(f"{args.db}: no such store (give --db, or run with --dissect first)")
    from appliance.outputs.store import Store

    with Store(args.db) as store:
        devices = inventory_list(store)
    if args.cls:
        devices = [d for d in devices if d["class"] == args.cls]
    if args.why:
        chosen = [d for d in devices if d["mac"] == args.why.lower()]
        if not chosen:
            raise WardtapError(f"{args.why}: not in the inventory")
        print(json.dumps(chosen[0], indent=2) if args.json else render_why(chosen[0]))
        return 0
    if args.json:
        print(json.dumps(devices, indent=2))
    elif args.csv:
        sys.stdout.write(render_csv(devices))
    else:
        print(render_table(devices))
    return 0


