"""One `wardtap replay` run: captures through the fast path, optionally with the store, device
identification and fleet reporting, then the summary printed.

`ReplayJob` holds the options (the command line fills it from its arguments, the demo ward
from its defaults); `run_job` runs it and returns the exit code: 0, or 2 when a capture was
damaged (the packets before the damage are classified, then one error line per capture).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from appliance.errors import WardtapError


@dataclass
class ReplayJob:
    captures: list[str]
    policy: str | None = None
    mode: str | None = None                 # default: monitor with a policy, learn without
    db: str | None = None
    json: bool = False
    packets_out: str | None = None
    flows: int = 65536
    devices: int = 4096
    dissect: bool = False
    tshark: str = "tshark"
    wide: bool = False                      # tables at full width, not fitted to the terminal
    # the SIEM (appliance.outputs.syslog, .eve)
    syslog: str | None = None
    syslog_format: str = "rfc5424"
    syslog_ca: str | None = None
    eve: str | None = None
    # fleet reporting (docs/mqtt.md)
    broker: str | None = None
    site: str | None = None
    appliance: str | None = None
    ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    username: str | None = None
    password_file: str | None = None
    drain_timeout: float = 30.0


def _reporter(args: ReplayJob, mode: str, policy: Any) -> Any:
    """`replay --broker`: an MQTT output whose spool is --db (or a temporary file)."""
    import tempfile

    from appliance.outputs.mqtt import MqttOutput, ReporterSettings
    from appliance.replay.runner import _policy_info

    if not args.site or not args.appliance:
        raise WardtapError("--broker needs --site and --appliance")
    spool = args.db or tempfile.mkstemp(prefix="wardtap-spool-", suffix=".db")[1]
    settings = ReporterSettings.from_options({
        "url": args.broker, "site": args.site, "appliance": args.appliance, "ca": args.ca,
        "cert": args.tls_cert, "key": args.tls_key, "username": args.username,
        "password_file": args.password_file, "spool": spool,
        "drain_timeout": args.drain_timeout, "stats_interval": 1e12})
    output = MqttOutput(settings, mode=mode, policy=_policy_info(policy), datapath="replay")
    output.stop_reason = "replay finished"
    return output


def run_job(args: ReplayJob,
            on_events: Callable[[list[dict[str, Any]]], object] | None = None) -> int:
    """Run the replay and print its results; `on_events` also sees every event batch (the
    demo's LEDs)."""
    from appliance.policy.model import check_usable, load_policy
    from appliance.replay.runner import Replayer
    from appliance.replay.summary import render

    classes = None
    if args.db:
        from appliance.inventory.identify import class_members

        classes = class_members(args.db)
    policy = load_policy(args.policy, classes=classes) if args.policy else None
    if args.mode in ("monitor", "enforce") and policy is None:
        raise WardtapError(f"--mode {args.mode} needs --policy")
    mode = args.mode or ("monitor" if policy else "learn")
    if policy is not None:
        check_usable(policy, mode)
    replayer = Replayer(policy, mode, flow_capacity=args.flows, device_capacity=args.devices)
    store = _open_store(args.db) if args.db else None
    out = _open_out(args.packets_out) if args.packets_out else None
    reporter = _reporter(args, mode, policy) if args.broker else None
    siem = _siem(args)
    ident: Any = None
    inventory: list[dict[str, Any]] = []
    try:
        if args.dissect:
            from appliance.inventory.dissector import DissectConfig
            from appliance.inventory.identify import Identification

            # offline: a full queue waits for the worker instead of dropping chunks
            ident = Identification(DissectConfig(tshark=args.tshark, block=True), store)
            replayer.enable_identification(ident)
        if reporter is not None:
            reporter.publish([{"type": "started", "mode": mode, "datapath": "replay",
                               "captures": args.captures}])
        hooks = [h for h in (reporter.publish if reporter else None, on_events) if h]
        hooks += [output.publish for output in siem]
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
                from appliance.inventory.devices import annotate

                devices = annotate(devices, inventory)
            reporter.snapshot(replayer.classifier.stats(), devices)
            reporter.send_stats(replayer.classifier.stats(), devices)
    finally:
        for output in siem:
            output.close()
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
            result["inventory_events"] = ident.events
        print(json.dumps(result, indent=2))
    else:
        print(render(summary))
        if ident is not None:
            from appliance.inventory.render import render_table

            print(f"\ninventory ({len(inventory)} devices)")
            print(render_table(inventory, wide=args.wide))
    for error in summary.errors:
        print(f"wardtap: error: {error}", file=sys.stderr)
    return 2 if summary.errors else 0


def _siem(args: ReplayJob) -> list[Any]:
    """--syslog URL and --eve FILE: the replay's events to the SIEM."""
    from appliance.outputs import make_output

    outputs = []
    if args.syslog:
        options: dict[str, Any] = {"url": args.syslog, "format": args.syslog_format}
        if args.syslog_ca:
            options["ca"] = args.syslog_ca
        outputs.append(make_output("syslog", options))
    if args.eve:
        outputs.append(make_output("eve", {"path": args.eve}))
    return outputs


def _open_store(path: str) -> Any:
    from appliance.outputs.store import Store

    return Store(path)


def _open_out(path: str) -> Any:
    try:
        return open(path, "wb")  # noqa: SIM115  (closed by the caller; UTF-8 JSON lines)
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


