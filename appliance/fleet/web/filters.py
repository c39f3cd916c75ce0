"""Jinja2 filters for the console's templates (formatting only; escaping stays on)."""

from __future__ import annotations

import json
import time
from typing import Any


def when(ts: Any) -> str:
    if not isinstance(ts, (int, float)) or isinstance(ts, bool):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def age(ts: Any, now: float | None = None) -> str:
    if not isinstance(ts, (int, float)) or isinstance(ts, bool) or not ts:
        return "never"
    seconds = max(0.0, (time.time() if now is None else now) - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return f"{seconds:.0f}s ago"


def num(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "-" if value is None else str(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:,.2f}"


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)


def short(value: Any, limit: int = 12) -> str:
    text = "" if value is None else str(value)
    return text[:limit]


def extra(device: dict[str, Any], known: tuple[str, ...] = (
        "mac", "vendor", "class", "class_confidence", "confidence", "names", "ipv4", "ipv6",
        "vlan", "first_seen", "last_seen", "violations", "evidence", "reasons",
        "rules")) -> list[tuple[str, str]]:
    """Fields of a reported device the console has no column for (e.g. make, model,
    version), shown as text."""
    out = []
    for key, value in sorted(device.items()):
        if key in known or value in (None, "", [], {}):
            continue
        out.append((str(key)[:64], value if isinstance(value, str) else
                    json.dumps(value, default=str)[:300]))
    return out


def evidence(device: dict[str, Any]) -> list[str]:
    """Why the device got its class: rules, reasons or evidence lists, whichever it has."""
    items: list[str] = []
    for key in ("evidence", "reasons", "rules"):
        value = device.get(key)
        if isinstance(value, dict):
            items += [f"{k}: {v if isinstance(v, str) else json.dumps(v, default=str)}"
                      for k, v in value.items()]
        elif isinstance(value, list):
            items += [v if isinstance(v, str) else json.dumps(v, default=str) for v in value]
        elif isinstance(value, str):
            items.append(value)
    return [i[:300] for i in items[:20]]


def policy_sha(text: str) -> str:
    """The SHA-256 an appliance reports for this policy text (what an approval names)."""
    from appliance.fleet.rollout import sha256

    return sha256(text)


FILTERS = {"policy_sha": policy_sha, "when": when, "age": age, "num": num, "pretty": pretty,
           "short": short, "extra": extra, "evidence": evidence}
