"""`wardtap devices`: the device inventory from the store, for people, programs and the CMDB."""

from __future__ import annotations

import argparse
import json
import os
import sys

from appliance.cli import args as checked
from appliance.errors import WardtapError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", default=os.environ.get("WARDTAP_DB", "wardtap.db"),
                   help="the store (default $WARDTAP_DB or ./wardtap.db)")
    form = p.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="every field, evidence included")
    form.add_argument("--csv", action="store_true", help="one row per device")
    form.add_argument("--fhir", action="store_true",
                      help="a FHIR R4 Bundle of Device resources (for the CMDB)")
    p.add_argument("--wide", action="store_true", help="the table at full width")
    p.add_argument("--class", dest="cls", metavar="CLASS", type=checked.device_class,
                   help="only devices of this class")
    p.add_argument("--why", metavar="MAC", type=checked.mac,
                   help="the evidence and rules behind one device (a MAC in any form)")


def run(args: argparse.Namespace) -> int:
    from appliance.inventory.persist import inventory_list
    from appliance.inventory.render import render_csv, render_table, render_why
    from appliance.outputs.history import open_store

    with open_store(args.db):        # one clear line for a missing, foreign or old store
        pass
    from appliance.outputs.store import Store

    with Store(args.db) as store:
        devices = inventory_list(store)
        seen = store.db.table("devices").count
    if not devices:
        why = (f"{args.db} has {seen} devices but no inventory: identify them with "
               "`wardtap replay --dissect --db` or the daemon's `run --dissect`"
               if seen else f"{args.db} has no devices yet")
        raise WardtapError(why)
    if args.cls:
        devices = [d for d in devices if d["class"] == args.cls]
        if not devices:
            raise WardtapError(f"no device of class {args.cls!r} in {args.db}")
    if args.why:
        chosen = [d for d in devices if d["mac"] == args.why]
        if not chosen:
            raise WardtapError(f"{args.why}: not in the inventory of {args.db}")
        print(json.dumps(chosen[0], indent=2) if args.json else render_why(chosen[0]))
        return 0
    if args.json:
        print(json.dumps(devices, indent=2))
    elif args.csv:
        sys.stdout.write(render_csv(devices))
    elif args.fhir:
        from appliance.inventory.fhir import bundle

        print(json.dumps(bundle(devices), indent=2))
    else:
        print(render_table(devices, wide=args.wide))
    return 0
