"""What first payloads said, per conversation, for `learn` and `policy drift`: HL7 message
types and applications (MSH-9, MSH-3, MSH-5), DICOM AE titles and proposed SOP classes (the
A-ASSOCIATE-RQ), TLS server names (SNI).

Read from deep-dissection evidence records (appliance.inventory.tshark) of the packets the
fast path sampled, so what is here is what was sampled: a proposal built on it says so.
Bounded: MAX_CONVERSATIONS keys, MAX_VALUES values per field (more are counted, not kept).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from appliance.policy.conditions import SERVICES

MAX_CONVERSATIONS = 20_000
MAX_VALUES = 16

ConvAddr = tuple[str, str, int]          # (initiator IP, responder IP, responder TCP port)


@dataclass
class Seen:
    hl7_types: set[str] = field(default_factory=set)
    hl7_sending: set[str] = field(default_factory=set)
    hl7_receiving: set[str] = field(default_factory=set)
    dicom_calling: set[str] = field(default_factory=set)
    dicom_called: set[str] = field(default_factory=set)
    dicom_sop: set[str] = field(default_factory=set)          # UIDs
    names: set[str] = field(default_factory=set)              # TLS SNI

    def merge(self, other: Seen) -> None:
        for key, values in other.__dict__.items():
            getattr(self, key).update(values)

    @property
    def hl7(self) -> bool:
        return bool(self.hl7_types)

    @property
    def dicom(self) -> bool:
        return bool(self.dicom_calling or self.dicom_sop)


def services_of(uids: Iterable[str]) -> tuple[list[str], list[str]]:
    """(DICOM services, SOP class UIDs no service covers) for proposed abstract syntaxes."""
    services: set[str] = set()
    rest: set[str] = set()
    for uid in uids:
        for name, (exact, prefixes) in SERVICES.items():
            if uid in exact or any(uid.startswith(p) for p in prefixes):
                services.add(name)
                break
        else:
            rest.add(uid)
    return sorted(services), sorted(rest)


def _first(value: str) -> str:
    return value.split("^", 1)[0]


class Payloads:
    """Per conversation, what its first payloads said (fed with evidence records)."""

    def __init__(self) -> None:
        from appliance.inventory.clinical import SOP_CLASSES

        self.by_conv: dict[ConvAddr, Seen] = {}
        self.dropped = 0
        self._uid_of = {name: uid for uid, name in SOP_CLASSES.items()}

    def observe(self, records: Iterable[dict[str, Any]]) -> None:
        for rec in records:
            if rec.get("proto") != "tcp" or not rec.get("src") or not rec.get("dst"):
                continue
            items = [i for i in rec.get("ev", ()) if len(i) >= 3]
            keys = {(i[0], i[1]) for i in items}
            if not keys & {("src", "hl7.sends"), ("src", "dicom.role"), ("src", "tls.sni")}:
                continue
            if ("src", "dicom.role") in keys and not any(
                    i[:3] == ["src", "dicom.role", "SCU"] for i in items):
                continue                         # an A-ASSOCIATE-AC: the RQ says it all
            seen = self._seen((rec["src"], rec["dst"], int(rec.get("dport") or 0)))
            if seen is None:
                continue
            for target, key, value in (i[:3] for i in items):
                into = {("src", "hl7.sends"): seen.hl7_types,
                        ("src", "hl7.app"): seen.hl7_sending,
                        ("dst", "hl7.app"): seen.hl7_receiving,
                        ("src", "dicom.ae"): seen.dicom_calling,
                        ("dst", "dicom.ae"): seen.dicom_called,
                        ("src", "dicom.sop_class"): seen.dicom_sop,
                        ("src", "tls.sni"): seen.names}.get((target, key))
                if into is None or len(into) >= MAX_VALUES:
                    continue
                if key == "hl7.app":
                    value = _first(value)
                elif key == "hl7.sends":
                    value = "^".join(value.split("^")[:2])
                elif key == "dicom.sop_class":
                    value = self._uid_of.get(value, value)
                elif key == "tls.sni":
                    value = value.lower().rstrip(".")
                if value:
                    into.add(value)

    def _seen(self, key: ConvAddr) -> Seen | None:
        seen = self.by_conv.get(key)
        if seen is None:
            if len(self.by_conv) >= MAX_CONVERSATIONS:
                self.dropped += 1
                return None
            seen = self.by_conv[key] = Seen()
        return seen

    def names_of(self, ip: str) -> set[str]:
        """Server names clients asked for at this address (TLS SNI)."""
        out: set[str] = set()
        for (_, dst, _), seen in self.by_conv.items():
            if dst == ip:
                out |= seen.names
        return out

    def conditions(self, convs: Iterable[ConvAddr]) -> tuple[dict[str, list[str]] | None,
                                                             dict[str, list[str]] | None,
                                                             list[str]]:
        """(hl7, dicom, server names) a rule covering these conversations would ask for:
        what their first payloads said. A rule whose conversations were not all seen
        speaking HL7 (or all DICOM) gets no condition: it would deny what was not sampled."""
        total = Seen()
        convs = list(convs)
        kinds = []
        for key in convs:
            seen = self.by_conv.get(key)
            if seen is not None:
                total.merge(seen)
                kinds.append("hl7" if seen.hl7 else "dicom" if seen.dicom else "")
        names = sorted(total.names)
        if not convs or len(kinds) != len(convs) or len(set(kinds)) != 1 or not kinds[0]:
            return None, None, names
        if kinds[0] == "hl7":
            hl7 = {"message_types": sorted(total.hl7_types),
                   "sending": sorted(total.hl7_sending), "receiving": sorted(total.hl7_receiving)}
            return {k: v for k, v in hl7.items() if v}, None, names
        services, other = services_of(total.dicom_sop)
        dicom = {"calling": sorted(total.dicom_calling), "called": sorted(total.dicom_called),
                 "services": services, "sop_classes": other}
        return None, {k: v for k, v in dicom.items() if v}, names
