"""`wardtap inline status | remove | bypass`: the inline datapath's netfilter rules, without
a daemon (docs/datapaths.md, docs/runbook.md).

status says what the kernel holds (the WARDTAP chains, their state, counters, whether a
classifier listens on the queue); remove deletes them (plain bridging: nothing inspected,
nothing blocked); bypass keeps the hook but forwards everything (`install` is instant).
"""

from __future__ import annotations

import argparse
import json

from appliance.cli import args as checked

MEANING = {
    "enforce": "enforcing: new flows go to the classifier on the queue",
    "failopen": "failing open: the watchdog saw a silent classifier, new flows pass",
    "bypass": "bypass: everything is forwarded, nothing inspected",
    "absent": "no wardtap rules: the bridge forwards plainly",
    "unhooked": "wardtap chains exist but are not hooked into forwarding: nothing inspected",
    "inconsistent": "IPv4 and IPv6 rules differ: run `wardtap inline remove`, then restart",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["status", "remove", "bypass"])
    p.add_argument("--bridge", default="br0", help="the inline bridge (default br0)")
    p.add_argument("--queue", type=checked.count(0, 65535, "NFQUEUE number"), default=0)
    p.add_argument("--json", action="store_true", help="status as JSON")


def run(args: argparse.Namespace) -> int:
    from appliance.sources.netfilter import InlineRules

    rules = InlineRules(args.bridge, args.queue)
    if args.action == "remove":
        rules.remove()
        print(f"wardtap rules removed from {args.bridge}: the bridge forwards plainly, "
              "nothing is inspected or blocked")
        return 0
    if args.action == "bypass":
        rules.bypass()
        print(f"{args.bridge}: bypass: everything is forwarded, nothing inspected "
              "(the daemon's `wardtap mode enforce` returns to enforcing)")
        return 0
    status = rules.status()
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    state = status["state"]
    if all(f["state"] == "absent" and not f["hooked"] for f in status["families"].values()):
        state = "absent"
    print(f"{args.bridge}: {MEANING.get(state, state)}")
    listener = status.get("listener")
    print(f"queue {args.queue}: " + ("a classifier is listening" if listener else
                                     "nobody listening (new flows pass: --queue-bypass)"))
    for family, info in status["families"].items():
        counts = ", ".join(f"{k} {v:,}" for k, v in sorted(info["packets"].items())) or "-"
        print(f"{family}: {'hooked' if info['hooked'] else 'not hooked'}, state "
              f"{info['state']}, packets {counts}")
    ct = status.get("conntrack") or {}
    if ct.get("count") is not None:
        print(f"conntrack: {ct['count']:,} of {ct['max']:,} entries")
    return 0
