"""What a policy asks beyond addresses: DNS names of groups, HL7 and DICOM rule conditions.

Validated here (every error names the field), compiled here into the fast path's tables
(fastpath CompiledPolicy names / ruleinfo / clinical). docs/policy.md, "Names" and
"Clinical rules", says what they mean on the wire.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastpath.core import CLINICAL_FIELDS, WATCH_KINDS

# A DNS name as a policy writes it: letters, digits, '-', '_' labels; `*.` for "under".
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_DNS = re.compile(rf"^(\*\.)?{_LABEL}(\.{_LABEL})*\.?$")
_HL7_TYPE = re.compile(r"^[A-Z0-9]{3}(\^([A-Z0-9]{3}|\*))?$")
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
CLIN_TEXT = 64
NAME_TTL = (30, 86400)        # default bounds of a binding's life, seconds

# DICOM services by the SOP classes an association proposes for them (PS3.4): exact UIDs,
# and UID prefixes (every storage SOP class is under 1.2.840.10008.5.1.4.1.1.).
SERVICES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "C-ECHO": (("1.2.840.10008.1.1",), ()),
    "C-STORE": ((), ("1.2.840.10008.5.1.4.1.1.",)),
    "C-FIND": (("1.2.840.10008.5.1.4.1.2.1.1", "1.2.840.10008.5.1.4.1.2.2.1",
                "1.2.840.10008.5.1.4.1.2.3.1", "1.2.840.10008.5.1.4.31"), ()),
    "C-MOVE": (("1.2.840.10008.5.1.4.1.2.1.2", "1.2.840.10008.5.1.4.1.2.2.2",
                "1.2.840.10008.5.1.4.1.2.3.2"), ()),
    "C-GET": (("1.2.840.10008.5.1.4.1.2.1.3", "1.2.840.10008.5.1.4.1.2.2.3",
               "1.2.840.10008.5.1.4.1.2.3.3"), ()),
}

Fail = Callable[[str, str, "int | None"], Exception]


@dataclass(frozen=True)
class Hl7Condition:
    """The first HL7 message of a flow: MSH-9 among `message_types` ("ORU^R01", "ADT^*"),
    MSH-3 among `sending`, MSH-5 among `receiving` (first components); empty: any."""

    message_types: tuple[str, ...] = ()
    sending: tuple[str, ...] = ()
    receiving: tuple[str, ...] = ()

    def describe(self) -> str:
        parts = [f"{k}={'|'.join(v)}" for k, v in (("type", self.message_types),
                                                   ("from-app", self.sending),
                                                   ("to-app", self.receiving)) if v]
        return "hl7(" + ", ".join(parts) + ")"


@dataclass(frozen=True)
class DicomCondition:
    """A flow's A-ASSOCIATE-RQ: calling and called AE titles among those listed, every
    proposed abstract syntax a SOP class of `services` or among `sop_classes`; empty: any."""

    calling: tuple[str, ...] = ()
    called: tuple[str, ...] = ()
    services: tuple[str, ...] = ()
    sop_classes: tuple[str, ...] = ()

    def describe(self) -> str:
        parts = [f"{k}={'|'.join(v)}" for k, v in (("calling", self.calling),
                                                   ("called", self.called),
                                                   ("services", self.services),
                                                   ("sop", self.sop_classes)) if v]
        return "dicom(" + ", ".join(parts) + ")"


def dns_name(value: Any, where: str, line: int | None, fail: Fail) -> str:
    """A group's DNS name, lower case, without the final dot."""
    if (not isinstance(value, str) or len(value.rstrip(".")) > 253 or not _DNS.match(value)
            or value.startswith("*.") and "." not in value[2:].rstrip(".")):
        raise fail(f"{value!r} is not a DNS name like \"pumps.vendor.example\" or "
                   "\"*.vendor.example\"", where, line)
    return value.rstrip(".").lower()


def _strings(spec: dict[str, Any], key: str, where: str, line: int | None, fail: Fail,
             check: Callable[[str], bool], what: str) -> tuple[str, ...]:
    value = spec.get(key, [])
    items = value if isinstance(value, list) else [value]
    out = []
    for item in items:
        if not isinstance(item, str) or not check(item):
            raise fail(f"{item!r} is not {what}", f"{where}.{key}", line)
        out.append(item)
    return tuple(out)


def _printable(limit: int) -> Callable[[str], bool]:
    return lambda s: 0 < len(s.encode()) <= limit and s.isascii() and s.isprintable() \
        and s == s.strip()


def hl7_condition(raw: Any, where: str, line: int | None, fail: Fail) -> Hl7Condition:
    if not isinstance(raw, dict):
        raise fail("must be a table like { message_types = [\"ORU^R01\"] }", where, line)
    allowed = {"message_types", "sending", "receiving"}
    for key in raw:
        if key not in allowed:
            raise fail(f"unknown field (expected one of: {', '.join(sorted(allowed))})",
                       f"{where}.{key}", line)
    cond = Hl7Condition(
        _strings(raw, "message_types", where, line, fail, lambda s: bool(_HL7_TYPE.match(s)),
                 "an HL7 message type like \"ORU^R01\" or \"ADT^*\""),
        _strings(raw, "sending", where, line, fail, lambda s: _printable(CLIN_TEXT)(s)
                 and "^" not in s, "an application name (MSH-3's first component)"),
        _strings(raw, "receiving", where, line, fail, lambda s: _printable(CLIN_TEXT)(s)
                 and "^" not in s, "an application name (MSH-5's first component)"))
    if not (cond.message_types or cond.sending or cond.receiving):
        raise fail("names nothing to check (give message_types, sending or receiving)",
                   where, line)
    return cond


def dicom_condition(raw: Any, where: str, line: int | None, fail: Fail) -> DicomCondition:
    if not isinstance(raw, dict):
        raise fail("must be a table like { called = [\"PACS\"], services = [\"C-STORE\"] }",
                   where, line)
    allowed = {"calling", "called", "services", "sop_classes"}
    for key in raw:
        if key not in allowed:
            raise fail(f"unknown field (expected one of: {', '.join(sorted(allowed))})",
                       f"{where}.{key}", line)
    ae = _printable(16)
    cond = DicomCondition(
        _strings(raw, "calling", where, line, fail, ae, "an AE title (1-16 characters)"),
        _strings(raw, "called", where, line, fail, ae, "an AE title (1-16 characters)"),
        _strings(raw, "services", where, line, fail, lambda s: s in SERVICES,
                 f"a DICOM service ({', '.join(SERVICES)})"),
        _strings(raw, "sop_classes", where, line, fail,
                 lambda s: len(s) <= CLIN_TEXT and bool(_UID.match(s)), "a SOP class UID"))
    if not (cond.calling or cond.called or cond.services or cond.sop_classes):
        raise fail("names nothing to check (give calling, called, services or sop_classes)",
                   where, line)
    return cond


def compile_conditions(rules: Any, group_names: Any, group_bits: Callable[..., int]
                       ) -> tuple[list[tuple[bytes, bool, int]],
                                  list[tuple[int, int, int]],
                                  list[tuple[int, int, bytes]]]:
    """The fast path's names, ruleinfo and clinical tables.

    `group_names`: [(group id, names)]; `group_bits(rule)`: the bitset of the groups on a
    rule's responder side (both sides when either may start)."""
    names = [(n.removeprefix("*.").encode(), n.startswith("*."), gid)
             for gid, group in group_names for n in group]
    ruleinfo: list[tuple[int, int, int]] = []
    clinical: list[tuple[int, int, bytes]] = []
    for index, rule in enumerate(rules):
        values: list[tuple[str, str]] = []
        watch = 0
        if rule.hl7 is not None:
            watch = WATCH_KINDS["hl7"]
            for t in rule.hl7.message_types:
                values.append(("hl7_type_prefix", t[:-1]) if t.endswith("^*")
                              else ("hl7_type", t))
            values += [("hl7_sending", s) for s in rule.hl7.sending]
            values += [("hl7_receiving", s) for s in rule.hl7.receiving]
        elif rule.dicom is not None:
            watch = WATCH_KINDS["dicom"]
            values += [("dicom_calling", s) for s in rule.dicom.calling]
            values += [("dicom_called", s) for s in rule.dicom.called]
            for service in rule.dicom.services:
                exact, prefixes = SERVICES[service]
                values += [("dicom_sop", u) for u in exact]
                values += [("dicom_sop_prefix", u) for u in prefixes]
            values += [("dicom_sop", u) for u in rule.dicom.sop_classes]
        fields = 0
        for field_name, text in values:
            code = CLINICAL_FIELDS[field_name]
            fields |= 1 << code
            clinical.append((index, code, text.encode()))
        ruleinfo.append((group_bits(rule), watch, fields))
    return names, ruleinfo, clinical
