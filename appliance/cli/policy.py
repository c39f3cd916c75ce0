"""`wardtap policy check | diff | test | import-mud | drift`: the policy command line.

Every action prints text, or one JSON object with --json; exit 0, or 2 with one error line.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from appliance.cli import args as checked
from appliance.common.text import shown
from appliance.review.diff import diff_policies, render_diff
from appliance.review.drift import drift, render_drift
from appliance.review.simulate import render_test, would_block

if TYPE_CHECKING:
    from appliance.review.baseline import Baseline


def _add_device_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mac", action="append", default=[], type=checked.mac,
                   help="the device's MAC, in any form (repeatable)")
    p.add_argument("--oui", action="append", default=[], help="the device's OUI (repeatable)")
    p.add_argument("--ip", action="append", default=[], help="the device's address or block")
    p.add_argument("--vlan", action="append", default=[], help="the device's VLAN")
    p.add_argument("--fill", action="append", default=[], metavar="NAME=ADDR[,ADDR]",
                   help="addresses for a group (a DNS name, a controller...)")
    p.add_argument("--config", metavar="WARDTAP.TOML", type=checked.input_file,
                   help="the appliance configuration: my-controller from [mud.controllers]")


def _add_db_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", metavar="STORE", type=checked.input_file,
                   help="resolve class, role and maker groups from this store's inventory "
                        "(as the appliance does at load)")
    p.add_argument("--config", metavar="WARDTAP.TOML", type=checked.input_file,
                   help="resolve mud_controller groups from its [mud.controllers]")


def _load(path: str, db: str | None, config: str | None = None) -> Any:
    from appliance.policy.model import load_policy

    if db is None and config is None:
        return load_policy(path)
    from appliance.daemon.policyload import policy_members

    return load_policy(path, classes=policy_members(db, config))


def add_actions(sub: Any) -> None:
    """Add diff, test, import-mud and drift to `wardtap policy`'s subparsers."""
    p = sub.add_parser("diff", help="what a policy change allows and denies")
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("test", help="replay captures: what would the policy block")
    p.add_argument("file")
    p.add_argument("captures", nargs="+", metavar="CAPTURE")
    p.add_argument("--json", action="store_true")
    _add_db_option(p)
    p = sub.add_parser("import-mud", help="an RFC 8520 MUD file as a policy")
    p.add_argument("file", metavar="FILE.json")
    p.add_argument("-o", "--output", metavar="POLICY", type=checked.output_file,
                   help="default: standard output")
    p.add_argument("--name", help="the policy's name")
    _add_device_options(p)
    p = sub.add_parser("drift", help="devices' baselines against a policy or MUD file")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--policy", metavar="FILE", type=checked.input_file)
    src.add_argument("--mud", metavar="FILE", type=checked.input_file)
    p.add_argument("captures", nargs="+", metavar="CAPTURE")
    p.add_argument("--json", action="store_true")
    _add_device_options(p)


def _emit(data: dict[str, Any], as_json: bool, render: Callable[[dict[str, Any]], str]) -> int:
    print(json.dumps(data, indent=2, default=str) if as_json else
          "\n".join(shown(line) for line in render(data).splitlines()))
    return 0


def _run_diff(args: argparse.Namespace) -> int:
    from appliance.policy.model import load_policy

    old, new = load_policy(args.old), load_policy(args.new)
    return _emit(diff_policies(old, new), args.json, render_diff)


def _run_test(args: argparse.Namespace) -> int:
    from appliance.policy.model import compile_policy

    policy = _load(args.file, args.db, args.config)
    compile_policy(policy)
    return _emit(would_block(policy, args.captures), args.json, render_test)


def _mud_policy(args: argparse.Namespace, profile: Any, baseline: Baseline | None = None
                ) -> tuple[str, list[str], list[str], str]:
    """(policy text, warnings, rules left out, device group) from --mud/FILE and the
    device options; with a baseline and no device options, every device seen is the MUD's
    device."""
    from appliance.policy.muddraft import device_selectors, mud_draft, parse_fills
    from appliance.policy.writer import render

    device = device_selectors(args.mac, args.oui, args.ip, args.vlan)
    fills = parse_fills(args.fill)
    if baseline is not None and device.empty:
        from appliance.review.baseline import View

        device.mac = sorted(k[1] for k in View(baseline).entities if k[0] == "mac")
    controllers: dict[str, list[str]] = {}
    devices: dict[str, list[str]] = {}
    if args.config:
        from appliance.system.config import load_config

        config = load_config(args.config)
        controllers, devices = config.mud_controllers, config.mud_devices
    draft = mud_draft(profile, device, fills, getattr(args, "name", None), controllers,
                      devices)
    placeholders = {g.name for g in draft.groups if g.placeholder}
    left_out = []
    for r in draft.rules:
        missing = sorted(placeholders & set(r.sources + r.destinations))
        if missing:
            left_out.append(f"rule {r.name} names placeholder group {', '.join(missing)} "
                            f"(fill it in with --fill NAME=ADDRESS): {r.comments[0]}")
    return render(draft), profile.warnings, left_out, profile.device_name


def _run_import_mud(args: argparse.Namespace) -> int:
    from appliance.policy.model import compile_policy, parse_policy
    from appliance.policy.mud import load_mud
    from appliance.policy.writer import write_text

    text, warnings, left_out, _ = _mud_policy(args, load_mud(args.file))
    compile_policy(parse_policy(text, args.output or "<import>"))
    for w in warnings:
        print(shown(f"wardtap: warning: {w}"), file=sys.stderr)
    write_text(args.output, text)
    if args.output:
        notes = ([f"{len(left_out)} rules commented out until placeholders are filled in"]
                 if left_out else []) + ([f"{len(warnings)} warnings"] if warnings else [])
        print(f"{args.file}: imported -> {args.output}"
              + (f" ({', '.join(notes)})" if notes else ""))
    return 0


def _payload_dissection(policy: Any) -> Any:
    """Deep dissection (tshark) when the policy names DNS names or clinical conditions: drift
    then checks what the first payloads said (docs/learn.md). None without tshark."""
    import shutil

    if not (any(g.names for g in policy.groups.values())
            or any(r.hl7 or r.dicom for r in policy.rules)) or shutil.which("tshark") is None:
        return None
    from appliance.inventory.dissector import REVIEW_SAMPLING, DissectConfig

    return DissectConfig(tshark="tshark", block=True, sampling=dict(REVIEW_SAMPLING))


def _run_drift(args: argparse.Namespace) -> int:
    from appliance.policy.model import compile_policy, load_policy, parse_policy
    from appliance.review.baseline import learn

    if args.policy and (args.mac or args.oui or args.ip or args.vlan or args.fill
                        or args.config):
        from appliance.errors import WardtapError

        raise WardtapError("--mac/--oui/--ip/--vlan/--fill/--config go with --mud, not "
                           "--policy")
    if args.policy:
        policy = load_policy(args.policy)
        compile_policy(policy)
        baseline = learn(args.captures, dissect=_payload_dissection(policy))
        left_out: list[str] = []
        only = None
    else:
        from appliance.policy.mud import load_mud

        profile = load_mud(args.mud)      # a broken MUD file fails before any replay
        baseline = learn(args.captures)
        text, warnings, left_out, only = _mud_policy(args, profile, baseline)
        for w in warnings:
            print(shown(f"wardtap: warning: {w}"), file=sys.stderr)
        from appliance.daemon.policyload import policy_members

        policy = parse_policy(text, args.mud, policy_members(None, args.config))
    return _emit(drift(policy, baseline, left_out, only), args.json, render_drift)


_ACTIONS: dict[str, Callable[[argparse.Namespace], int]] = {
    "diff": _run_diff, "test": _run_test, "import-mud": _run_import_mud, "drift": _run_drift,
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    check = sub.add_parser("check", help="validate a policy file, and warn about rules that "
                           "allow more than they seem to")
    check.add_argument("file")
    check.add_argument("--strict", action="store_true",
                       help="exit 2 when there is any warning")
    _add_db_option(check)
    add_actions(sub)


def run(args: argparse.Namespace) -> int:
    from appliance.policy.model import compile_policy

    action = _ACTIONS.get(args.policy_command)
    if action is not None:
        return action(args)

    from appliance.errors import PolicyError
    from appliance.policy.lint import lint

    policy = _load(args.file, args.db, args.config)
    compile_policy(policy)
    findings = lint(policy)
    for finding in findings:
        print(shown(f"wardtap: warning: {finding.text(args.file)}"), file=sys.stderr)
    if findings and args.strict:
        raise PolicyError(args.file, f"{len(findings)} warning(s) and --strict")
    warned = f", {len(findings)} warning(s)" if findings else ""
    print(shown(f"{args.file}: ok: policy {policy.name!r} v{policy.version}, "
                f"{len(policy.groups)} groups, {len(policy.rules)} rules{warned}"))
    return 0



