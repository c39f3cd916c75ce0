"""`wardtap run | status | top | mode | reload | propose`: the daemon and its control socket."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from appliance.common.text import shown


def add_run(p: argparse.ArgumentParser) -> None:
    from appliance.cli.args import input_file

    p.add_argument("--config", required=True, type=input_file,
                   help="daemon configuration (TOML; conf/wardtap.toml is a sample)")
    p.add_argument("--check", action="store_true",
                   help="check the configuration, policy, files, datapath and broker, start "
                        "nothing (exit 0 when it would start)")
    p.add_argument("--provision", metavar="FILE", type=input_file,
                   help="with --check: also check a first-boot provisioning file")
    p.add_argument("--leds", action="store_true",
                   help="print the LED states as they change (the default on a terminal)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--dissect", action="store_true",
                   help="identify devices (tshark on sampled packets) into the inventory")
    p.add_argument("--tshark", default="tshark", help="tshark to use with --dissect")


def run_daemon(args: argparse.Namespace) -> int:
    import logging

    from appliance.daemon.service import Daemon
    from appliance.system.config import load_config

    if args.check:
        from appliance.daemon.preflight import check

        report = check(load_config(args.config), args.provision)
        print(report.render())
        verdict = f"{report.errors} errors, {report.warnings} warnings"
        if report.errors:
            print(f"wardtap: error: {args.config}: {verdict}: it would not start",
                  file=sys.stderr)
            return 2
        print(f"{verdict}: ready to start")
        return 0
    if args.provision:
        from appliance.errors import WardtapError

        raise WardtapError("--provision goes with --check")
    from appliance.common.text import SafeFormatter

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(SafeFormatter("%(asctime)s wardtap %(levelname)s %(message)s"))
    logging.basicConfig(level=args.log_level.upper(), handlers=[handler])
    dissect = None
    if args.dissect:
        from appliance.inventory.dissector import DissectConfig

        dissect = DissectConfig(tshark=args.tshark)
    daemon = Daemon(load_config(args.config), dissect=dissect)
    daemon.show_leds = sys.stderr.isatty() or args.leds
    return daemon.run()


def add_socket(p: argparse.ArgumentParser) -> None:
    from appliance.common.control import DEFAULT_CONTROL  # not the configuration's parser

    p.add_argument("--socket", default=os.environ.get("WARDTAP_CONTROL", DEFAULT_CONTROL),
                   help="the daemon's control socket")


def add_answer(p: argparse.ArgumentParser) -> None:
    """--json and --socket: commands that answer in words, or JSON for programs."""
    p.add_argument("--json", action="store_true", help="the daemon's answer as JSON")
    add_socket(p)


def add_reload(p: argparse.ArgumentParser) -> None:
    p.add_argument("--strict", action="store_true",
                   help="refuse the policy if `wardtap policy check` would warn about it")
    add_answer(p)


def add_mode(p: argparse.ArgumentParser) -> None:
    p.add_argument("mode", choices=["learn", "monitor", "enforce", "bypass"])
    add_answer(p)


def add_propose(p: argparse.ArgumentParser) -> None:
    from appliance.cli.args import output_file

    p.add_argument("-o", "--output", metavar="FILE", type=output_file,
                   help="write the proposed policy here (default: the daemon's [learn] "
                        "output, or standard output when it has none)")
    add_answer(p)


MODE_MEANS = {
    "learn": "nothing is blocked; the appliance learns what each device does",
    "monitor": "nothing is blocked; every violation of the policy is reported",
    "enforce": "what the policy does not allow is dropped",
    "bypass": "all traffic passes untouched and uninspected",
}


def _ask(args: argparse.Namespace, body: dict[str, Any]) -> dict[str, Any]:
    from appliance.common.control import SLOW_ANSWER_TIMEOUT, request

    # Policy work (reload, propose) runs on the daemon's worker thread and may take a while.
    slow = body["cmd"] in ("reload", "propose")
    return request(args.socket, body, timeout=SLOW_ANSWER_TIMEOUT + 5 if slow else 5.0)


def _json(answer: dict[str, Any]) -> int:
    print(json.dumps(answer, indent=2))
    return 0 if answer.get("ok") else 1


def _refused(what: str, answer: dict[str, Any]) -> int:
    error = answer.get("error")
    if error == "busy":
        error = "busy: its main loop did not answer in time (a hung datapath?); see its log"
    print(f"wardtap: {what}: {error}", file=sys.stderr)
    return 1


def run_mode(args: argparse.Namespace) -> int:
    answer = _ask(args, {"cmd": "mode", "mode": args.mode})
    if args.json:
        return _json(answer)
    if not answer.get("ok"):
        return _refused(f"mode not changed to {args.mode}", answer)
    previous = answer.get("previous")
    was = f" (was {previous})" if previous and previous != args.mode else " (unchanged)"
    print(f"mode {answer.get('mode')}{was}: {MODE_MEANS.get(args.mode, '')}")
    return 0


def run_reload(args: argparse.Namespace) -> int:
    answer = _ask(args, {"cmd": "reload", **({"strict": True} if args.strict else {})})
    if args.json:
        return _json(answer)
    if not answer.get("ok"):
        return _refused("policy not reloaded, the running one stays", answer)
    p = answer.get("policy") or {}
    changed = answer.get("flows_changed", 0)
    print(f"policy {p.get('name')} v{p.get('version')} loaded (sha256 "
          f"{str(p.get('sha256'))[:12]}, generation {p.get('generation')}): "
          f"{changed} running flow{'s' if changed != 1 else ''} changed verdict")
    for warning in answer.get("warnings") or []:
        print(shown(f"  warning: {warning}"))
    return 0


def run_propose(args: argparse.Namespace) -> int:
    from appliance.policy.writer import write_text

    answer = _ask(args, {"cmd": "propose", "text": bool(args.output)})
    answer.pop("current", None)                 # the running policy: for the fleet console
    if answer.get("path"):
        answer.pop("policy", None)              # the daemon wrote it to the file in "path"
    if args.json:
        return _json(answer)
    if not answer.get("ok"):
        return _refused("no policy proposed", answer)
    path = answer.get("path") or args.output
    text = answer.get("policy")
    if text is not None:
        write_text(args.output, text)          # -o FILE, or standard output
    reasons = answer.get("left_out_reasons") or {}
    left = answer.get("left_out", 0)
    what = (f"{answer.get('rules', '?')} rules, {answer.get('groups', '?')} groups from "
            f"{answer.get('conversations', 0):,} conversations"
            + (f"; {left} rules left out for review (" + ", ".join(
                f"{k} {n}" for k, n in reasons.items()) + ")" if left else ""))
    where = path or "standard output"
    print(f"proposed policy written to {where}: {what}; review it (docs/learn.md), then "
          f"`wardtap policy test {path or 'POLICY'} CAPTURE...`",
          file=sys.stderr if where == "standard output" else sys.stdout)
    return 0


def add_status(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true",
                   help="one JSON object with stable keys (docs/console.md)")
    add_socket(p)


def run_status(args: argparse.Namespace) -> int:
    from appliance.panel.status import run_status

    def draw(v: dict[str, Any]) -> None:
        from appliance.panel.statustext import print_status  # plain text: no rich to import

        print_status(v)
    return run_status(args.socket, args.json, draw)


def add_top(p: argparse.ArgumentParser) -> None:
    p.add_argument("--once", action="store_true",
                   help="print one frame at the terminal's size and exit (scripts, tests)")
    add_socket(p)


def run_top(args: argparse.Namespace) -> int:
    from appliance.panel import console

    return console.run_top(args.socket, once=args.once)


