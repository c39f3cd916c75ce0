"""atheris target: the HL7 v2 evidence parser (MLLP framing, the MSH segment's fields and
components) as the triage and the dissection worker use it.

Any bytes as a TCP payload: a message that is not HL7 gets a reason, never an exception; a
header that is read gives evidence of printable, bounded text only.

    python tests/fuzz/fuzz_hl7.py CORPUS_DIR tests/fuzz/corpus/hl7 -runs=20000
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from evidencecheck import check_evidence  # noqa: E402
from fuzzkit import instrumented, main  # noqa: E402

with instrumented("appliance"):
    from appliance.inventory.clinical import COMPONENTS, FIELD_LIMIT, msh_evidence, parse_msh
    from appliance.inventory.tshark import _clinical

# a field's components joined with "^": COMPONENTS of FIELD_LIMIT characters each
VALUE_LIMIT = COMPONENTS * (FIELD_LIMIT + 1)


def TestOneInput(data: bytes) -> None:  # noqa: N802  (libFuzzer's name)
    framed = b"\x0b" + data if data[:1] != b"\x0b" else data   # most inputs reach the MSH
    for payload in (data, framed):
        msh, why = parse_msh(payload)
        if msh is None:
            assert why.startswith("hl7_"), why
            continue
        assert msh.message_type and msh.key()
        check_evidence(msh_evidence(msh), VALUE_LIMIT)
        ev: list[list[str]] = []
        assert _clinical(payload, ev) is None
        check_evidence(ev, VALUE_LIMIT)


if __name__ == "__main__":
    main(TestOneInput)
