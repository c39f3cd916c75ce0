"""Checked option values for every command: a bad value is one clear line, never a traceback.

Each function here is an argparse `type=`: it returns the value or raises
argparse.ArgumentTypeError with a sentence a person can act on. The parser (WardtapParser)
prints it as one line, `wardtap: error: replay --flows: ...`, and exits 2.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from appliance.common.records import mac_bytes

# The fast path's table limits (fastpath/core.pyx: Classifier.__cinit__).
FLOWS_MIN, FLOWS_MAX = 8, 1 << 28
DEVICES_MIN, DEVICES_MAX = 16, 1 << 24


class WardtapParser(argparse.ArgumentParser):
    """argparse that reports a usage mistake in one line (with where to read more)."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.replace("wardtap", "", 1).strip()
        match = re.match(r"argument ([^:]+): (.*)$", message, re.S)
        if match:          # a bad value: the message says what is wrong with it
            names = match.group(1).split("/")
            option = next((n for n in names if n.startswith("--")), names[0])
            line = f"{command} {option}: {match.group(2)}".strip()
        else:              # a missing or unknown argument: point at the help
            line = f"{command + ': ' if command else ''}{message} (see `{self.prog} --help`)"
        print(f"wardtap: error: {' '.join(line.split())}", file=sys.stderr)
        sys.exit(2)


def _whole(text: str) -> int:
    try:
        return int(text.replace("_", "").replace(",", ""), 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def count(lo: int, hi: int, what: str = "") -> Callable[[str], int]:
    """A whole number from lo to hi."""
    def parse(text: str) -> int:
        value = _whole(text)
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(
                f"{value:,} is out of range: {what + ' ' if what else ''}must be "
                f"{lo:,} to {hi:,}")
        return value
    parse.__name__ = "count"
    return parse


def flows(text: str) -> int:
    return count(FLOWS_MIN, FLOWS_MAX, "flow table slots (128 bytes each)")(text)


def devices(text: str) -> int:
    return count(DEVICES_MIN, DEVICES_MAX, "device table slots")(text)


def seconds(lo: float = 0.0, hi: float = 86400.0 * 366, *, zero: bool = False,
            unit: str = "seconds") -> Callable[[str], float]:
    """A number of seconds (or another `unit`) above lo (or equal to it when `zero`), at
    most hi."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of {unit}") from None
        if not math.isfinite(value) or value > hi or value < lo or (value == lo and not zero):
            bound = f"{lo:g} or more" if zero else f"more than {lo:g}"
            raise argparse.ArgumentTypeError(f"{text} {unit}: must be {bound} and at most "
                                             f"{hi:g}")
        return value
    parse.__name__ = "seconds"
    return parse


def input_file(text: str) -> str:
    """A file that exists and can be read."""
    if not text:
        raise argparse.ArgumentTypeError("empty file name")
    if not os.path.exists(text):
        raise argparse.ArgumentTypeError(f"{text}: no such file")
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text}: is a directory, not a file")
    if not os.access(text, os.R_OK):
        raise argparse.ArgumentTypeError(f"{text}: permission denied")
    return text


def output_file(text: str) -> str:
    """A file that can be written: "-" (standard output), or a path in an existing,
    writable directory that is not itself a directory."""
    if text == "-":
        return text
    if not text:
        raise argparse.ArgumentTypeError("empty file name")
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text}: is a directory; give a file name")
    parent = os.path.dirname(os.path.abspath(text))
    if not os.path.isdir(parent):
        raise argparse.ArgumentTypeError(f"{text}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK) or (os.path.exists(text)
                                          and not os.access(text, os.W_OK)):
        raise argparse.ArgumentTypeError(f"{text}: permission denied")
    return text


def fleet_db(text: str) -> str:
    """A fleet database to write: postgresql://... (checked when connecting), or a SQLite
    file."""
    if text.startswith(("postgresql://", "postgres://")):
        return text
    return output_file(text)


def fleet_db_to_read(text: str) -> str:
    """A fleet database to read: postgresql://..., or an existing SQLite file."""
    if text.startswith(("postgresql://", "postgres://")):
        return text
    return store_file(text)


def output_dir(text: str) -> str:
    """A directory to write into: an existing writable one, or one that can be created."""
    if not text:
        raise argparse.ArgumentTypeError("empty directory name")
    if os.path.exists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text}: is a file, not a directory")
    probe = text
    while not os.path.exists(probe):
        parent = os.path.dirname(os.path.abspath(probe))
        if parent == os.path.abspath(probe):
            break
        probe = parent
    if not os.path.isdir(probe):
        raise argparse.ArgumentTypeError(f"{text}: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{text}: cannot write in {probe} (permission "
                                         "denied or a read-only file system)")
    return text


def make_dir(path: str, mode: int = 0o755) -> None:
    """Create `path` (and its parents), or say in one line why not."""
    from appliance.errors import WardtapError

    try:
        os.makedirs(path, mode=mode, exist_ok=True)
    except OSError as exc:
        raise WardtapError(f"{path}: cannot write there: {exc.strerror}") from None


def store_file(text: str) -> str:
    """An existing wardtap store (SQLite) to read."""
    input_file(text)
    with open(text, "rb") as fh:
        head = fh.read(16)
    if head and head != b"SQLite format 3\x00":
        raise argparse.ArgumentTypeError(f"{text}: not a wardtap store (not an SQLite file)")
    return text


def mac(text: str) -> str:
    """A MAC address in any common form (00:11:.., 00-11-.., 0011.2233.4455, bare hex),
    returned as lower-case colon form."""
    try:
        return mac_bytes(text).hex(":")
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a MAC address (like dc:a6:32:7e:5b:19)") from None


def time_point(text: str) -> float:
    """A point in time: ISO 8601 (local time unless it names a zone), or relative to now
    ("15m", "2h", "3d" ago), or seconds since the epoch."""
    from appliance.common.when import parse_time

    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def broker_url(text: str) -> str:
    """mqtt://HOST[:PORT] or mqtts://HOST[:PORT]."""
    from appliance.contract.broker import ContractError, parse_url

    try:
        parse_url(text)
    except ContractError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def syslog_url(text: str) -> str:
    """udp://HOST[:PORT], tcp://HOST[:PORT] or tls://HOST[:PORT]."""
    from appliance.outputs.syslog import SyslogError, parse_syslog_url

    try:
        parse_syslog_url(text)
    except SyslogError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def ident(what: str) -> Callable[[str], str]:
    """A site or appliance id (letters, digits, '.', '_', '-')."""
    def parse(text: str) -> str:
        from appliance.contract.broker import ContractError, check_id

        try:
            return check_id(text, what)
        except ContractError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    parse.__name__ = what
    return parse


def target(text: str) -> str:
    """SITE or SITE/APPLIANCE."""
    from appliance.contract.broker import ContractError, parse_target

    try:
        parse_target(text)
    except ContractError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def device_class(text: str) -> str:
    """A device class name from the class rules (appliance/data/device-classes.toml)."""
    from appliance.inventory.classes import ClassRules

    known = list(ClassRules.load().classes)
    for name in known:
        if name.lower() == text.strip().lower():
            return name
    raise argparse.ArgumentTypeError(f"{text!r} is not a device class (one of: "
                                     f"{', '.join(known)})")


def choice_text(choices: list[str], what: str) -> Callable[[str], str]:
    """One of `choices` (case-insensitive), with the list in the error."""
    def parse(text: str) -> str:
        low = text.lower()
        if low not in choices:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {what} (one of: "
                                             f"{', '.join(choices)})")
        return low
    parse.__name__ = what
    return parse


def add_output_format(p: argparse.ArgumentParser, csv: bool = False,
                      wide: bool = True) -> None:
    """--json (for programs), optionally --csv, and --wide (tables at full width)."""
    form = p.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="JSON for programs")
    if csv:
        form.add_argument("--csv", action="store_true", help="CSV, one row per record")
    if wide:
        p.add_argument("--wide", action="store_true",
                       help="tables at full width (default: fit the terminal)")


def option_names(parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Option string -> action, for tests that walk every option."""
    return {s: a for a in parser._actions for s in a.option_strings}
