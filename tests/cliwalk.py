"""Walk every `wardtap` subcommand and option with bad values, in one process of its own.

    python tests/cliwalk.py WORKDIR [SHARD/SHARDS] > results.json

Every (sub)command gets placeholder values for what it requires (real files made in
WORKDIR, a broker URL that refuses at once), then each option that takes a value is given
each of VALUES in turn, and each positional the same; plus the cases the issue names. Each
case runs appliance.cli.main in this process (stdout and stderr captured, at most
CASE_SECONDS each) and is reported as {argv, code, stderr, error}: `error` is the type of an
exception that escaped main() (a traceback for a user). tests/test_cli_walk.py judges them.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

CASE_SECONDS = 30
BROKER = "mqtt://127.0.0.1:1"
# Values that are wrong for most options and right for a few; none may give a traceback.
VALUES = ["-5", "0", "abc", "", "99999999999999999999", "1e999", "nan", "/proc/nope",
          "README.md", "{dir}", "DC-A6-32-7E-5B-19", "bogus://x", "a/b/c"]


class CaseTimeout(Exception):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise CaseTimeout()


def fixtures(work: Path) -> dict[str, str]:
    from demoward.ward import write_demo_policy, write_demo_ward

    work.mkdir(parents=True, exist_ok=True)
    capture = work / "ward.pcap"
    write_demo_ward(str(capture), packets=1000)
    policy = work / "policy.toml"
    write_demo_policy(str(policy))
    config = work / "wardtap.toml"
    config.write_text('[appliance]\nmode = "monitor"\n[datapath]\ntype = "replay"\n'
                      'files = ["ward.pcap"]\n[policy]\nfile = "policy.toml"\n'
                      '[control]\nsocket = "control.sock"\n')
    (work / "a.txt").write_text("x\n")
    return {"capture": str(capture), "policy": str(policy), "config": str(config),
            "mud": str(ROOT / "tests" / "data" / "infusion-pump.mud.json"),
            "csaf": str(ROOT / "tests" / "data" / "csaf" / "icsma-17-017-02.json"),
            "file": str(work / "a.txt"), "dir": str(work), "out": str(work / "out.txt"),
            "db": str(work / "store.db"), "socket": str(work / "none.sock")}


def bases(f: dict[str, str]) -> dict[tuple[str, ...], list[str]]:
    """The smallest argument list that reaches each command's work."""
    fleet = ["--broker", BROKER]
    return {
        ("replay",): [f["capture"]],
        ("devices",): ["--db", f["db"]],
        ("demo",): ["--dir", f["dir"] + "/demo", "--packets", "1000"],
        ("policy", "check"): [f["policy"]],
        ("policy", "diff"): [f["policy"], f["policy"]],
        ("policy", "test"): [f["policy"], f["capture"]],
        ("policy", "import-mud"): [f["mud"]],
        ("policy", "drift"): ["--policy", f["policy"], f["capture"]],
        ("learn",): [f["capture"], "-o", f["out"], "--no-dissect"],
        ("run",): ["--config", f["config"], "--check"],
        ("status",): ["--socket", f["socket"]],
        ("top",): ["--once", "--socket", f["socket"]],
        ("mode",): ["monitor", "--socket", f["socket"]],
        ("reload",): ["--socket", f["socket"]],
        ("propose",): ["--socket", f["socket"]],
        ("events",): ["--db", f["db"]],
        ("violations",): ["--db", f["db"]],
        ("flows",): ["--db", f["db"]],
        ("inline",): ["status", "--bridge", "walk-nobr"],
        ("integrity", "write"): [f["file"], "-o", f["out"]],
        ("integrity", "verify"): [f["out"]],
        ("integrity", "accept"): [f["out"], f["file"]],
        ("advisories", "import"): [f["csaf"], "--db", f["db"]],
        ("advisories", "list"): ["--db", f["db"]],
        ("fleet", "keygen"): ["--dir", f["dir"] + "/keys"],
        ("fleet", "list"): fleet,
        ("fleet", "watch"): [*fleet, "--timeout", "2"],
        ("fleet", "inventory"): ["st-marys/ward-4b", *fleet],
        ("fleet", "push-policy"): [f["policy"], "--to", "st-marys", *fleet],
        ("fleet", "command"): ["status", "--to", "st-marys", "--unsigned", *fleet],
        ("fleet", "collect"): ["--db", f["dir"] + "/fleet.db", *fleet],
        # not loopback and no certificate: refused before anything listens
        ("fleet", "serve"): ["--db", f["dir"] + "/fleet.db", "--listen", "192.0.2.1:8443"],
        ("fleet", "user"): ["list", "--db", f["dir"] + "/fleet.db"],
        ("fleet", "prune"): ["--db", f["dir"] + "/fleet.db", "--days", "30"],
    }


NAMED = [  # the issue's own examples, and what they must say
    (["demo", "--packets", "500"], "1,000 to"),
    (["demo", "--dir", "README.md"], "is a file, not a directory"),
    (["demo", "--dir", "/proc/nope"], "cannot write"),
    (["replay", "{capture}", "--flows", "0"], "8 to 268,435,456"),
    (["replay", "{capture}", "--devices", "2"], "16 to 16,777,216"),
    (["replay", "{capture}", "--flows", "-5"], "out of range"),
    (["devices", "--db", "{db}", "--class", "pumpz"], "not a device class"),
    (["fleet", "watch", "--broker", BROKER, "--timeout", "3"], "refused the connection"),
]


def subcommands() -> dict[tuple[str, ...], argparse.ArgumentParser]:
    from appliance.cli import COMMANDS, build_parser

    found: dict[tuple[str, ...], argparse.ArgumentParser] = {}
    for name in COMMANDS:
        top = build_parser([name])
        parser = _sub(top)[name]
        nested = _sub(parser)
        if nested:
            for action, sub in nested.items():
                found[(name, action)] = sub
        else:
            found[(name,)] = parser
    return found


def _sub(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def cases(f: dict[str, str]) -> list[list[str]]:
    base = bases(f)
    out: list[list[str]] = []
    for path, parser in subcommands().items():
        assert path in base, f"the walk has no base arguments for {' '.join(path)}"
        args = base[path]
        out.append([*path, *args])                  # the base itself
        for action in parser._actions:
            takes = action.nargs != 0 and not isinstance(action, argparse._HelpAction)
            if not takes:
                continue
            for value in VALUES:
                value = value.format(**f)
                if action.option_strings:
                    out.append([*path, *args, action.option_strings[-1], value])
                else:                               # a positional: replace the first one
                    out.append([*path, value, *args[1:]])
        out.append([*path, *args, "--no-such-option"])
    for argv, _ in NAMED:
        out.append([a.format(**f) for a in argv])
    return out


def run_case(argv: list[str]) -> dict[str, Any]:
    import time

    from appliance.cli import main

    started = time.monotonic()
    out, err = io.StringIO(), io.StringIO()
    error = None
    code: int | None = None
    signal.alarm(CASE_SECONDS)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    except CaseTimeout:
        error = "timeout"
    except BaseException as exc:  # noqa: BLE001  (that is what the walk looks for)
        error = f"{type(exc).__name__}: {exc}"
    finally:
        signal.alarm(0)
    return {"argv": argv, "code": code, "stderr": err.getvalue(), "error": error,
            "seconds": round(time.monotonic() - started, 3)}


def main() -> int:
    work = Path(sys.argv[1])
    shard, shards = (int(x) for x in (sys.argv[2] if len(sys.argv) > 2 else "0/1").split("/"))
    f = fixtures(work)
    os.chdir(work)
    os.environ["HOME"] = str(work)                  # fleet keygen's default directory
    os.environ.pop("WARDTAP_BROKER", None)
    signal.signal(signal.SIGALRM, _alarm)
    all_cases = cases(f)
    results = [dict(run_case(argv), n=n) for n, argv in enumerate(all_cases)
               if n % shards == shard]
    first_named = len(all_cases) - len(NAMED)          # the named cases come last
    named = {first_named + i: needle for i, (_, needle) in enumerate(NAMED)}
    json.dump({"results": results, "named": named}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
