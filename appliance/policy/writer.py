"""Write allow-list policies (docs/policy.md) that people review: TOML with comments.

`wardtap learn` and `wardtap policy import-mud` build a :class:`PolicyDraft` and render it
here, so both produce the same layout: a header, the settings, the groups, the rules, every
table preceded by comments saying where it came from. A group that only the operator can fill
in (a MUD controller no one configured) is a *placeholder*: written commented out, with
every rule that names it, so the file stays valid and allows nothing it cannot check.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime

from appliance.common.text import shown
from appliance.errors import WardtapError

_BAD = re.compile(r"[^A-Za-z0-9_.-]+")


def iso(ts: float) -> str:
    """A capture timestamp (seconds) as ISO 8601 UTC, to the second."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def safe_name(text: str, limit: int = 64) -> str:
    """A valid group or rule name (1-64 of letters, digits, '_', '.', '-') from any text."""
    name = _BAD.sub("-", text.replace("::", "--").replace("/", "_")).strip("-") or "x"
    if name == "any":
        name = "any-host"
    if len(name) > limit:
        digest = hashlib.sha256(text.encode()).hexdigest()[:6]
        name = name[:limit - 7].rstrip("-.") + "-" + digest
    return name


def unique(name: str, taken: set[str]) -> str:
    """`name`, or `name-2`, `name-3`... whichever is free; the result is added to `taken`."""
    out, n = name, 1
    while out in taken:
        n += 1
        suffix = f"-{n}"
        out = name[:64 - len(suffix)] + suffix
    taken.add(out)
    return out


@dataclass
class GroupSpec:
    name: str
    mac: list[str] = field(default_factory=list)
    oui: list[str] = field(default_factory=list)
    ip: list[str] = field(default_factory=list)
    vlan: list[int] = field(default_factory=list)
    names: list[str] = field(default_factory=list)          # DNS names (docs/policy.md)
    role: list[str] = field(default_factory=list)           # server roles (inventory)
    maker: list[str] = field(default_factory=list)          # makes / MAC vendors (inventory)
    mud_controller: list[str] = field(default_factory=list)  # [mud.controllers] URIs
    description: str | None = None
    comments: list[str] = field(default_factory=list)      # lines above the table
    notes: dict[str, str] = field(default_factory=dict)    # member -> comment after it
    placeholder: bool = False                               # members to be filled in

    @property
    def empty(self) -> bool:
        return not (self.mac or self.oui or self.ip or self.vlan or self.names or self.role
                    or self.maker or self.mud_controller)


@dataclass
class RuleSpec:
    name: str
    sources: list[str]
    destinations: list[str]
    proto: str | int
    ports: list[int | str] | None = None
    icmp_types: list[int | str] | None = None
    initiate: str = "from"
    description: str | None = None
    comments: list[str] = field(default_factory=list)
    disabled: bool = False          # written commented out (e.g. names a placeholder)
    enabled: bool = True            # False: written with `enabled = false` (left out for
    #                                 review; one line to change to allow it)
    hl7: dict[str, list[str]] | None = None      # clinical conditions (docs/policy.md)
    dicom: dict[str, list[str]] | None = None


@dataclass
class PolicyDraft:
    name: str
    version: int = 1
    arp: str = "allow"
    non_ip: str = "allow"
    fragment_unmatched: str = "deny"
    header: list[str] = field(default_factory=list)
    setting_notes: dict[str, str] = field(default_factory=dict)
    groups: list[GroupSpec] = field(default_factory=list)
    rules: list[RuleSpec] = field(default_factory=list)


def _s(value: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's; DEL is the one TOML also forbids)."""
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def _key(name: str) -> str:
    """A table key: bare when it can be, quoted when it has dots (TOML would nest it)."""
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else _s(name)


def _v(value: int | str) -> str:
    return str(value) if isinstance(value, int) else _s(value)


def _comment(text: str, indent: str = "") -> list[str]:
    """Comment lines; control characters (TOML forbids them in comments, and a MUD file's
    text may carry them) shown as escapes."""
    return [f"{indent}# {shown(line)}".rstrip() for line in text.splitlines() or [""]]


def _array(key: str, values: list[int] | list[str] | list[int | str],
           notes: dict[str, str]) -> list[str]:
    if not any(str(v) in notes for v in values):
        line = f"{key} = [{', '.join(_v(v) for v in values)}]"
        if len(line) <= 96:
            return [line]
        out, row = [f"{key} = ["], "   "
        for v in values:                       # many values, no notes: wrapped, not one a line
            item = f" {_v(v)},"
            if len(row) + len(item) > 96:
                out.append(row)
                row = "   "
            row += item
        return [*out, row, "]"]
    out = [f"{key} = ["]
    for v in values:
        note = notes.get(str(v))
        out.append(f"    {_v(v)},{'  # ' + shown(note) if note else ''}")
    out.append("]")
    return out


def render(draft: PolicyDraft) -> str:
    """The policy as TOML text, comments included. Deterministic for a given draft."""
    out: list[str] = []
    for line in draft.header:
        out.extend(_comment(line))
    out += ["", "[policy]", f"name = {_s(draft.name)}", f"version = {draft.version}"]
    for key in ("arp", "non_ip", "fragment_unmatched"):
        note = draft.setting_notes.get(key)
        out.append(f"{key} = {_s(getattr(draft, key))}{'  # ' + shown(note) if note else ''}")
    placeholders = {g.name for g in draft.groups if g.placeholder}
    for g in draft.groups:
        out.append("")
        body: list[str] = []
        for line in g.comments:
            body.extend(_comment(line))
        body.append(f"[groups.{_key(g.name)}]")
        if g.description:
            body.append(f"description = {_s(g.description)}")
        for key in ("mac", "oui", "ip", "vlan", "names", "role", "maker", "mud_controller"):
            values = getattr(g, key)
            if values:
                body.extend(_array(key, values, g.notes))
        if g.placeholder:
            if g.empty:
                body.append('ip = []            # FILL IN: addresses or CIDR blocks')
            out.extend(f"# {line}" if not line.startswith("#") else line for line in body)
        else:
            out.extend(body)
    for r in draft.rules:
        out.append("")
        disabled = r.disabled or bool(placeholders & set(r.sources + r.destinations))
        body = []
        for line in r.comments:
            body.extend(_comment(line))
        body += ["[[rules]]", f"name = {_s(r.name)}"]
        if r.description:
            body.append(f"description = {_s(r.description)}")
        for key, ends in (("from", r.sources), ("to", r.destinations)):
            body.append(f"{key} = {_s(ends[0])}" if len(ends) == 1
                        else f"{key} = [{', '.join(_s(e) for e in ends)}]")
        body.append(f"proto = {_v(r.proto)}")
        if r.ports:
            body.extend(_array("ports", r.ports, {}))
        if r.icmp_types:
            body.extend(_array("icmp_types", r.icmp_types, {}))
        if r.initiate != "from":
            body.append(f"initiate = {_s(r.initiate)}")
        for key, cond in (("hl7", r.hl7), ("dicom", r.dicom)):
            if cond:
                body.append(f"{key} = {{ " + ", ".join(
                    f"{k} = [{', '.join(_s(v) for v in values)}]"
                    for k, values in cond.items() if values) + " }")
        if not r.enabled:
            body.append("enabled = false    # left out for review: true allows it")
        if disabled:
            out.extend(line if line.startswith("#") else f"# {line}" for line in body)
        else:
            out.extend(body)
    return "\n".join(out) + "\n"


def write_text(path: str | None, text: str) -> None:
    """Write `text` to `path` atomically (all or nothing), or to stdout when path is None."""
    if path is None or path == "-":
        print(text, end="")
        return
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".wardtap-", dir=directory)
    except OSError as exc:
        raise WardtapError(f"{path}: cannot write: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        os.unlink(tmp)
        raise WardtapError(f"{path}: cannot write: {exc.strerror}") from None
