"""HL7 v2 message headers and DICOM upper-layer PDUs, read from raw TCP payloads.

Pure Python, every read bounds-checked, nothing allocated beyond a bounded head of the
payload. Only what identifies a device and what kind of data it exchanges is read: the MSH
segment of an HL7 message (never PID, OBX, ...), and of DICOM the association (A-ASSOCIATE
RQ/AC/RJ) and the command set of a P-DATA PDU (never a data set: no patient data).

Bad input never raises: each parser returns None with a reason name, counted by its caller.
Used by the triage (a key per piece of new evidence) and the dissection worker (evidence).
"""

from __future__ import annotations

from dataclasses import dataclass

MLLP_START = 0x0B
HL7_HEAD = 1024           # the MSH segment is looked for in the first 1 KiB only
FIELD_LIMIT = 64          # characters kept per component
COMPONENTS = 4            # components kept per field (HD: namespace^universal id^type)
ASSOC_LIMIT = 65536       # an A-ASSOCIATE PDU longer than this is not believed
ITEMS_LIMIT = 128         # items read from one association
SYNTAXES_LIMIT = 16       # abstract syntaxes kept
COMMAND_LIMIT = 64        # elements read from one command set


def clean(text: str, limit: int = FIELD_LIMIT) -> str:
    """Printable characters only (no control characters reach a name), stripped, bounded."""
    return "".join(c for c in text if c.isprintable()).strip()[:limit]


# --- HL7 v2 ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Msh:
    """The header of one HL7 v2 message; fields are tuples of components."""

    sending_app: tuple[str, ...]
    sending_facility: tuple[str, ...]
    receiving_app: tuple[str, ...]
    receiving_facility: tuple[str, ...]
    message_type: str                 # "ORU^R01" (trigger event kept, structure dropped)
    version: str

    @property
    def is_ack(self) -> bool:
        return self.message_type.startswith(("ACK", "MCF"))

    def key(self) -> tuple[str, ...]:
        """What would be new evidence: names, facilities, message type, version."""
        return ("^".join(self.sending_app), "^".join(self.sending_facility),
                "^".join(self.receiving_app), "^".join(self.receiving_facility),
                self.message_type, self.version)


def parse_msh(payload: bytes) -> tuple[Msh | None, str]:
    """(the MSH of an MLLP-framed HL7 message, "") or (None, why not)."""
    if len(payload) < 2 or payload[0] != MLLP_START:
        return None, "hl7_no_mllp"
    head = payload[1:1 + HL7_HEAD]
    if not head.startswith(b"MSH") or len(head) < 9:
        return None, "hl7_no_msh"
    fs = head[3:4]
    comp = head[4:5]
    # MSH-1 is the field separator, MSH-2 starts with the component separator; both must be
    # punctuation and differ, else the message's own encoding characters cannot be trusted
    if (not _punct(fs) or not _punct(comp) or fs == comp):
        return None, "hl7_bad_encoding"
    end = len(head)
    for stop in (b"\r", b"\n", b"\x1c"):
        at = head.find(stop)
        if 0 <= at < end:
            end = at
    segment = head[:end].decode("utf-8", "replace")
    fields = segment.split(fs.decode("latin-1"))
    if len(fields) < 9:
        return None, "hl7_short_msh"
    sep = comp.decode("latin-1")

    def components(i: int) -> tuple[str, ...]:
        if i >= len(fields):
            return ()
        parts = tuple(clean(c) for c in fields[i].split(sep)[:COMPONENTS])
        while parts and not parts[-1]:
            parts = parts[:-1]
        return parts

    message_type = "^".join(p for p in components(8)[:2] if p)
    if not message_type:
        return None, "hl7_no_message_type"
    version = components(11)[0] if components(11) else ""
    return Msh(components(2), components(3), components(4), components(5), message_type,
               version), ""


def _punct(b: bytes) -> bool:
    return len(b) == 1 and 0x21 <= b[0] <= 0x7E and not chr(b[0]).isalnum()


def msh_evidence(msh: Msh) -> list[list[str]]:
    """[target, key, value, source, scope] for one message header."""
    ev: list[list[str]] = []

    def add(target: str, key: str, value: str, source: str) -> None:
        if value:
            ev.append([target, key, value, source, "ip"])

    add("src", "hl7.app", "^".join(msh.sending_app), "hl7 MSH-3 (sending application)")
    add("src", "hl7.facility", "^".join(msh.sending_facility), "hl7 MSH-4 (sending facility)")
    add("dst", "hl7.app", "^".join(msh.receiving_app), "hl7 MSH-5 (receiving application)")
    add("dst", "hl7.facility", "^".join(msh.receiving_facility),
        "hl7 MSH-6 (receiving facility)")
    add("src", "hl7.sends", msh.message_type, "hl7 MSH-9 (message type)")
    add("dst", "hl7.receives", msh.message_type, "hl7 MSH-9 (message type)")
    add("src", "hl7.version", msh.version, "hl7 MSH-12 (version)")
    return ev


# --- DICOM upper layer -----------------------------------------------------------------------

PDU_NAMES = {1: "A-ASSOCIATE-RQ", 2: "A-ASSOCIATE-AC", 3: "A-ASSOCIATE-RJ", 4: "P-DATA-TF",
             5: "A-RELEASE-RQ", 6: "A-RELEASE-RP", 7: "A-ABORT"}
COMMANDS = {0x0001: "C-STORE", 0x0010: "C-GET", 0x0020: "C-FIND", 0x0021: "C-MOVE",
            0x0030: "C-ECHO", 0x0100: "N-EVENT-REPORT", 0x0110: "N-GET", 0x0120: "N-SET",
            0x0130: "N-ACTION", 0x0140: "N-CREATE", 0x0150: "N-DELETE", 0x0FFF: "C-CANCEL"}
# SOP classes by UID: the standard's names (PS3.6 annex A) of the ones a ward uses
SOP_CLASSES = {
    "1.2.840.10008.1.1": "Verification SOP Class",
    "1.2.840.10008.1.20.1": "Storage Commitment Push Model SOP Class",
    "1.2.840.10008.3.1.2.3.3": "Modality Performed Procedure Step SOP Class",
    "1.2.840.10008.5.1.4.1.1.1": "Computed Radiography Image Storage",
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.2": "Digital Mammography X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.2": "CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.3.1": "Ultrasound Multi-frame Image Storage",
    "1.2.840.10008.5.1.4.1.1.4": "MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.6.1": "Ultrasound Image Storage",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.9.1.1": "12-lead ECG Waveform Storage",
    "1.2.840.10008.5.1.4.1.1.12.1": "X-Ray Angiographic Image Storage",
    "1.2.840.10008.5.1.4.1.1.20": "Nuclear Medicine Image Storage",
    "1.2.840.10008.5.1.4.1.1.88.11": "Basic Text SR Storage",
    "1.2.840.10008.5.1.4.1.1.88.33": "Comprehensive SR Storage",
    "1.2.840.10008.5.1.4.1.1.104.1": "Encapsulated PDF Storage",
    "1.2.840.10008.5.1.4.1.1.128": "Positron Emission Tomography Image Storage",
    "1.2.840.10008.5.1.4.1.2.1.1": "Patient Root Query/Retrieve Information Model - FIND",
    "1.2.840.10008.5.1.4.1.2.1.2": "Patient Root Query/Retrieve Information Model - MOVE",
    "1.2.840.10008.5.1.4.1.2.1.3": "Patient Root Query/Retrieve Information Model - GET",
    "1.2.840.10008.5.1.4.1.2.2.1": "Study Root Query/Retrieve Information Model - FIND",
    "1.2.840.10008.5.1.4.1.2.2.2": "Study Root Query/Retrieve Information Model - MOVE",
    "1.2.840.10008.5.1.4.1.2.2.3": "Study Root Query/Retrieve Information Model - GET",
    "1.2.840.10008.5.1.4.31": "Modality Worklist Information Model - FIND",
}


def sop_name(uid: str) -> str:
    return SOP_CLASSES.get(uid, uid)


@dataclass(frozen=True)
class Association:
    pdu: int                               # 1 RQ, 2 AC, 3 RJ
    called: str = ""
    calling: str = ""
    syntaxes: tuple[str, ...] = ()        # abstract syntaxes proposed (RQ)
    implementation_uid: str = ""
    implementation_version: str = ""


@dataclass(frozen=True)
class Command:
    command: str                           # "C-STORE-RQ"
    sop_class: str                         # affected (or requested) SOP class name


def pdu_header(payload: bytes) -> tuple[int, int] | None:
    """(PDU type, declared length) when the payload starts like a DICOM PDU."""
    if len(payload) < 6 or payload[0] not in PDU_NAMES or payload[1] != 0:
        return None
    return payload[0], int.from_bytes(payload[2:6], "big")


def parse_pdu(payload: bytes) -> tuple[Association | Command | None, str]:
    """An association or a P-DATA command set, or (None, why not)."""
    head = pdu_header(payload)
    if head is None:
        return None, "dicom_not_a_pdu"
    pdu, length = head
    if pdu in (1, 2):
        if length < 68 or length > ASSOC_LIMIT:
            return None, "dicom_bad_length"
        if len(payload) < 74 or payload[6:8] != b"\x00\x01":
            return None, "dicom_truncated"
        return _association(payload, pdu, min(len(payload), 6 + length)), ""
    if pdu == 3:
        return (Association(3), "") if length == 4 else (None, "dicom_bad_length")
    if pdu == 4:
        return _command(payload, length)
    return None, "dicom_other_pdu"


def _ae(raw: bytes) -> str:
    return clean(raw.decode("latin-1"), 16)


def _association(p: bytes, pdu: int, end: int) -> Association:
    called, calling = _ae(p[10:26]), _ae(p[26:42])
    syntaxes: list[str] = []
    uid = version = ""
    i, items = 74, 0
    while i + 4 <= end and items < ITEMS_LIMIT:
        itype, ilen = p[i], int.from_bytes(p[i + 2:i + 4], "big")
        body, i = p[i + 4:min(end, i + 4 + ilen)], i + 4 + ilen
        items += 1
        if itype == 0x20:                                   # presentation context (RQ)
            for stype, value in _subitems(body[4:]):
                if stype == 0x30 and len(syntaxes) < SYNTAXES_LIMIT:
                    syntaxes.append(sop_name(_uid(value)))
        elif itype == 0x50:                                 # user information
            for stype, value in _subitems(body):
                if stype == 0x52:
                    uid = _uid(value)
                elif stype == 0x55:
                    version = clean(value.decode("latin-1"), 16)
    return Association(pdu, called, calling, tuple(syntaxes), uid, version)


def _subitems(body: bytes) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    j = 0
    while j + 4 <= len(body) and len(out) < ITEMS_LIMIT:
        length = int.from_bytes(body[j + 2:j + 4], "big")
        out.append((body[j], body[j + 4:j + 4 + length]))
        j += 4 + length
    return out


def _uid(raw: bytes) -> str:
    return clean(raw.rstrip(b"\x00 ").decode("latin-1"), 64)


def _command(p: bytes, length: int) -> tuple[Command | None, str]:
    """The DIMSE command in the first PDV of a P-DATA-TF, when it carries a command set."""
    if length < 6 or len(p) < 12:
        return None, "dicom_bad_length"
    pdv_len = int.from_bytes(p[6:10], "big")
    if pdv_len < 2 or pdv_len > length - 4:
        return None, "dicom_bad_length"
    if not p[11] & 0x01:
        return None, "dicom_data_set"                        # a data set: never read
    cmd = p[12:min(len(p), 10 + pdv_len)]
    field = None
    sop = ""
    j = elements = 0
    while j + 8 <= len(cmd) and elements < COMMAND_LIMIT:   # implicit VR little endian
        group = int.from_bytes(cmd[j:j + 2], "little")
        elem = int.from_bytes(cmd[j + 2:j + 4], "little")
        vlen = int.from_bytes(cmd[j + 4:j + 8], "little")
        value = cmd[j + 8:j + 8 + vlen]
        j += 8 + vlen
        elements += 1
        if group != 0:
            return None, "dicom_bad_command"
        if elem == 0x0100 and len(value) == 2:
            field = int.from_bytes(value, "little")
        elif elem in (0x0002, 0x0003) and not sop:
            sop = sop_name(_uid(value))
    if field is None:
        return None, "dicom_bad_command"
    name = COMMANDS.get(field & 0x7FFF)
    if name is None:
        return None, "dicom_bad_command"
    return Command(name + ("-RSP" if field & 0x8000 else "-RQ"), sop), ""


def dicom_evidence(found: Association | Command) -> list[list[str]]:
    """[target, key, value, source, scope] for an association or a command."""
    ev: list[list[str]] = []

    def add(target: str, key: str, value: str, source: str) -> None:
        if value:
            ev.append([target, key, value, source, "ip"])

    if isinstance(found, Command):
        if found.command.endswith("-RQ"):
            add("src", "dicom.sends", found.command, "dicom DIMSE command (P-DATA)")
            add("dst", "dicom.receives", found.command, "dicom DIMSE command (P-DATA)")
            add("src", "dicom.sop_class", found.sop_class,
                "dicom DIMSE affected SOP class")
        return ev
    if found.pdu == 3:
        return ev
    rq = found.pdu == 1
    # A-ASSOCIATE-RQ goes calling -> called; the -AC answers called -> calling
    me, peer = (found.calling, found.called) if rq else (found.called, found.calling)
    side = ("calling", "called") if rq else ("called", "calling")
    add("src", "dicom.ae", me, f"dicom A-ASSOCIATE {side[0]} AE title")
    add("dst", "dicom.ae", peer, f"dicom A-ASSOCIATE {side[1]} AE title")
    add("src", "dicom.role", "SCU" if rq else "SCP", "dicom A-ASSOCIATE")
    add("dst", "dicom.role", "SCP" if rq else "SCU", "dicom A-ASSOCIATE")
    for syntax in found.syntaxes:
        add("src", "dicom.sop_class", syntax, "dicom presentation context (abstract syntax)")
    add("src", "dicom.implementation", found.implementation_version,
        "dicom implementation version name")
    add("src", "dicom.implementation_uid", found.implementation_uid,
        "dicom implementation class UID")
    return ev
