"""What clinical data each device sends and receives, to and from whom, clear or encrypted.

The foundation of a risk file (HIPAA transmission security, IEC 80001-1): per device, one
entry per (direction, peer, protocol, encrypted) with the message types or DICOM commands
seen, whether they carry patient data, and first/last seen. Read from evidence records:

- HL7 over MLLP in the clear: MSH-9 of each message (ORU^R01 vitals, ADT^A01 admissions...).
  Acknowledgements and master-file messages carry no patient data.
- DICOM in the clear: the DIMSE commands (C-STORE of images, C-FIND queries, MPPS N-CREATE...).
  C-ECHO carries no patient data.
- TLS to a port that `[dataflows]` in the rule file names (HL7 on 2575/2576/6661-6664, DICOM
  on 104/11112/2762): that kind of data, encrypted. Only the handshake is seen; the content
  is inferred from the service, and says so ("over TLS").

A device that sends or receives patient data in the clear gets the flag
`unencrypted_patient_data`; the first time a sender, peer and protocol are seen in the
clear, a `patient_data_unencrypted` event goes to every output (the fleet included).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MAX_FLOWS = 32               # data-flow entries per device (more are counted, not kept)
MAX_WHAT = 8                 # message types / commands kept per entry
NO_PATIENT_DATA = ("ACK", "MCF", "MFN", "MFK", "MFQ", "NMD", "NMQ", "C-ECHO")

FlowKey = tuple[str, str, str, bool]        # (direction, peer ip, protocol, encrypted)


def carries_patient_data(what: str) -> bool:
    return not what.startswith(NO_PATIENT_DATA)


def flows_in_record(rec: Mapping[str, Any], tls_ports: Mapping[str, str]
                    ) -> list[tuple[str, str, bool]]:
    """(protocol, what, encrypted) that one evidence record shows going src -> dst."""
    out: list[tuple[str, str, bool]] = []
    for item in rec.get("ev", ()):
        if len(item) != 5 or item[0] != "src":
            continue
        key, value = item[1], item[2]
        if key == "hl7.sends":
            out.append(("HL7", value, False))
        elif key == "dicom.sends":
            out.append(("DICOM", value, False))
        elif key in ("tls.sni", "tls.ja3") and rec.get("proto") == "tcp":
            kind = tls_ports.get(f"tcp/{rec.get('dport')}")
            if kind and not any(o[0] == kind for o in out):
                out.append((kind, f"{kind} over TLS (port {rec.get('dport')})", True))
    return out


class DataFlows:
    """One device's data flows (bounded); `add` says whether a clear patient flow is new."""

    def __init__(self, entries: dict[FlowKey, dict[str, Any]] | None = None) -> None:
        self.entries: dict[FlowKey, dict[str, Any]] = entries or {}
        self.dropped = 0

    def add(self, direction: str, peer: str, peer_mac: str | None, protocol: str, what: str,
            encrypted: bool, ts: float) -> bool:
        key = (direction, peer, protocol, encrypted)
        entry = self.entries.get(key)
        patient = encrypted or carries_patient_data(what)
        new_clear = False
        if entry is None:
            if len(self.entries) >= MAX_FLOWS:
                self.dropped += 1
                return False
            entry = self.entries[key] = {
                "direction": direction, "peer": peer, "peer_mac": peer_mac,
                "protocol": protocol, "encrypted": encrypted, "patient_data": False,
                "what": [], "first_seen": ts, "last_seen": ts, "count": 0}
        if patient and not entry["patient_data"]:
            entry["patient_data"] = True
            new_clear = not encrypted
        if what not in entry["what"] and len(entry["what"]) < MAX_WHAT:
            entry["what"].append(what)
        entry["count"] += 1
        entry["first_seen"] = min(entry["first_seen"], ts)
        entry["last_seen"] = max(entry["last_seen"], ts)
        if peer_mac and not entry.get("peer_mac"):
            entry["peer_mac"] = peer_mac
        return new_clear

    @property
    def unencrypted_patient_data(self) -> bool:
        return any(e["patient_data"] and not e["encrypted"] for e in self.entries.values())

    def as_list(self) -> list[dict[str, Any]]:
        return sorted((dict(e, what=list(e["what"])) for e in self.entries.values()),
                      key=lambda e: (e["first_seen"], e["direction"], e["peer"]))

    @classmethod
    def from_list(cls, items: list[dict[str, Any]]) -> DataFlows:
        entries = {}
        for e in items[:MAX_FLOWS]:
            entries[(e["direction"], e["peer"], e["protocol"], bool(e["encrypted"]))] = dict(e)
        return cls(entries)
