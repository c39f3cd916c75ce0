"""Type stubs for the compiled fast path (fastpath/core.pyx)."""

from collections.abc import Iterable
from typing import Any

Buffer = Any  # anything with the buffer protocol (bytes, memoryview, array, numpy)

VERDICT_NAMES: tuple[str, ...]
REASON_NAMES: dict[int, str]
EVENT_NAMES: dict[int, str]
FLOW_END_NAMES: dict[int, str]
MODES: dict[str, int]
MALFORMED_FIRST: int
NO_RULE_INDEX: int
PACKET_LINE_MAX: int
NO_DEVICE_INDEX: int
FLOW_SLOT_BYTES: int
DEVICE_SLOT_BYTES: int
EVENT_BYTES: int
BUCKET_SIZE: int
STATS_FIELDS: tuple[str, ...]
ORIENT_NAMES: dict[int, str | None]
TUNNEL_NAMES: dict[int, str]
HINT_KNOWN_CONVERSATION: int
HINT_NEW_CONVERSATION: int
LINKTYPES: tuple[int, ...]
KNOWN_SERVICE_PORTS: tuple[int, ...]
SERVICE_SLOTS: int
EVENT_FIELDS: tuple[str, ...]
DEVICE_FIELDS: tuple[str, ...]
DETAIL_NAMES: dict[int, str | None]
WATCH_KINDS: dict[str, int]
CLINICAL_FIELDS: dict[str, int]
BINDING_SLOTS: int
BINDING_BYTES: int
WATCHED_PACKETS: int

def _layout_event() -> tuple[dict[str, tuple[int, str]], int]: ...
def _layout_device() -> tuple[dict[str, tuple[int, str]], int]: ...
def _layout_decoded() -> tuple[dict[str, tuple[int, str]], int]: ...
def decode_batch(buf: Buffer, offsets: Buffer, lengths: Buffer, linktypes: Buffer,
                 out: Buffer, reasons: Buffer) -> None: ...
def packet_lines(buf: Buffer, offsets: Buffer, lengths: Buffer, linktypes: Buffer,
                 timestamps: Buffer, verdicts: Buffer, reasons: Buffer, rules: Buffer,
                 first_index: int, names: Buffer, name_offsets: Buffer, n_rules: int,
                 out: Buffer) -> int: ...

class CompiledPolicy:
    source: Any
    generation: int
    def __init__(self, selectors: list[tuple[int, int, bytes, int]],
                 rules: list[tuple[int, int, int, int, int, int, int]], vlan_groups: int,
                 open_groups: int, *, arp: bool = ..., non_ip: bool = ...,
                 fragment_unmatched: bool = ..., generation: int = ...,
                 source: Any = ..., names: Any = ..., ruleinfo: Any = ..., clinical: Any = ...,
                 name_ttl: tuple[float, float] = ...) -> None: ...
    def name_groups(self, name: bytes) -> int: ...
    def groups_of(self, mac: bytes | None, ip16: bytes | None, vlan: int = ...) -> int: ...

class Classifier:
    mode_name: str
    memory_bytes: int
    flow_capacity: int
    device_capacity: int
    pending_events: int
    def __init__(self, flow_capacity: int = ..., device_capacity: int = ...,
                 event_capacity: int = ..., seed: int | None = ...,
                 timeouts: tuple[float, float, float, float, float] | None = ...,
                 compact: bool = ...) -> None: ...
    def set_policy(self, policy: CompiledPolicy | None) -> None: ...
    def set_mode(self, mode: str) -> None: ...
    def reevaluate(self) -> list[tuple[Any, ...]]: ...
    def classify(self, buf: Buffer, offsets: Buffer, lengths: Buffer, timestamps: Buffer,
                 linktypes: Buffer, verdicts: Buffer, reasons: Buffer, rules: Buffer,
                 samples: Buffer | None = ..., hints: Buffer | None = ...) -> int: ...
    def add_services(self, services: Any) -> int: ...
    def knows_service(self, addr: bytes, proto: int, port: int) -> bool: ...
    def set_sampling(self, per_flow: int = ..., device_budget: int = ...,
                     device_window_s: float = ..., global_budget: int = ...) -> None: ...
    def drain(self, max_events: int = ...) -> list[tuple[Any, ...]]: ...
    def drain_events(self, out: Buffer) -> int: ...
    def set_events(self, types: Iterable[str] | None = ...) -> None: ...
    def sweep(self, now_ns: int, everything: bool = ...) -> None: ...
    def stats(self) -> dict[str, Any]: ...
    def device_list(self) -> list[tuple[Any, ...]]: ...
    def flow_list(self) -> list[tuple[Any, ...]]: ...
    def copy_devices(self, out: Buffer) -> int: ...
    def copy_flows(self, out: Buffer, active_only: bool = ...) -> int: ...
    def bindings(self, now_ns: int = ...) -> list[tuple[bytes, str, int]]: ...

class CaptureScanner:
    error: int
    error_offset: int
    bad_linktype: int
    packets: int
    offset: int
    format: str
    def __init__(self, buf: Buffer) -> None: ...
    def next_batch(self, offsets: Buffer, lengths: Buffer, wire_lengths: Buffer,
                   timestamps: Buffer, linktypes: Buffer) -> int: ...

RING_COUNTER_NAMES: tuple[str, ...]
def ring_block_batch(ring: Buffer, block_offset: int, block_size: int, offsets: Buffer,
                     lengths: Buffer, wire: Buffer, ts: Buffer, linktypes: Buffer,
                     counters: Buffer | None = ..., linktype: int = ...) -> int: ...
def ring_block_status(ring: Buffer, block_offset: int) -> int: ...
def ring_block_release(ring: Buffer, block_offset: int) -> None: ...
