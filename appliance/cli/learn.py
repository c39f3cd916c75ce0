"""`wardtap learn`: replay captures in learn mode, propose a policy, write it for review."""

from __future__ import annotations

import argparse
import json
import shutil
import sys

from appliance.cli import args as checked
from appliance.errors import WardtapError
from appliance.policy.writer import render, write_text
from appliance.review.baseline import learn
from appliance.review.caution import TITLES, assess
from appliance.review.propose import check_allows, port_tokens, propose


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("captures", nargs="+", metavar="CAPTURE", type=checked.input_file,
                   help="pcap or pcapng files")
    p.add_argument("-o", "--output", metavar="POLICY", type=checked.output_file,
                   help="write the proposed policy here (default: standard output)")
    p.add_argument("--name", default="learned", help="the policy's name (default: learned)")
    p.add_argument("--baseline", metavar="FILE", type=checked.output_file,
                   help="also write each device's baseline as JSON")
    p.add_argument("--json", action="store_true",
                   help="print the baseline as JSON instead of a summary (needs -o)")
    p.add_argument("--strict", action="store_true",
                   help="write nothing if the proposal has lint warnings")
    p.add_argument("--flows", type=checked.flows, default=65536, help="flow table slots")
    p.add_argument("--devices", type=checked.devices, default=4096, help="device table slots")
    p.add_argument("--no-dissect", action="store_true",
                   help="identify devices by MAC vendor and ports only, without tshark "
                        "(more is left out for review)")
    p.add_argument("--tshark", default="tshark", help="tshark for device identification")
    p.add_argument("--allow-flagged", action="store_true",
                   help="allow what review would leave out (internet addresses, unknown "
                        "devices, scans...), each rule still marked REVIEW with its reasons; "
                        "for captures you trust")
    p.add_argument("--db", metavar="STORE", type=checked.store_file,
                   help="also use the device inventory in this store (wardtap replay "
                        "--dissect --db, or the appliance's)")


def run(args: argparse.Namespace) -> int:
    if not args.name or len(args.name) > 64:
        raise WardtapError("--name must be 1-64 characters")
    if args.json and not args.output:
        raise WardtapError("--json prints the baseline; give -o for the policy")
    dissect = None
    warnings = []
    if not args.no_dissect:
        if shutil.which(args.tshark) is None:
            warnings.append(f"{args.tshark} not found: devices identified by MAC vendor and "
                            "ports only, so more is left out for review (install tshark, or "
                            "--no-dissect to say you mean it)")
        else:
            from appliance.inventory.dissector import REVIEW_SAMPLING, DissectConfig

            dissect = DissectConfig(tshark=args.tshark, block=True,
                                    sampling=dict(REVIEW_SAMPLING))
    known = []
    if args.db:
        from appliance.inventory.persist import inventory_list
        from appliance.outputs.store import Store

        with Store(args.db) as store:
            known = inventory_list(store)
    baseline = learn(args.captures, args.flows, args.devices, dissect, known)
    if not baseline.conversations:
        raise WardtapError(f"{', '.join(args.captures)}: no IP flows seen: nothing to learn")
    view = baseline.view()
    caution = assess(view, port_tokens(view), baseline.identities(), baseline.span())
    caution.leave_out = not args.allow_flagged
    draft = propose(baseline, args.name, args.captures, view, caution)
    text = render(draft)
    check_allows(text, baseline, args.output or "<proposal>", caution, view)
    _lint(text, args.output or "<proposal>", args.strict)
    baseline_json = ""
    if args.baseline or args.json:
        baseline_json = json.dumps(baseline.as_dict(view), indent=2) + "\n"
    if args.baseline:
        write_text(args.baseline, baseline_json)
    write_text(args.output, text)
    if args.json:
        print(baseline_json, end="")
        return 0
    flows = sum(s.flows for s in baseline.conversations.values())
    active = [r for r in draft.rules if not r.disabled and r.enabled]
    left = [r for r in draft.rules if not r.enabled]
    review = sum(1 for r in draft.rules for c in r.comments if c.startswith("REVIEW"))
    where = args.output or "standard output"
    msg = (f"learned {len(view.entities)} endpoints, {flows:,} flows from "
           f"{len(args.captures)} capture(s): {len(draft.groups)} groups, {len(active)} rules "
           f"-> {where}" + (f" ({review} marked REVIEW)" if review else ""))
    counts = caution.counts()
    if counts and args.allow_flagged:
        msg += ("\nallowed on request (--allow-flagged), marked REVIEW: "
                + ", ".join(f"{TITLES[k]}: {n}" for k, n in counts.most_common()))
    if left:
        msg += (f"\nleft out for review: {len(left)} rules with `enabled = false` ("
                + ", ".join(f"{TITLES[k]}: {n} conversation{'s' if n != 1 else ''}"
                            for k, n in counts.most_common())
                + "); each says why")
    msg += f"\ndevices identified by {baseline.identified_by}"
    for k, v in sorted(baseline.counters.items()):
        msg += f"\nwarning: {k.replace('_', ' ')}: {v:,}"
    for w in warnings:
        msg += f"\nwarning: {w}"
    msg += ("\nnext: review it, then `wardtap policy test POLICY CAPTURE...` and "
            "`wardtap policy diff OLD NEW`")
    print(msg, file=sys.stderr if args.output is None else sys.stdout)
    return 0


def _lint(text: str, where: str, strict: bool) -> None:
    """The proposal's lint warnings on standard error; with --strict, refuse it."""
    from appliance.common.text import shown
    from appliance.policy.lint import lint
    from appliance.policy.model import parse_policy

    findings = lint(parse_policy(text, where))
    for finding in findings:
        print(shown(f"wardtap: warning: {finding.text(where)}"), file=sys.stderr)
    if findings and strict:
        raise WardtapError(f"{where}: {len(findings)} lint warning(s) and --strict: nothing "
                           "written")
