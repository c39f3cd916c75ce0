"""`wardtap advisories`: import CSAF 2.0 security advisories into the store and list them;
every device of the stored inventory is matched again at once (and by a running daemon at
its next snapshot)."""

from __future__ import annotations

import argparse
import json
import os

from appliance.errors import WardtapError


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    imp = sub.add_parser("import", help="read CSAF 2.0 files (CISA ICSMA, vendors' PSIRTs)")
    imp.add_argument("files", nargs="+", metavar="FILE")
    lst = sub.add_parser("list", help="the stored advisories and the devices they match")
    lst.add_argument("--json", action="store_true")
    for q in (imp, lst):
        q.add_argument("--db", default=os.environ.get("WARDTAP_DB", "wardtap.db"),
                       help="the store (default $WARDTAP_DB or ./wardtap.db)")


def run(args: argparse.Namespace) -> int:
    from appliance.inventory.advisories import load_file
    from appliance.inventory.devices import Inventory
    from appliance.inventory.persist import (
        import_advisory,
        load_advisories,
        load_inventory,
        save_inventory,
        stored_advisories,
    )
    from appliance.outputs.store import Store

    if args.action == "import":
        loaded = [(path, *load_file(path)) for path in args.files]   # all read before any
        with Store(args.db) as store:                                 # is stored
            new = [adv.id for path, adv, text in loaded
                   if import_advisory(store, adv, text, os.path.basename(path))]
            inventory = Inventory()
            load_inventory(inventory, store)
            load_advisories(inventory, store)
            events = inventory.classify()
            save_inventory(inventory, store, events)
        matches = [e for e in events if e["type"] == "advisory_match"]
        print(f"{len(new)} advisories imported ({len(loaded) - len(new)} already stored), "
              f"{len(matches)} new device matches")
        for e in matches:
            print(f"  {e['mac']}  {e['advisory']}  {e['status']}  ({e['product']})")
        return 0
    if not os.path.exists(args.db):
        raise WardtapError(f"{args.db}: no such store")
    from appliance.inventory.persist import inventory_list

    with Store(args.db) as store:
        advisories = stored_advisories(store)
        devices = inventory_list(store)
    by_id: dict[str, list[str]] = {}
    for d in devices:
        for a in d.get("advisories") or []:
            by_id.setdefault(a["id"], []).append(f"{d['mac']} ({a['status']})")
    rows = [dict(a.summary(), devices=by_id.get(a.id, [])) for a in advisories]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        print(f"{r['id']:<18} {r['released'][:10]}  {r['title'][:60]}")
        for dev in r["devices"]:
            print(f"    matches {dev}")
    return 0
