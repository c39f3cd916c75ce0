"""atheris target: the DHCP evidence path. The triage reads the raw message (magic cookie,
options with their lengths) to decide what is new evidence; the dissection worker turns
tshark's DHCP fields (host name, vendor class, FQDN, parameter list, option 43) into
evidence.

Byte 0 picks the part: even, the rest is a UDP payload for the triage; odd, the rest is cut
at NUL bytes into the text values tshark would hand over (whatever a client put on the
wire), fed through the worker's DHCP reader the way pyshark presents them.

    python tests/fuzz/fuzz_dhcp.py CORPUS_DIR tests/fuzz/corpus/dhcp -runs=20000
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from evidencecheck import check_evidence  # noqa: E402
from fuzzkit import instrumented, main  # noqa: E402

with instrumented("appliance"):
    from appliance.inventory.triage import _dhcp_key
    from appliance.inventory.tshark import _dhcp

VALUE_LIMIT = 200
WHO = b"\x00\x1a\x2b\x00\x00\x01"
FIELDS = ("dhcp.type", "dhcp.option.dhcp", "dhcp.hw.mac_addr", "dhcp.option.hostname",
          "dhcp.option.vendor_class_id", "dhcp.option.client_fqdn.name",
          "dhcp.option.vendor.value", "dhcp.ip.relay", "dhcp.ip.your",
          "dhcp.option.request_list_item")


class _Field:
    """One field as pyshark gives it: `show`, and every occurrence in `all_fields`."""

    def __init__(self, values: list[str]) -> None:
        self.show = values[0]
        self.showname_value = values[0]
        self.all_fields = [self] + [_Field([v]) for v in values[1:]]


class _Layer:
    def __init__(self, fields: dict[str, list[str]]) -> None:
        self.fields = fields

    def get_field(self, name: str) -> Any:
        values = self.fields.get(name)
        return _Field(values) if values else None


def TestOneInput(data: bytes) -> None:  # noqa: N802  (libFuzzer's name)
    if not data:
        return
    body = data[1:]
    if data[0] % 2 == 0:
        # as sent, and with the magic cookie in place so that the options are read
        cookied = body[:236].ljust(236, b"\x00") + b"\x63\x82\x53\x63" + body[236:]
        for payload in (body, cookied):
            why, key, _ = _dhcp_key(payload, WHO)
            assert why.startswith("dhcp"), why
            assert key is None or why == "dhcp"
        return
    parts = [p.decode("utf-8", "replace") for p in body.split(b"\x00")]
    fields = {name: [parts[i]] for i, name in enumerate(FIELDS[:-1]) if i < len(parts)}
    if len(parts) > len(FIELDS) - 1:
        fields[FIELDS[-1]] = parts[len(FIELDS) - 1:]
    for op in ("1", "2"):
        fields["dhcp.type"] = [op]
        ev: list[list[str]] = []
        _dhcp(_Layer(fields), ev)
        check_evidence(ev, VALUE_LIMIT)


if __name__ == "__main__":
    main(TestOneInput)
