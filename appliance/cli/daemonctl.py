"""`wardtap run | status | top | mode | reload | propose`: the daemon and its control socket."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any


def add_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="daemon configuration (TOML)")
    p.add_argument("--leds", action="store_true",
                   help="print the LED states as they change (the default on a terminal)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--dissect", action="store_true",
                   help="identify devices (tshark on sampled packets) into the inventory")
    p.add_argument("--tshark", default="tshark", help="tshark to use with --dissect")


def run_daemon(args: argparse.Namespace) -> int:
    import logging

    from appliance.common.text import SafeFormatter
    from appliance.daemon.service import Daemon
    from appliance.system.config import load_config

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
    from appliance.system.config import DEFAULT_CONTROL

    p.add_argument("--socket", default=os.environ.get("WARDTAP_CONTROL", DEFAULT_CONTROL),
                   help="the daemon's control socket")


def add_mode(p: argparse.ArgumentParser) -> None:
    p.add_argument("mode", choices=["learn", "monitor", "enforce", "bypass"])
    add_socket(p)


def _control(socket_path: str, body: dict[str, Any], timeout: float = 5.0) -> int:
    from appliance.common.control import request

    answer = request(socket_path, body, timeout=timeout)
    print(json.dumps(answer, indent=2))
    return 0 if answer.get("ok") else 1


def run_mode(args: argparse.Namespace) -> int:
    return _control(args.socket, {"cmd": "mode", "mode": args.mode})


def add_reload(p: argparse.ArgumentParser) -> None:
    p.add_argument("--strict", action="store_true",
                   help="refuse the policy if `wardtap policy check` would warn about it")
    add_socket(p)


def run_reload(args: argparse.Namespace) -> int:
    from appliance.common.control import SLOW_ANSWER_TIMEOUT

    body = {"cmd": "reload", **({"strict": True} if args.strict else {})}
    return _control(args.socket, body, timeout=SLOW_ANSWER_TIMEOUT + 5)


def run_propose(args: argparse.Namespace) -> int:
    from appliance.common.control import SLOW_ANSWER_TIMEOUT

    return _control(args.socket, {"cmd": "propose"}, timeout=SLOW_ANSWER_TIMEOUT + 5)


def add_status(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true",
                   help="one JSON object with stable keys (docs/console.md)")
    add_socket(p)


def run_status(args: argparse.Namespace) -> int:
    from appliance.panel import console

    return console.run_status(args.socket, args.json)


def add_top(p: argparse.ArgumentParser) -> None:
    p.add_argument("--once", action="store_true",
                   help="print one frame at the terminal's size and exit (scripts, tests)")
    add_socket(p)


def run_top(args: argparse.Namespace) -> int:
    from appliance.panel import console

    return console.run_top(args.socket, once=args.once)


