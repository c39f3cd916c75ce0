"""wardtap's fast path: the Cython classifier and capture scanner.

Only the hot path lives here; everything that reads files or configuration is in
`appliance`. Record layouts for numpy views are built from the C structs' own offsets.
"""

from fastpath.core import (  # noqa: F401  (re-exports)
    BUCKET_SIZE,
    DEVICE_SLOT_BYTES,
    EVENT_BYTES,
    EVENT_NAMES,
    FLOW_END_NAMES,
    FLOW_SLOT_BYTES,
    MALFORMED_FIRST,
    MODES,
    NO_DEVICE_INDEX,
    NO_RULE_INDEX,
    REASON_NAMES,
    VERDICT_NAMES,
    CaptureScanner,
    Classifier,
    CompiledPolicy,
    decode_batch,
)
from fastpath.records import DECODED_DTYPE, DEVICE_DTYPE, EVENT_DTYPE  # noqa: F401
