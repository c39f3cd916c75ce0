"""An X.509 certificate's subject from its DER bytes (TLS evidence), without a crypto library.

Only the subject's distinguished name is read, bounds-checked at every element; anything
malformed gives None.
"""

from __future__ import annotations

_DN_NAMES = {"2.5.4.3": "CN", "2.5.4.10": "O", "2.5.4.11": "OU", "2.5.4.6": "C",
             "2.5.4.7": "L", "2.5.4.8": "ST", "2.5.4.5": "serialNumber"}


def _der(data: bytes, i: int) -> tuple[int, int, int]:
    """(tag, start of value, end of value) of the DER element at i."""
    tag = data[i]
    length = data[i + 1]
    i += 2
    if length & 0x80:
        n = length & 0x7F
        if n == 0 or n > 4:
            raise ValueError("DER length")
        length = int.from_bytes(data[i:i + n], "big")
        i += n
    if i + length > len(data):
        raise ValueError("DER element past the end")
    return tag, i, i + length


def _oid(raw: bytes) -> str:
    parts = [raw[0] // 40, raw[0] % 40]
    value = 0
    for b in raw[1:]:
        value = value << 7 | (b & 0x7F)
        if not b & 0x80:
            parts.append(value)
            value = 0
    return ".".join(map(str, parts))


def cert_subject(hex_or_der: str | bytes) -> str | None:
    """'CN=...,O=...,C=..' of a DER certificate (hex with or without colons), or None."""
    try:
        der = (bytes.fromhex(hex_or_der.replace(":", "")) if isinstance(hex_or_der, str)
               else hex_or_der)
        _, cert, _ = _der(der, 0)
        _, tbs, tbs_end = _der(der, cert)
        i = tbs
        elements: list[tuple[int, int, int]] = []
        while i < tbs_end and len(elements) < 6:
            tag, start, end = _der(der, i)
            elements.append((tag, start, end))
            i = end
        if elements and elements[0][0] == 0xA0:       # explicit version
            elements = elements[1:]
        _, start, end = elements[4]                    # serial, sig, issuer, validity, subject
        parts = []
        i = start
        while i < end:
            _, rdn, rdn_end = _der(der, i)             # SET
            j = rdn
            while j < rdn_end:
                _, atv, atv_end = _der(der, j)         # SEQUENCE { OID, value }
                _, o, o_end = _der(der, atv)
                _, v, v_end = _der(der, o_end)
                oid = _oid(der[o:o_end])
                parts.append(f"{_DN_NAMES.get(oid, oid)}="
                             f"{der[v:v_end].decode('utf-8', 'replace')}")
                j = atv_end
            i = rdn_end
        # most specific first, the way people read certificate subjects
        return ",".join(reversed(parts)) or None
    except (ValueError, IndexError):
        return None


