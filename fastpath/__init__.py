"""wardtap's fast path: the Cython classifier and capture scanner.

Only the hot path lives here; everything that reads files or configuration is in
`appliance`. The numpy record dtypes (EVENT_DTYPE, DEVICE_DTYPE, DECODED_DTYPE) mirror the
C structs and are built on first use, so the replay path does not pay numpy's import.
"""

from typing import Any

from fastpath.core import (  # noqa: F401  (re-exports)
    BINDING_BYTES,
    BINDING_SLOTS,
    BUCKET_SIZE,
    DETAIL_NAMES,
    DEVICE_FIELDS,
    DEVICE_SLOT_BYTES,
    EVENT_BYTES,
    EVENT_FIELDS,
    EVENT_NAMES,
    FLOW_END_NAMES,
    FLOW_SLOT_BYTES,
    HINT_KNOWN_CONVERSATION,
    HINT_NEW_CONVERSATION,
    KNOWN_SERVICE_PORTS,
    LINKTYPES,
    MALFORMED_FIRST,
    MODES,
    NO_DEVICE_INDEX,
    NO_RULE_INDEX,
    ORIENT_NAMES,
    PACKET_LINE_MAX,
    REASON_NAMES,
    SERVICE_SLOTS,
    TUNNEL_NAMES,
    VERDICT_NAMES,
    CaptureScanner,
    Classifier,
    CompiledPolicy,
    decode_batch,
    packet_lines,
)

_DTYPES = ("EVENT_DTYPE", "DEVICE_DTYPE", "DECODED_DTYPE")


def __getattr__(name: str) -> Any:
    if name in _DTYPES:
        from fastpath import records

        return getattr(records, name)
    raise AttributeError(f"module 'fastpath' has no attribute {name!r}")
