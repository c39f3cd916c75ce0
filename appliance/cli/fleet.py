"""`wardtap fleet ...`: keygen, list, watch, inventory, push-policy, command, collect.

Connection options come from flags or the environment (WARDTAP_BROKER, WARDTAP_CA,
WARDTAP_TLS_CERT, WARDTAP_TLS_KEY, WARDTAP_MQTT_USERNAME, WARDTAP_MQTT_PASSWORD); the
signing key from --key or WARDTAP_FLEET_KEY (default ~/.config/wardtap/fleet.key).
Exit codes: 0 every appliance answered ok; 1 some failed, timed out or were offline;
2 a usage error (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from appliance.cli import args as checked
from appliance.cli.fleetopts import DEFAULT_KEY, add_connection, add_key, broker_settings
from appliance.common.text import shown
from appliance.common.when import Clock, local
from appliance.errors import WardtapError
from appliance.fleet.listing import age


def _add_target(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--to", required=required, metavar="SITE[/APPLIANCE]", type=checked.target,
                   help="one appliance, or every appliance of a site")
    p.add_argument("--timeout", type=checked.seconds(0, 3600), default=10.0,
                   help="seconds to wait for the answers (default 10)")


# -- keygen ------------------------------------------------------------------------------

def _add_keygen(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", default=os.path.dirname(DEFAULT_KEY), type=checked.output_dir,
                   help="where to write fleet.key and fleet.pub (default ~/.config/wardtap)")
    p.add_argument("--force", action="store_true", help="overwrite an existing key pair")


def _run_keygen(args: argparse.Namespace) -> int:
    from appliance.contract.signing import generate_keypair

    checked.make_dir(args.dir, mode=0o700)
    private, public = os.path.join(args.dir, "fleet.key"), os.path.join(args.dir, "fleet.pub")
    kid = generate_keypair(private, public, overwrite=args.force)
    print(f"fleet signing key {kid}\n  private: {private} (keep it on the fleet side, 0600)\n"
          f"  public:  {public} (copy to every appliance; [broker] fleet_key = \"...\")")
    return 0


# -- list --------------------------------------------------------------------------------

def _add_list(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", type=checked.fleet_db_to_read,
                   help="read a collector's database (SQLite file or postgresql://...) "
                        "instead of the broker")
    p.add_argument("--site", type=checked.ident("site"), help="only this site")
    checked.add_output_format(p)
    add_connection(p)


def _run_list(args: argparse.Namespace) -> int:
    from appliance.fleet import listing

    now = time.time()
    if args.db:
        from appliance.fleet.collector import fleet_rows

        rows = [r for r in fleet_rows(args.db, now) if not args.site or r["site"] == args.site]
    else:
        from appliance.fleet.client import FleetClient

        with FleetClient(broker_settings(args)) as fc:
            rows = listing.rows_from_broker(fc.appliances(args.site))
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(listing.render(rows, now, wide=args.wide))
        if rows:
            print(f"(last seen: ages against the wall clock, {local(now)})")
    return 0


# -- watch -------------------------------------------------------------------------------

def describe(event: dict[str, Any]) -> str:
    kind = event.get("type", "?")
    if kind == "violation":
        port = event.get("dport", event.get("icmp_type"))
        text = (f"{event.get('src')} -> {event.get('dst')} proto {event.get('proto')}"
                f"{'/' + str(port) if port is not None else ''} {event.get('reason')}")
        if event.get("summary"):
            ports = event.get("ports") or []
            text += f" (+{event.get('count')} more in {event.get('window_s')} s"
            text += f", ports {','.join(map(str, ports[:8]))}{'...' if len(ports) > 8 else ''})"
        return text
    if kind == "new_device":
        return f"{event.get('mac')} {event.get('ip')} vlan {event.get('vlan')}"
    if kind == "mode_changed":
        return f"{event.get('previous')} -> {event.get('mode')}"
    if kind in ("policy_loaded", "started"):
        p = event.get("policy") or {}
        return f"policy {p.get('name')} v{p.get('version')}"
    rest = {k: v for k, v in event.items() if k not in ("type", "ts", "id")}
    return json.dumps(rest, separators=(",", ":"))[:160]


def _add_watch(p: argparse.ArgumentParser) -> None:
    p.add_argument("--to", metavar="SITE[/APPLIANCE]", type=checked.target,
                   help="only this site or appliance")
    p.add_argument("--json", action="store_true", help="one JSON event per line")
    p.add_argument("--count", type=checked.count(1, 10**9), help="stop after this many events")
    p.add_argument("--timeout", type=checked.seconds(0, 86400 * 366),
                   help="stop after this many seconds (also bounds connecting)")
    add_connection(p)


def _run_watch(args: argparse.Namespace) -> int:
    import queue

    from appliance.contract.broker import parse_target, split_topic, topic
    from appliance.fleet.client import FleetClient

    site, appliance = parse_target(args.to) if args.to else ("+", None)
    seen = 0
    deadline = time.monotonic() + args.timeout if args.timeout else None
    with FleetClient(broker_settings(args)) as fc:
        fc.subscribe([topic(site, appliance or "+", "events"),
                      topic(site, appliance or "+", "state")])
        while args.count is None or seen < args.count:
            wait = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
            if wait <= 0:
                break
            try:
                msg = fc.messages.get(timeout=wait)
            except queue.Empty:
                continue
            parts = split_topic(msg.topic)
            body = msg.json()
            if parts is None or not isinstance(body, dict):
                continue
            where = f"{parts[0]}/{parts[1]}"
            if parts[2] == "state":
                if not msg.retain:
                    line = (json.dumps({"appliance": where, "state": body}) if args.json else
                            shown(f"{time.strftime('%H:%M:%S')} {where:28} state "
                                  f"{body.get('status')} "
                                  f"{body.get('mode') or body.get('reason')}"))
                    print(line, flush=True)
                continue
            for event in body.get("events", []):
                seen += 1
                if args.json:
                    print(json.dumps({"appliance": where, **event}), flush=True)
                else:
                    when = time.strftime("%H:%M:%S", time.localtime(event.get("ts") or 0))
                    print(shown(f"{when} {where:28} {event.get('type')!s:16} "
                                f"{describe(event)}"), flush=True)
                if args.count is not None and seen >= args.count:
                    break
    return 0


# -- inventory ---------------------------------------------------------------------------

def _add_inventory(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="SITE/APPLIANCE", type=checked.target)
    p.add_argument("--refresh", action="store_true",
                   help="ask the appliance to publish its inventory now")
    checked.add_output_format(p)
    p.add_argument("--timeout", type=checked.seconds(0, 3600), default=10.0)
    add_connection(p)


def _run_inventory(args: argparse.Namespace) -> int:
    from appliance.contract.broker import parse_target, topic
    from appliance.fleet.client import FleetClient, unsigned_request

    site, appliance = parse_target(args.target)
    if appliance is None:
        raise WardtapError("inventory needs SITE/APPLIANCE")
    with FleetClient(broker_settings(args)) as fc:
        if args.refresh:
            answer = fc.request([(site, appliance)],
                                lambda s, a: unsigned_request("inventory", {}),
                                args.timeout)[(site, appliance)]
            if not answer or not answer.get("ok"):
                print(f"{site}/{appliance}: inventory request failed: "
                      f"{(answer or {}).get('error', 'no answer')}", file=sys.stderr)
                return 1
        found = fc.retained([topic(site, appliance, "inventory"),
                             topic(site, appliance, "state")])
    msg = found.get(topic(site, appliance, "inventory"))
    body = msg.json() if msg else None
    if not isinstance(body, dict):
        print(f"{site}/{appliance}: no inventory on the broker (try --refresh)",
              file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(body, indent=2))
        return 0
    state_msg = found.get(topic(site, appliance, "state"))
    state = (state_msg.json() if state_msg else None) or {}
    devices = body.get("devices", [])
    # a replaying appliance's devices carry the capture's times: age them on its clock
    clock = Clock.for_times([d.get("last_seen") for d in devices],
                            replayed=state.get("datapath") == "replay")
    print(f"{site}/{appliance}: {body.get('count')} devices (as of {local(body.get('ts'))})")
    from appliance.common.table import Column, render

    columns = (Column("MAC"), Column("VENDOR", 2, wrap=True, min_width=16),
               Column("CLASS", 1, wrap=True, min_width=12), Column("IPV4", 3),
               Column("VLAN", 5, align=">"), Column("PACKETS", 6, align=">"),
               Column("VIOL", 4, align=">"), Column("LAST SEEN", 3))
    rows = [(d.get("mac") or "-", d.get("vendor") or "-", d.get("class") or "-",
             d.get("ipv4") or "-", d.get("vlan") or "-",
             f"{(d.get('packets_sent') or 0) + (d.get('packets_received') or 0):,}",
             d.get("violations") or 0, clock.age(d.get("last_seen"))) for d in devices]
    print(render(columns, rows, wide=args.wide))
    print(f"(last seen: {clock.label})")
    return 0


# -- push-policy and command -------------------------------------------------------------

def _targets(fc: Any, to: str) -> tuple[list[tuple[str, str]], dict[tuple[str, str], str]]:
    """(online targets, {offline target: why}) for SITE or SITE/APPLIANCE."""
    from appliance.contract.broker import parse_target

    site, appliance = parse_target(to)
    known = fc.appliances(site, appliance)
    now = time.time()
    online: list[tuple[str, str]] = []
    offline: dict[tuple[str, str], str] = {}
    if appliance is not None and (site, appliance) not in known:
        offline[(site, appliance)] = "unknown to the broker (no retained state)"
    for key, parts in sorted(known.items()):
        state = parts.get("state") or {}
        if state.get("status") == "online":
            online.append(key)
        else:
            stats_ts = (parts.get("stats") or {}).get("ts")
            since = (f"since {age(state['ts'], now)}" if state.get("ts") else
                     f"({state.get('reason', 'no state')}; last stats {age(stats_ts, now)})")
            offline[key] = f"offline {since}, not sent"
    if not online and not offline:
        raise WardtapError(f"no appliances found under {to}")
    return online, offline


def _send(args: argparse.Namespace, name: str, cmd_args: dict[str, Any], signed: bool,
          summary: Callable[[dict[str, Any]], str]) -> int:
    from appliance.fleet.client import (
        FleetClient,
        SequenceCounter,
        signed_request,
        unsigned_request,
    )

    key = counter = None
    if signed:
        from appliance.contract.signing import load_private_key

        key = load_private_key(args.key)
        counter = SequenceCounter(args.key + ".seq")
    with FleetClient(broker_settings(args)) as fc:
        online, offline = _targets(fc, args.to)

        def payload(site: str, appliance: str) -> bytes:
            if key is None or counter is None:
                return unsigned_request(name, cmd_args)
            return signed_request(key, counter, site, appliance, name, cmd_args,
                                  validity=args.validity)

        results = fc.request(online, payload, args.timeout) if online else {}
    failed = 0
    width = max(len(f"{s}/{a}") for s, a in [*online, *offline])
    for (site, appliance), answer in sorted(results.items()):
        where = f"{site}/{appliance}"
        if answer is None:
            failed += 1
            print(f"{where:{width}}  timeout  no answer within {args.timeout:g} s")
        elif answer.get("ok"):
            print(shown(f"{where:{width}}  ok       {summary(answer)}"))
        else:
            failed += 1
            detail = answer.get("detail") or ""
            print(shown(f"{where:{width}}  FAILED   {answer.get('error')}"
                        f"{': ' + detail if detail else ''}"))
    for (site, appliance), why in sorted(offline.items()):
        failed += 1
        print(f"{site + '/' + appliance:{width}}  offline  {why}")
    if getattr(args, "audit_db", None):
        _audit(args, name, cmd_args, results, offline, failed)
    return 1 if failed else 0


def _audit(args: argparse.Namespace, name: str, cmd_args: dict[str, Any],
           results: dict[tuple[str, str], dict[str, Any] | None],
           offline: dict[tuple[str, str], str], failed: int) -> None:
    """The command, its targets and every answer in the fleet database's audit log (the
    console shows it next to its own actions)."""
    from appliance.fleet.accounts import audit
    from appliance.fleet.client import default_issuer
    from appliance.fleet.db import connect

    answers: dict[str, Any] = {f"{s}/{a}": answer or {"ok": False, "error": "no answer"}
                               for (s, a), answer in results.items()}
    answers.update({f"{s}/{a}": {"ok": False, "error": why} for (s, a), why in offline.items()})
    shown = {k: v for k, v in cmd_args.items() if k != "policy"}
    if "policy" in cmd_args:
        shown["policy_lines"] = cmd_args["policy"].count("\n")
    db = connect(args.audit_db)
    try:
        audit(db, name, username=default_issuer(), role="command line", client="wardtap fleet",
              targets=sorted(answers), detail=json.dumps(shown)[:2000],
              outcome="failed" if failed else "ok", answers=answers)
    finally:
        db.close()


def _add_audit(p: argparse.ArgumentParser) -> None:
    p.add_argument("--audit-db", default=os.environ.get("WARDTAP_FLEET_DB"), metavar="DB",
                   help="also record the command and every answer in this fleet database's "
                        "audit log (env WARDTAP_FLEET_DB)")


def _add_push(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", type=checked.input_file,
                   help="policy file (TOML); validated here before it is sent")
    _add_target(p)
    add_key(p)
    p.add_argument("--allow-rollback", action="store_true",
                   help="allow appliances to go back to this older version (audited)")
    p.add_argument("--allow-jump", action="store_true",
                   help="allow a version more than 1000 above the running one (audited)")
    p.add_argument("--strict", action="store_true",
                   help="refuse the policy (here and on the appliances) if it has lint "
                   "warnings")
    p.add_argument("--validity", type=checked.seconds(0, 86400), default=300.0,
                   help="seconds the signed request stays valid (default 300)")
    _add_audit(p)
    add_connection(p)


def _run_push(args: argparse.Namespace) -> int:
    from appliance.policy.lint import lint
    from appliance.policy.model import compile_policy, load_policy

    policy = load_policy(args.file)
    compile_policy(policy)
    findings = lint(policy)
    for finding in findings:
        print(shown(f"wardtap: warning: {finding.text(args.file)}"), file=sys.stderr)
    if findings and args.strict:
        raise WardtapError(f"{args.file}: {len(findings)} lint warning(s) and --strict: not "
                           "sent")
    print(shown(f"{args.file}: policy {policy.name!r} v{policy.version} (sha256 "
                f"{policy.digest[:12]}), {len(policy.rules)} rules -> {args.to}"))

    def summary(answer: dict[str, Any]) -> str:
        p = answer.get("policy") or {}
        if answer.get("unchanged"):
            return f"already running {p.get('name')} v{p.get('version')}"
        text = f"applied {p.get('name')} v{p.get('version')}"
        if answer.get("flows_changed") is not None:
            text += f" ({answer['flows_changed']} flows changed verdict)"
        return text + (" [ROLLED BACK on purpose]" if answer.get("rolled_back") else "")

    cmd_args: dict[str, Any] = {"policy": policy.text}
    for flag in ("allow_rollback", "allow_jump", "strict"):
        if getattr(args, flag):
            cmd_args[flag] = True
    return _send(args, "policy", cmd_args, True, summary)


_UNSIGNED_OK = {"identify", "inventory", "status"}


def _add_command(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", choices=["mode", "bypass", "identify", "inventory", "status",
                                    "reload"])
    p.add_argument("value", nargs="?",
                   help="mode: learn|monitor|enforce; bypass: on|off; identify: seconds")
    _add_target(p)
    add_key(p)
    p.add_argument("--unsigned", action="store_true",
                   help="send identify/inventory/status without a signature")
    p.add_argument("--validity", type=checked.seconds(0, 86400), default=300.0,
                   help="seconds the signed request stays valid (default 300)")
    _add_audit(p)
    add_connection(p)


def _run_command(args: argparse.Namespace) -> int:
    name, value = args.name, args.value
    cmd_args: dict[str, Any] = {}
    if name == "mode":
        if value not in ("learn", "monitor", "enforce", "bypass"):
            raise WardtapError("mode needs learn, monitor, enforce or bypass")
        cmd_args["mode"] = value
    elif name == "bypass":
        if value not in ("on", "off"):
            raise WardtapError("bypass needs on or off")
        cmd_args["on"] = value == "on"
    elif name == "identify" and value is not None:
        try:
            cmd_args["seconds"] = float(value)
        except ValueError:
            raise WardtapError("identify takes a number of seconds") from None
    elif value is not None:
        raise WardtapError(f"{name} takes no value")
    signed = not (args.unsigned and name in _UNSIGNED_OK)
    if args.unsigned and name not in _UNSIGNED_OK:
        raise WardtapError(f"{name} changes enforcement and is always signed")

    def summary(answer: dict[str, Any]) -> str:
        if name == "status":
            c = answer.get("counters") or {}
            return (f"mode {answer.get('mode')}, up {answer.get('uptime_s')} s, "
                    f"{c.get('packets', 0):,} packets, {c.get('devices', 0)} devices")
        if name == "inventory":
            return f"{answer.get('devices')} devices published to {answer.get('topic')}"
        if name == "identify":
            return (f"identifying for {answer.get('seconds'):g} s"
                    f"{'' if answer.get('leds') else ' (no LEDs attached)'}")
        if "mode" in answer:
            prev = answer.get("previous")
            return f"mode {answer['mode']}" + (f" (was {prev})" if prev else "")
        return json.dumps({k: v for k, v in answer.items()
                           if k not in ("v", "site", "appliance", "ts", "ok")})[:120]

    return _send(args, name, cmd_args, signed, summary)


# -- collect -----------------------------------------------------------------------------

def _add_collect(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", required=True, type=checked.fleet_db,
                   help="fleet database: a SQLite file, or postgresql://USER@HOST/DB shared by "
                        "several collectors and the console")
    p.add_argument("--group", default="wardtap", type=checked.ident("group"),
                   help="shared-subscription group: collectors in one group split the load")
    p.add_argument("--id", type=checked.ident("collector id"),
                   help="this collector's client id (stable: it names its session)")
    p.add_argument("--session-expiry", type=checked.count(0, 2**32 - 1), default=86400,
                   help="seconds the broker keeps this collector's share while it is away")
    p.add_argument("--retain-days", default=0.0,
                   type=checked.seconds(0, 100 * 365, zero=True, unit="days"),
                   help="prune events older than this every 10 minutes (0: keep; per-hour "
                        "counts are kept 10x longer)")
    add_connection(p)


def _run_collect(args: argparse.Namespace) -> int:
    import logging

    from appliance.common.text import SafeFormatter
    from appliance.fleet.collector import Collector

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(SafeFormatter("%(asctime)s wardtap %(levelname)s %(message)s"))
    logging.basicConfig(level="INFO", handlers=[handler])
    from appliance.contract.broker import probe

    settings = broker_settings(args)
    probe(settings, settings.connect_timeout)      # a wrong URL is said now, not retried
    collector = Collector(args.db, settings, args.group, args.id, args.session_expiry,
                          retain_s=args.retain_days * 86400)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    collector.start()
    from appliance.fleet.db import redact

    logging.getLogger("wardtap.collector").info(
        "collecting into %s (group %s, id %s)", redact(args.db), args.group, collector.id)
    try:
        while not stop.wait(30):
            c = collector.counts
            logging.getLogger("wardtap.collector").info(
                "%d messages, %d events, %d duplicates dropped", c["messages"],
                c["events_new"], c["events_duplicate"])
    finally:
        collector.close()
    return 0


# -- registry ----------------------------------------------------------------------------

_FLEET: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None],
                        Callable[[argparse.Namespace], int]]] = {
    "keygen": ("make the fleet's Ed25519 signing key pair", _add_keygen, _run_keygen),
    "list": ("appliances: online/offline, mode, policy, last seen, violations/1h",
             _add_list, _run_list),
    "watch": ("print live events", _add_watch, _run_watch),
    "inventory": ("an appliance's device inventory", _add_inventory, _run_inventory),
    "push-policy": ("validate, sign and push a policy", _add_push, _run_push),
    "command": ("send a command (mode, bypass, identify, inventory, status, reload)",
                _add_command, _run_command),
    "collect": ("keep fleet state in SQLite or PostgreSQL (scales out by shared "
                "subscription)", _add_collect, _run_collect),
}


def _console(add: str, run: str) -> tuple[Callable[[argparse.ArgumentParser], None],
                                           Callable[[argparse.Namespace], int]]:
    """The console's commands live in appliance.cli.fleetconsole, imported when used."""
    def configure(p: argparse.ArgumentParser) -> None:
        from appliance.cli import fleetconsole

        getattr(fleetconsole, add)(p)

    def execute(args: argparse.Namespace) -> int:
        from appliance.cli import fleetconsole

        return int(getattr(fleetconsole, run)(args))
    return configure, execute


_FLEET.update({
    "serve": ("the fleet console in a browser (fleet, devices, violations, policies, audit)",
              *_console("add_serve", "run_serve")),
    "user": ("console accounts: add, password, role, disable, enable, list",
             *_console("add_user", "run_user")),
    "prune": ("delete events older than N days (counts stay rolled up per hour)",
              *_console("add_prune", "run_prune")),
})


def add_fleet(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="fleet_command", required=True, metavar="ACTION")
    for name, (help_text, configure, _) in _FLEET.items():
        configure(sub.add_parser(name, help=help_text, description=help_text))


def run_fleet(args: argparse.Namespace) -> int:
    return _FLEET[args.fleet_command][2](args)
