"""The `wardtap` command line: one (help, configure, run) entry per command in _COMMANDS."""

from __future__ import annotations

import argparse
import json
import os
import sys

# One BLAS thread: numpy is used for record arrays, never for linear algebra, and idle
# OpenBLAS threads spinning on a 4-core Pi steal time from the fast path.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
from collections.abc import Callable
from typing import Any

from appliance import __version__
from appliance.errors import WardtapError


def _add_replay(p: argparse.ArgumentParser) -> None:
    p.add_argument("captures", nargs="+", metavar="CAPTURE", help="pcap or pcapng files")
    p.add_argument("--policy", help="allow-list policy (TOML); without it nothing is enforced")
    p.add_argument("--mode", choices=["learn", "monitor", "enforce"],
                   help="default: monitor with a policy, learn without")
    p.add_argument("--db", help="SQLite store for devices, flows and violations")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--packets-out", metavar="FILE",
                   help="write one JSON line per packet (verdict, addresses, ports)")
    p.add_argument("--flows", type=int, default=65536, help="flow table slots (128 B each)")
    p.add_argument("--devices", type=int, default=4096, help="device table slots")
    p.add_argument("--dissect", action="store_true",
                   help="identify devices: dissect sampled packets with tshark and build the "
                        "inventory (stored with --db; docs/inventory.md)")
    p.add_argument("--tshark", default="tshark", help="tshark to use with --dissect")
    g = p.add_argument_group("report to a fleet broker over MQTT (docs/mqtt.md)")
    g.add_argument("--broker", help="mqtt://HOST:PORT or mqtts://HOST:PORT")
    g.add_argument("--site", help="site id for the topics")
    g.add_argument("--appliance", help="appliance id for the topics")
    g.add_argument("--ca", help="CA certificate (PEM)")
    g.add_argument("--tls-cert", help="client certificate (PEM)")
    g.add_argument("--tls-key", help="client private key (PEM)")
    g.add_argument("--username")
    g.add_argument("--password-file", help="MQTT password file (or WARDTAP_MQTT_PASSWORD)")
    g.add_argument("--drain-timeout", type=float, default=30.0,
                   help="seconds to wait for the broker to acknowledge everything")


def _reporter(args: argparse.Namespace, mode: str, policy: Any) -> Any:
    """`replay --broker`: an MQTT output whose spool is --db (or a temporary file)."""
    import tempfile

    from appliance.outputs.mqtt import MqttOutput, ReporterSettings
    from appliance.replay import _policy_info

    if not args.site or not args.appliance:
        raise WardtapError("--broker needs --site and --appliance")
    spool = args.db or tempfile.mkstemp(prefix="wardtap-spool-", suffix=".db")[1]
    settings = ReporterSettings.from_options({
        "url": args.broker, "site": args.site, "appliance": args.appliance, "ca": args.ca,
        "cert": args.tls_cert, "key": args.tls_key, "username": args.username,
        "password_file": args.password_file, "spool": spool,
        "drain_timeout": args.drain_timeout, "stats_interval": 1e12})
    return MqttOutput(settings, mode=mode, policy=_policy_info(policy), datapath="replay")


def _run_replay(args: argparse.Namespace,
                on_events: Callable[[list[dict[str, Any]]], object] | None = None) -> int:
    """`wardtap replay`; `on_events` also sees every event batch (the demo's LEDs)."""
    from appliance.policy import load_policy
    from appliance.replay import Replayer
    from appliance.summary import render

    classes = None
    if args.db:
        from appliance.inventory import class_members

        classes = class_members(args.db)
    policy = load_policy(args.policy, classes=classes) if args.policy else None
    if args.mode in ("monitor", "enforce") and policy is None:
        raise WardtapError(f"--mode {args.mode} needs --policy")
    mode = args.mode or ("monitor" if policy else "learn")
    replayer = Replayer(policy, mode, flow_capacity=args.flows, device_capacity=args.devices)
    store = _open_store(args.db) if args.db else None
    out = _open_out(args.packets_out) if args.packets_out else None
    reporter = _reporter(args, mode, policy) if args.broker else None
    ident: Any = None
    inventory: list[dict[str, Any]] = []
    try:
        if args.dissect:
            from appliance.dissect import DissectConfig
            from appliance.inventory import Identification

            # offline: a full queue waits for the worker instead of dropping chunks
            ident = Identification(DissectConfig(tshark=args.tshark, block=True), store)
            replayer.enable_identification(ident)
        if reporter is not None:
            reporter.publish([{"type": "started", "mode": mode, "datapath": "replay",
                               "captures": args.captures}])
        hooks = [h for h in (reporter.publish if reporter else None, on_events) if h]
        if hooks:
            def each_hook(events: list[dict[str, Any]]) -> None:
                for hook in hooks:
                    hook(events)
            replayer.on_events = each_hook
        with _progress(args.captures, enabled=sys.stderr.isatty() and not args.json) as tick:
            summary = replayer.run(args.captures, store=store, packets_out=out, progress=tick)
        if ident is not None:
            found = ident.finish(replayer.devices(), timeout=300)
            if reporter is not None and found:
                reporter.publish(found)
            inventory = ident.inventory.as_list()
        if reporter is not None:
            devices = replayer.devices()
            if ident is not None:
                from appliance.inventory import annotate

                devices = annotate(devices, inventory)
            reporter.snapshot(replayer.classifier.stats(), devices)
            reporter.send_stats(replayer.classifier.stats(), devices)
    finally:
        if ident is not None:
            ident.close()
        if out is not None:
            out.close()
        if store is not None:
            store.close()
        if reporter is not None:
            reporter.close()
            left = reporter.spool_left
            print(f"wardtap: reported to {args.broker} as {args.site}/{args.appliance}: "
                  f"{reporter.counters['acknowledged']} messages acknowledged"
                  + (f", {left} still in the spool {reporter.settings.spool}" if left else ""),
                  file=sys.stderr)
    if args.json:
        result = summary.as_dict()
        if ident is not None:
            result["dissect"] = ident.stats()
            result["inventory"] = inventory
        print(json.dumps(result, indent=2))
    else:
        print(render(summary))
        if ident is not None:
            from appliance.inventory import render_table

            print(f"\ninventory ({len(inventory)} devices)")
            print(render_table(inventory))
    for error in summary.errors:
        print(f"wardtap: error: {error}", file=sys.stderr)
    return 2 if summary.errors else 0


def _open_store(path: str) -> Any:
    from appliance.store import Store

    return Store(path)


def _open_out(path: str) -> Any:
    try:
        return open(path, "w", encoding="utf-8")  # noqa: SIM115  (closed by the caller)
    except OSError as exc:
        raise WardtapError(f"{path}: cannot write: {exc.strerror}") from None


class _progress:
    """A rich progress bar over the captures' bytes, on a terminal only."""

    def __init__(self, paths: list[str], enabled: bool) -> None:
        self.enabled = enabled
        self.paths = paths
        self.bar: Any = None

    def __enter__(self) -> Callable[[int, int], None] | None:
        if not self.enabled:
            return None
        from rich.progress import Progress

        self.bar = Progress(transient=True)
        self.bar.start()
        self.task = self.bar.add_task("classifying", total=None)
        return lambda done, total: self.bar.update(self.task, completed=done, total=total)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


def _add_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", default=os.environ.get("WARDTAP_DEMO_DIR", "demo-ward"),
                   help="where to write the demo capture, policy and store (default ./demo-ward)")
    p.add_argument("--packets", type=int, default=20000)
    p.add_argument("--json", action="store_true")


def _run_demo(args: argparse.Namespace) -> int:
    from appliance.demorun import run_demo

    return run_demo(args.dir, args.packets, args.json)


def _add_policy(p: argparse.ArgumentParser) -> None:
    from appliance import policytools

    sub = p.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    check = sub.add_parser("check", help="validate a policy file")
    check.add_argument("file")
    policytools.add_actions(sub)


def _run_policy(args: argparse.Namespace) -> int:
    from appliance import policytools
    from appliance.policy import compile_policy, load_policy

    if policytools.handles(args.policy_command):
        return policytools.run(args)

    policy = load_policy(args.file)
    compile_policy(policy)
    print(f"{args.file}: ok: policy {policy.name!r} v{policy.version}, "
          f"{len(policy.groups)} groups, {len(policy.rules)} rules")
    return 0


def _add_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="daemon configuration (TOML)")
    p.add_argument("--leds", action="store_true",
                   help="print the LED states as they change (the default on a terminal)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--dissect", action="store_true",
                   help="identify devices (tshark on sampled packets) into the inventory")
    p.add_argument("--tshark", default="tshark", help="tshark to use with --dissect")


def _run_run(args: argparse.Namespace) -> int:
    import logging

    from appliance.config import load_config
    from appliance.daemon import Daemon

    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s wardtap %(levelname)s %(message)s")
    dissect = None
    if args.dissect:
        from appliance.dissect import DissectConfig

        dissect = DissectConfig(tshark=args.tshark)
    daemon = Daemon(load_config(args.config), dissect=dissect)
    daemon.show_leds = sys.stderr.isatty() or args.leds
    return daemon.run()


def _add_socket(p: argparse.ArgumentParser) -> None:
    from appliance.config import DEFAULT_CONTROL

    p.add_argument("--socket", default=os.environ.get("WARDTAP_CONTROL", DEFAULT_CONTROL),
                   help="the daemon's control socket")


def _add_mode(p: argparse.ArgumentParser) -> None:
    p.add_argument("mode", choices=["learn", "monitor", "enforce", "bypass"])
    _add_socket(p)


def _control(socket_path: str, body: dict[str, Any]) -> int:
    from appliance.control import request

    answer = request(socket_path, body)
    print(json.dumps(answer, indent=2))
    return 0 if answer.get("ok") else 1


def _run_mode(args: argparse.Namespace) -> int:
    return _control(args.socket, {"cmd": "mode", "mode": args.mode})


def _run_reload(args: argparse.Namespace) -> int:
    return _control(args.socket, {"cmd": "reload"})


def _run_propose(args: argparse.Namespace) -> int:
    return _control(args.socket, {"cmd": "propose"})


def _add_status(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true",
                   help="one JSON object with stable keys (docs/console.md)")
    _add_socket(p)


def _run_status(args: argparse.Namespace) -> int:
    from appliance.console import run_status

    return run_status(args.socket, args.json)


def _add_top(p: argparse.ArgumentParser) -> None:
    p.add_argument("--once", action="store_true",
                   help="print one frame at the terminal's size and exit (scripts, tests)")
    _add_socket(p)


def _run_top(args: argparse.Namespace) -> int:
    from appliance.console import run_top

    return run_top(args.socket, once=args.once)


def _add_learn(p: argparse.ArgumentParser) -> None:
    from appliance.learn import add_arguments

    add_arguments(p)


def _run_learn(args: argparse.Namespace) -> int:
    from appliance.learn import run

    return run(args)


def _add_devices(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", default=os.environ.get("WARDTAP_DB", "wardtap.db"),
                   help="the store (default $WARDTAP_DB or ./wardtap.db)")
    form = p.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="every field, evidence included")
    form.add_argument("--csv", action="store_true", help="one row per device")
    p.add_argument("--class", dest="cls", metavar="CLASS", help="only devices of this class")
    p.add_argument("--why", metavar="MAC", help="the evidence and rules behind one device")


def _run_devices(args: argparse.Namespace) -> int:
    from appliance.inventory import inventory_list, render_csv, render_table, render_why

    if not os.path.exists(args.db):
        raise WardtapError(f"{args.db}: no such store (give --db, or run with --dissect first)")
    with _open_store(args.db) as store:
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


_COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None],
                           Callable[[argparse.Namespace], int]]] = {
    "replay": ("classify capture files and summarise", _add_replay, _run_replay),
    "devices": ("the device inventory: vendor, class, names, addresses, evidence",
                _add_devices, _run_devices),
    "demo": ("generate the demo ward and replay it", _add_demo, _run_demo),
    "policy": ("allow-list policy tools", _add_policy, _run_policy),
    "learn": ("learn each device's baseline and propose an allow-list", _add_learn,
              _run_learn),
    "run": ("run the appliance daemon", _add_run, _run_run),
    "status": ("show the running daemon's state", _add_status, _run_status),
    "top": ("live dashboard of the running daemon (q quits)", _add_top, _run_top),
    "mode": ("set the running daemon's mode", _add_mode, _run_mode),
    "reload": ("reload the running daemon's policy", _add_socket, _run_reload),
    "propose": ("write the policy the daemon has learned so far", _add_socket, _run_propose),
    "integrity": ("SHA-256 manifests of installed files, configuration and policy: "
                  "write, verify, accept", lambda p: _integrity().add_arguments(p),
                  lambda a: _integrity().run(a)),
    "fleet": ("fleet side over MQTT: list, watch, inventory, push-policy, command, collect",
              lambda p: _fleet().add_fleet(p), lambda a: int(_fleet().run_fleet(a))),
}


def _integrity() -> Any:
    from appliance import integrity

    return integrity


def _fleet() -> Any:
    from appliance.fleet import cli as fleet_cli

    return fleet_cli


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; only the command being run gets its arguments (and their imports), so a
    `replay` does not pay for loading the learning and fleet modules."""
    words = sys.argv[1:] if argv is None else argv
    chosen = next((w for w in words if not w.startswith("-")), None)
    parser = argparse.ArgumentParser(
        prog="wardtap", description="Ward network appliance: classify, inventory, enforce.")
    parser.add_argument("--version", action="version", version=f"wardtap {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, configure, _) in _COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        if chosen is None or name == chosen:
            configure(command_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser(argv).parse_args(argv)
    try:
        return _COMMANDS[args.command][2](args)
    except WardtapError as exc:
        print(f"wardtap: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("wardtap: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
