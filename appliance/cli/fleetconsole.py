"""`wardtap fleet serve | user | prune`: the web console, its accounts, retention.

    wardtap fleet user add alice --role admin --db fleet.db     # asks for the password
    wardtap fleet serve --db fleet.db                           # http://127.0.0.1:8080/
    wardtap fleet serve --db postgresql://... --listen 0.0.0.0:8443 \\
        --https-cert console.pem --https-key console.key --broker mqtts://... --key fleet.key

Plain HTTP is served on loopback only; any other address needs the operator's TLS
certificate and key. There is no default account: the first admin is made here.
"""

from __future__ import annotations

import argparse
import getpass
import ipaddress
import os
import sys
from typing import Any

from appliance.cli import args as checked
from appliance.errors import WardtapError

DEFAULT_DB = "fleet.db"


def _add_db(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", default=os.environ.get("WARDTAP_FLEET_DB", DEFAULT_DB),
                   type=checked.fleet_db,
                   help="fleet database: a SQLite file or postgresql://USER@HOST/DB "
                        "(env WARDTAP_FLEET_DB; a password goes in ~/.pgpass or PGPASSWORD)")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise WardtapError(f"--listen {text!r}: use HOST:PORT, e.g. 127.0.0.1:8080")
    return host.strip("[]") or "127.0.0.1", int(port)


def _listen(text: str) -> str:
    try:
        parse_listen(text)
    except WardtapError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--listen ")) from None
    return text


# -- serve -----------------------------------------------------------------------------------

def add_serve(p: argparse.ArgumentParser) -> None:
    from appliance.cli.fleetopts import add_connection, add_key

    _add_db(p)
    p.add_argument("--listen", default="127.0.0.1:8080", type=_listen,
                   help="HOST:PORT (default 127.0.0.1:8080); not loopback needs --https-cert")
    p.add_argument("--https-cert", dest="https_cert", metavar="PEM", type=checked.input_file,
                   help="the console's HTTPS certificate chain (the operator's)")
    p.add_argument("--https-key", dest="https_key", metavar="PEM", type=checked.input_file,
                   help="its private key")
    p.add_argument("--stale-after", type=checked.seconds(1, 30 * 86400), default=900.0,
                   help="seconds without a report before an appliance shows as stale")
    add_key(p)
    add_connection(p)


def console_config(args: argparse.Namespace) -> Any:
    from appliance.cli.fleetopts import broker_settings
    from appliance.fleet.web.app import ConsoleConfig

    tls = bool(args.https_cert or args.https_key)
    if tls and not (args.https_cert and args.https_key):
        raise WardtapError("HTTPS needs both --https-cert and --https-key")
    for path in (args.https_cert, args.https_key):
        if path and not os.path.isfile(path):
            raise WardtapError(f"{path}: no such file")
    broker = broker_settings(args) if args.broker else None
    key = args.key if args.key and os.path.isfile(args.key) else None
    return ConsoleConfig(db=args.db, broker=broker, key=key, tls=tls,
                         stale_after=args.stale_after)


def run_serve(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from appliance.fleet.db import connect, redact
    from appliance.fleet.web.server import create_app

    host, port = parse_listen(args.listen)
    config = console_config(args)
    if not config.tls and not _loopback(host):
        raise WardtapError(f"--listen {args.listen}: plain HTTP only on loopback; give "
                           "--https-cert and --https-key to listen on other addresses")
    db = connect(config.db)             # the schema is ready (or one clear line) before serving
    users = db.scalar("SELECT count(*) FROM users")
    db.close()
    logging.basicConfig(level="INFO", stream=sys.stderr,
                        format="%(asctime)s wardtap %(levelname)s %(message)s")
    scheme = "https" if config.tls else "http"
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    print(f"wardtap fleet console on {scheme}://{shown}:{port}/ (database "
          f"{redact(config.db)}, broker {config.broker.url if config.broker else 'none'})",
          file=sys.stderr, flush=True)
    if not users:
        print("no accounts yet: make the first admin with `wardtap fleet user add NAME "
              f"--role admin --db {redact(config.db)}`", file=sys.stderr, flush=True)
    if config.broker and not config.key:
        print(f"no fleet signing key at {args.key}: policy and mode changes cannot be "
              "signed (give --key)", file=sys.stderr, flush=True)
    uvicorn.run(create_app(config), host=host, port=port, log_level="warning",
                ssl_certfile=args.https_cert, ssl_keyfile=args.https_key,
                proxy_headers=False, server_header=False, access_log=False)
    return 0


# -- user --------------------------------------------------------------------------------

def add_user(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["add", "password", "role", "disable", "enable", "list"])
    p.add_argument("name", nargs="?", help="the account")
    p.add_argument("--role", choices=["viewer", "operator", "admin"])
    p.add_argument("--password-stdin", action="store_true",
                   help="read the password from standard input (scripts) instead of asking")
    _add_db(p)


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass(f"password for {args.name}: ")
    if first != getpass.getpass("again: "):
        raise WardtapError("the passwords differ")
    return first


def run_user(args: argparse.Namespace) -> int:
    from appliance.fleet import accounts
    from appliance.fleet.db import connect

    db = connect(args.db)
    try:
        if args.action == "list":
            for u in accounts.users(db):
                print(f"{u['username']:24} {u['role']:9} "
                      f"{'disabled' if u['disabled'] else 'active'}")
            return 0
        if not args.name:
            raise WardtapError(f"user {args.action} needs a NAME")
        who = f"{getpass.getuser()} (command line)"
        if args.action == "add":
            if not args.role:
                raise WardtapError("user add needs --role viewer|operator|admin")
            accounts.add_user(db, args.name, args.role, _password(args))
        elif args.action == "password":
            accounts.set_password(db, args.name, _password(args))
        elif args.action == "role":
            if not args.role:
                raise WardtapError("user role needs --role")
            accounts.set_role(db, args.name, role=args.role)
        else:
            accounts.set_role(db, args.name, disabled=args.action == "disable")
        accounts.audit(db, f"user_{args.action}", username=who, client="command line",
                       targets=[args.name], outcome="ok",
                       detail=f"role {args.role}" if args.role else "")
        print(f"{args.name}: {args.action} done")
        return 0
    finally:
        db.close()


# -- prune -------------------------------------------------------------------------------

def add_prune(p: argparse.ArgumentParser) -> None:
    _add_db(p)
    p.add_argument("--days", type=checked.seconds(0, 100 * 365, unit="days"), required=True,
                   help="delete events (and per-minute counts, stats) older than this")
    p.add_argument("--hourly-days", type=checked.seconds(0, 100 * 365, unit="days"),
                   help="keep per-hour counts this long (default 10x --days)")


def run_prune(args: argparse.Namespace) -> int:
    from appliance.fleet.db import connect
    from appliance.fleet.retention import prune

    if args.days <= 0:
        raise WardtapError("--days must be above 0")
    db = connect(args.db)
    try:
        deleted = prune(db, args.days * 86400,
                        args.hourly_days * 86400 if args.hourly_days else None)
    finally:
        db.close()
    print(", ".join(f"{k} {v:,}" for k, v in deleted.items()) + " rows deleted")
    return 0
