"""The `wardtap` command line: one entry per command in COMMANDS.

Each entry names the module that implements the command and, in it, the function that adds
its arguments and the function that runs it. Only the command being run has its module
imported, so `wardtap status` does not pay for loading the learning or fleet code.

Imports: appliance.common, appliance.contract, appliance.daemon, appliance.fleet,
appliance.inventory, appliance.outputs, appliance.panel, appliance.policy, appliance.replay,
appliance.review, appliance.sources, appliance.system, fastpath, and demoward for `wardtap
demo` only (a missing demoward is said in one line). Nothing in the product imports it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import NamedTuple

# One BLAS thread: numpy is used for record arrays, never for linear algebra, and idle
# OpenBLAS threads spinning on a 4-core Pi steal time from the fast path.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from appliance import __version__  # noqa: E402
from appliance.cli.args import WardtapParser  # noqa: E402
from appliance.errors import WardtapError  # noqa: E402


class Command(NamedTuple):
    help: str
    module: str                      # under appliance.cli unless it contains a dot
    add: str = "add_arguments"
    run: str = "run"


COMMANDS: dict[str, Command] = {
    "replay": Command("classify capture files and summarise", "replay"),
    "devices": Command("the device inventory: vendor, class, names, addresses, evidence",
                       "devices"),
    "advisories": Command("security advisories (CSAF 2.0): import, list; matched against the "
                          "inventory", "advisories"),
    "demo": Command("generate the demo ward and replay it", "demo"),
    "policy": Command("allow-list policy tools", "policy"),
    "learn": Command("learn each device's baseline and propose an allow-list", "learn"),
    "run": Command("run the appliance daemon", "daemonctl", "add_run", "run_daemon"),
    "status": Command("show the running daemon's state", "daemonctl", "add_status",
                      "run_status"),
    "top": Command("live dashboard of the running daemon (q quits)", "daemonctl", "add_top",
                   "run_top"),
    "mode": Command("set the running daemon's mode", "daemonctl", "add_mode", "run_mode"),
    "reload": Command("reload the running daemon's policy", "daemonctl", "add_reload",
                      "run_reload"),
    "propose": Command("write the policy the daemon has learned so far", "daemonctl",
                       "add_propose", "run_propose"),
    "events": Command("the store's timeline: violations, new devices, commands, runs",
                      "history", "add_events", "run_events"),
    "violations": Command("violations in the store, filtered", "history", "add_violations",
                          "run_violations"),
    "flows": Command("flows in the store, filtered", "history", "add_flows", "run_flows"),
    "inline": Command("the inline datapath's netfilter rules: status, remove, bypass",
                      "inline"),
    "integrity": Command("SHA-256 manifests of installed files, configuration and policy: "
                         "write, verify, accept", "appliance.system.integrity"),
    "fleet": Command("fleet side over MQTT: list, watch, inventory, push-policy, command, "
                     "collect", "fleet", "add_fleet", "run_fleet"),
}


def _module(command: Command) -> object:
    name = command.module if "." in command.module else f"appliance.cli.{command.module}"
    return importlib.import_module(name)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; only the command being run gets its arguments (and their imports)."""
    words = sys.argv[1:] if argv is None else argv
    chosen = next((w for w in words if not w.startswith("-")), None)
    parser = WardtapParser(
        prog="wardtap", description="Ward network appliance: classify, inventory, enforce.")
    parser.add_argument("--version", action="version", version=f"wardtap {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        command_parser = sub.add_parser(name, help=command.help, description=command.help)
        if chosen is None or name == chosen:
            getattr(_module(command), command.add)(command_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser(argv).parse_args(argv)
    command = COMMANDS[args.command]
    try:
        return int(getattr(_module(command), command.run)(args))
    except WardtapError as exc:
        from appliance.common.text import shown

        print(shown(f"wardtap: error: {exc}"), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("wardtap: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # noqa: BLE001  (a sentence, not a traceback; tests look for it)
        if os.environ.get("WARDTAP_DEBUG"):
            raise
        print(f"wardtap: internal error: {type(exc).__name__}: {exc} (a bug: please report "
              "it with the command line; WARDTAP_DEBUG=1 shows where)", file=sys.stderr)
        return 70
