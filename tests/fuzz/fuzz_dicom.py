"""atheris target: the DICOM upper-layer evidence parser (A-ASSOCIATE-RQ/AC/RJ items, AE
titles, syntaxes, implementation class and version; the command set of a P-DATA PDU).

Any bytes as a TCP payload: what is not a PDU, or not one it reads, gets a reason, never an
exception; what is read gives evidence of printable, bounded text only.

    python tests/fuzz/fuzz_dicom.py CORPUS_DIR tests/fuzz/corpus/dicom -runs=20000
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from evidencecheck import check_evidence  # noqa: E402
from fuzzkit import instrumented, main  # noqa: E402

with instrumented("appliance"):
    from appliance.inventory.clinical import (
        Association,
        Command,
        dicom_evidence,
        parse_pdu,
        pdu_header,
    )
    from appliance.inventory.tshark import _clinical

VALUE_LIMIT = 256


def TestOneInput(data: bytes) -> None:  # noqa: N802  (libFuzzer's name)
    found, why = parse_pdu(data)
    if found is None:
        assert why.startswith("dicom_") or pdu_header(data) is None, why
        return
    assert isinstance(found, Association | Command)
    check_evidence(dicom_evidence(found), VALUE_LIMIT)
    ev: list[list[str]] = []
    _clinical(data, ev)
    check_evidence(ev, VALUE_LIMIT)


if __name__ == "__main__":
    main(TestOneInput)
