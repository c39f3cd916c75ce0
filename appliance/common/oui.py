"""MAC vendor (OUI) names from Wireshark's `manuf` file, when one is installed.

Only the OUIs asked for are kept; without a manuf file every lookup answers None and names
fall back to behaviour. `WARDTAP_MANUF` points at another file (same format).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

MANUF_PATHS = ("/usr/share/wireshark/manuf", "/usr/local/share/wireshark/manuf",
               "/opt/homebrew/share/wireshark/manuf")

_SUFFIXES = {"inc", "ltd", "ag", "gmbh", "co", "corp", "corporation", "llc", "sa", "srl", "bv",
             "plc", "limited", "company", "international", "systems", "system", "trading",
             "technologies", "technology", "the", "of", "and", "sector", "kg", "se", "ab",
             "oy", "as", "nv", "spa", "pty", "kk"}


_ALIASES = {"hewlett": "hp", "raspberry": "raspberry-pi", "b-braun": "bbraun"}


def _manuf_path() -> str | None:
    env = os.environ.get("WARDTAP_MANUF")
    if env:
        return env if os.path.isfile(env) else None
    return next((p for p in MANUF_PATHS if os.path.isfile(p)), None)


def vendors(macs: Iterable[str]) -> dict[str, str]:
    """{OUI "00:1a:2b": vendor name} for the OUIs of `macs` found in the manuf file."""
    wanted = {m[:8].lower() for m in macs if m}
    path = _manuf_path()
    if not wanted or path is None:
        return {}
    out: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if len(line) < 9 or line[2] != ":" or line[8] not in "\t ":
                    continue
                oui = line[:8].lower()
                if oui in wanted:
                    parts = line.rstrip("\n").split("\t")
                    out[oui] = (parts[2] if len(parts) > 2 else parts[1]).strip()
    except OSError:
        return {}
    return out


def slug(vendor: str) -> str:
    """A short name for group names: "B.Braun Melsungen AG" -> "bbraun"."""
    words = [w for w in re.split(r"[^a-z0-9]+", vendor.lower()) if w and w not in _SUFFIXES]
    if not words:
        return "vendor"
    name = "-".join(words[:2]) if len(words[0]) <= 3 else words[0]
    return _ALIASES.get(name, name)
