"""`wardtap learn`: replay captures in learn mode, propose a policy, write it for review."""

from __future__ import annotations

import argparse
import json
import sys

from appliance.errors import WardtapError
from appliance.policy.writer import render, write_text
from appliance.review.baseline import learn
from appliance.review.propose import check_allows, propose


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("captures", nargs="+", metavar="CAPTURE", help="pcap or pcapng files")
    p.add_argument("-o", "--output", metavar="POLICY",
                   help="write the proposed policy here (default: standard output)")
    p.add_argument("--name", default="learned", help="the policy's name (default: learned)")
    p.add_argument("--baseline", metavar="FILE",
                   help="also write each device's baseline as JSON")
    p.add_argument("--json", action="store_true",
                   help="print the baseline as JSON instead of a summary (needs -o)")
    p.add_argument("--flows", type=int, default=65536, help="flow table slots")
    p.add_argument("--devices", type=int, default=4096, help="device table slots")
    p.add_argument("--strict", action="store_true",
                   help="write nothing if the proposal has lint warnings")


def run(args: argparse.Namespace) -> int:
    if not args.name or len(args.name) > 64:
        raise WardtapError("--name must be 1-64 characters")
    if args.json and not args.output:
        raise WardtapError("--json prints the baseline; give -o for the policy")
    baseline = learn(args.captures, args.flows, args.devices)
    if not baseline.conversations:
        raise WardtapError(f"{', '.join(args.captures)}: no IP flows seen: nothing to learn")
    view = baseline.view()
    draft = propose(baseline, args.name, args.captures, view)
    text = render(draft)
    check_allows(text, baseline, args.output or "<proposal>")
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
    active = [r for r in draft.rules if not r.disabled]
    review = sum(1 for r in draft.rules for c in r.comments if "REVIEW" in c)
    where = args.output or "standard output"
    msg = (f"learned {len(view.entities)} endpoints, {flows:,} flows from "
           f"{len(args.captures)} capture(s): {len(draft.groups)} groups, {len(active)} rules "
           f"-> {where}" + (f" ({review} marked REVIEW)" if review else ""))
    for k, v in sorted(baseline.counters.items()):
        msg += f"\nwarning: {k.replace('_', ' ')}: {v:,}"
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
