# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""wardtap fast path: decode, flow table, policy match and verdicts for batches of packets.

One Python call per batch; the loop runs without the GIL and allocates nothing. Events
(new device, new flow, violation, flow end, malformed) go to a bounded ring that the slow
path drains; a full ring is counted, never waited on.
"""

from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcmp, memcpy, memset
from posix.mman cimport (MADV_HUGEPAGE, MAP_ANONYMOUS, MAP_FAILED, MAP_PRIVATE, PROT_READ,
                         PROT_WRITE, madvise, mmap, munmap)

import os

cdef extern from *:
    """
    #include <stdint.h>
    #define WARDTAP_PREFETCH(p) __builtin_prefetch((p), 0, 3)
    /* The address is formed as an integer: a prefetch never faults, so an offset outside
       the buffer (checked when its packet comes up) costs nothing here. */
    #define WARDTAP_PREFETCH_AT(buf, off) do { \
        const void* wardtap_a_ = (const void*)((uintptr_t)(buf) + (uintptr_t)(off)); \
        __builtin_prefetch(wardtap_a_, 0, 3); \
        __builtin_prefetch((const void*)((uintptr_t)wardtap_a_ + 64), 0, 3); } while (0)
    """
    void WARDTAP_PREFETCH(const void* p) noexcept nogil
    void WARDTAP_PREFETCH_AT(const uint8_t* buf, int64_t off) noexcept nogil

# Tables at least this big are mapped on their own and offered to the kernel for
# transparent huge pages: a flow table of a million slots spans 32,768 4-KiB pages, more
# than the TLB holds, so every lookup would also miss in the TLB.
cdef enum:
    HUGE_PAGE_BYTES = 2 * 1024 * 1024


cdef void* table_alloc(size_t nbytes) noexcept:
    """Zeroed memory for a fixed table (NULL if there is none); free with table_free."""
    cdef void* p
    if nbytes < HUGE_PAGE_BYTES:
        return calloc(1, nbytes)
    p = mmap(NULL, nbytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    if p == MAP_FAILED:
        return NULL
    madvise(p, nbytes, MADV_HUGEPAGE)     # advice only: no THP here is not an error
    return p


cdef void table_free(void* p, size_t nbytes) noexcept:
    if p == NULL:
        return
    if nbytes < HUGE_PAGE_BYTES:
        free(p)
    else:
        munmap(p, nbytes)


# Packets ahead whose headers are prefetched: capture strides (IMIX sizes) defeat the
# hardware prefetcher, and a header miss costs more than the whole decode.
cdef enum:
    PREFETCH_AHEAD = 8

include "decode.pxi"
include "compact.pxi"
include "policytable.pxi"
include "flowtable.pxi"
include "names.pxi"
include "clinical.pxi"
include "orient.pxi"
include "capture.pxi"
include "ring.pxi"
include "lines.pxi"
include "packet.pxi"
include "verdict.pxi"

VERDICT_NAMES = ("none", "allow", "deny", "malformed")

# Same order and values as the R_* enum in core.pxd.
REASON_NAMES = {
    R_RULE: "rule", R_NO_POLICY: "no_policy", R_NO_RULE: "no_rule",
    R_WRONG_INITIATOR: "wrong_initiator", R_PROTO_NOT_ALLOWED: "proto_not_allowed",
    R_PORT_NOT_ALLOWED: "port_not_allowed", R_ARP: "arp", R_NON_IP: "non_ip",
    R_FRAGMENT: "fragment", R_FRAGMENT_UNMATCHED: "fragment_unmatched", R_RELATED: "related",
    R_UNSOLICITED: "unsolicited_answer", R_PENDING: "pending_receiver",
    R_WATCHED: "watched", R_SERVER_NAME: "server_name_mismatch",
    R_CLINICAL: "clinical_mismatch",
    R_BAD_OFFSET: "bad_offset", R_LINKTYPE: "unsupported_linktype",
    R_ETH_SHORT: "ethernet_truncated", R_VLAN_SHORT: "vlan_truncated",
    R_VLAN_DEPTH: "vlan_too_deep", R_SLL_SHORT: "sll_truncated",
    R_RAW_VERSION: "raw_ip_bad_version", R_ARP_SHORT: "arp_truncated",
    R_IPV4_SHORT: "ipv4_truncated", R_IPV4_VERSION: "ipv4_bad_version",
    R_IPV4_IHL: "ipv4_bad_header_length", R_IPV4_TOTAL_LENGTH: "ipv4_bad_total_length",
    R_IPV6_SHORT: "ipv6_truncated", R_IPV6_VERSION: "ipv6_bad_version",
    R_IPV6_EXT_SHORT: "ipv6_extension_truncated", R_IPV6_EXT_DEPTH: "ipv6_too_many_extensions",
    R_TCP_SHORT: "tcp_truncated", R_TCP_OFFSET: "tcp_bad_data_offset",
    R_UDP_SHORT: "udp_truncated", R_UDP_LENGTH: "udp_bad_length",
    R_ICMP_SHORT: "icmp_truncated", R_SCTP_SHORT: "sctp_truncated",
    R_LINK_SHORT: "link_truncated", R_ENCAP_SHORT: "encapsulation_truncated",
    R_ENCAP_DEPTH: "encapsulation_too_deep",
}
MALFORMED_FIRST = R_MALFORMED_FIRST
# Which first-payload field broke a rule (event "detail"); docs/policy.md.
DETAIL_NAMES = {DETAIL_NONE: None, DETAIL_HL7_NO_MSH: "hl7_msh",
                DETAIL_HL7_TYPE: "hl7_message_type", DETAIL_HL7_SENDING: "hl7_sending_application",
                DETAIL_HL7_RECEIVING: "hl7_receiving_application",
                DETAIL_DICOM_NOT_ASSOCIATE: "dicom_associate_rq",
                DETAIL_DICOM_CALLING: "dicom_calling_ae", DETAIL_DICOM_CALLED: "dicom_called_ae",
                DETAIL_DICOM_SERVICE: "dicom_service", DETAIL_NO_PAYLOAD: "no_first_payload",
                DETAIL_SERVER_NAME: "tls_server_name"}
# Compiling clinical rules (appliance.policy.model): what to watch and which fields.
WATCH_KINDS = {"hl7": WATCH_HL7, "dicom": WATCH_DICOM}
CLINICAL_FIELDS = {"hl7_type": CF_HL7_TYPE, "hl7_type_prefix": CF_HL7_TYPE_PREFIX,
                   "hl7_sending": CF_HL7_SENDING, "hl7_receiving": CF_HL7_RECEIVING,
                   "dicom_calling": CF_DICOM_CALLING, "dicom_called": CF_DICOM_CALLED,
                   "dicom_sop": CF_DICOM_SOP, "dicom_sop_prefix": CF_DICOM_SOP_PREFIX}
BINDING_SLOTS = BIND_BUCKETS * BIND_SLOTS
BINDING_BYTES = sizeof(bind_t) + sizeof(uint32_t)
WATCHED_PACKETS = WATCH_PACKETS
EVENT_NAMES = {EV_NEW_DEVICE: "new_device", EV_NEW_FLOW: "new_flow",
               EV_VIOLATION: "violation", EV_FLOW_END: "flow_end", EV_MALFORMED: "malformed"}
FLOW_END_NAMES = {END_FIN: "fin", END_RST: "rst", END_IDLE: "idle",
                  END_EVICTED: "evicted", END_NEW_SYN: "port_reused",
                  END_REORIENTED: "reoriented"}
ORIENT_NAMES = {0: None, ORIENT_SYN: "syn", ORIENT_ICMP: "icmp", ORIENT_GROUP: "group",
                ORIENT_PAYLOAD: "payload", ORIENT_POLICY: "policy", ORIENT_SERVICE: "service",
                ORIENT_PORTS: "ports", ORIENT_LOWER_PORT: "lower_port",
                ORIENT_FIRST: "first_sender", ORIENT_UNSOLICITED: "unsolicited"}
HINT_KNOWN_CONVERSATION = HINT_KNOWN
HINT_NEW_CONVERSATION = HINT_NEW
TUNNEL_NAMES = {TUN_IPIP: "ipip", TUN_IPV6: "6in4", TUN_GRE: "gre", TUN_ETHERIP: "etherip",
                TUN_L2TP: "l2tpv3", TUN_MPLS: "mpls-in-ip"}
LINKTYPES = SUPPORTED_LINKTYPES
SERVICE_SLOTS = 4096
MODES = {"learn": MODE_LEARN, "monitor": MODE_MONITOR, "enforce": MODE_ENFORCE,
         "bypass": MODE_BYPASS}
NO_RULE_INDEX = NO_RULE
PACKET_LINE_MAX = LINE_MAX_BYTES
NO_DEVICE_INDEX = <uint32_t>NO_DEVICE
FLOW_SLOT_BYTES = sizeof(flow_t)
DEVICE_SLOT_BYTES = sizeof(device_t)
EVENT_BYTES = sizeof(event_t)
BUCKET_SIZE = BUCKET_SLOTS
STATS_FIELDS = ("packets", "bytes", "allowed", "denied", "malformed", "flows_created",
                "flows_ended", "flows_evicted", "flows_active", "devices",
                "device_table_full", "events_dropped", "fragments_attributed",
                "fragments_unmatched", "samples", "samples_over_budget", "unsolicited_answers",
                "flows_reoriented", "compact", "events_counted_only",
                "flows_evicted_allowed", "dns_answers", "dns_malformed", "bindings_learned",
                "bindings_evicted", "payloads_judged", "payloads_unreadable",
                "payloads_missed")


EVENT_FIELDS = ("type", "ts_ns", "flow_id", "pkts", "bytes", "packet", "first_ns", "src",
                "dst", "smac", "dmac", "sport", "dport", "vlan", "rule", "device",
                "peer_device", "reason", "verdict", "proto", "l3", "has_mac", "icmp_type",
                "icmp_code", "orient", "detail")
DEVICE_FIELDS = ("index", "mac", "ip4", "ip6", "multi_ip", "vlan", "first_ns", "last_ns",
                 "pkts_tx", "bytes_tx", "pkts_rx", "bytes_rx", "flows", "violations")


cdef tuple _event_tuple(const event_t* e):
    return (e.type, e.ts_ns, e.flow_id, e.pkts, e.bytes, e.packet, e.first_ns, e.src[:16],
            e.dst[:16], e.smac[:6], e.dmac[:6], e.sport, e.dport, e.vlan, e.rule, e.device,
            e.peer_device, e.reason, e.verdict, e.proto, e.l3, e.has_mac, e.icmp_type,
            e.icmp_code, e.orient, e.detail)


def _layout_event():
    cdef event_t e
    cdef size_t b = <size_t>&e
    return {
        "ts_ns": (<size_t>&e.ts_ns - b, "u8"), "flow_id": (<size_t>&e.flow_id - b, "u8"),
        "pkts": (<size_t>&e.pkts - b, "u8"), "bytes": (<size_t>&e.bytes - b, "u8"),
        "packet": (<size_t>&e.packet - b, "u8"), "first_ns": (<size_t>&e.first_ns - b, "u8"),
        "src": (<size_t>&e.src - b, "V16"), "dst": (<size_t>&e.dst - b, "V16"),
        "smac": (<size_t>&e.smac - b, "V6"), "dmac": (<size_t>&e.dmac - b, "V6"),
        "sport": (<size_t>&e.sport - b, "u2"), "dport": (<size_t>&e.dport - b, "u2"),
        "vlan": (<size_t>&e.vlan - b, "u2"), "rule": (<size_t>&e.rule - b, "u2"),
        "device": (<size_t>&e.device - b, "u4"), "peer_device": (<size_t>&e.peer_device - b, "u4"),
        "type": (<size_t>&e.type - b, "u1"), "reason": (<size_t>&e.reason - b, "u1"),
        "verdict": (<size_t>&e.verdict - b, "u1"), "proto": (<size_t>&e.proto - b, "u1"),
        "l3": (<size_t>&e.l3 - b, "u1"), "has_mac": (<size_t>&e.has_mac - b, "u1"),
        "icmp_type": (<size_t>&e.icmp_type - b, "u1"), "icmp_code": (<size_t>&e.icmp_code - b, "u1"),
        "orient": (<size_t>&e.orient - b, "u1"), "detail": (<size_t>&e.detail - b, "u1"),
    }, sizeof(event_t)


def _layout_device():
    cdef device_t d
    cdef size_t b = <size_t>&d
    return {
        "mac": (<size_t>&d.mac - b, "V6"), "has_mac": (<size_t>&d.has_mac - b, "u1"),
        "multi_ip": (<size_t>&d.multi_ip - b, "u1"), "vlan": (<size_t>&d.vlan - b, "u2"),
        "flows": (<size_t>&d.flows - b, "u4"), "ip4": (<size_t>&d.ip4 - b, "V16"),
        "ip6": (<size_t>&d.ip6 - b, "V16"), "first_ns": (<size_t>&d.first_ns - b, "u8"),
        "last_ns": (<size_t>&d.last_ns - b, "u8"), "pkts_tx": (<size_t>&d.pkts_tx - b, "u8"),
        "bytes_tx": (<size_t>&d.bytes_tx - b, "u8"), "pkts_rx": (<size_t>&d.pkts_rx - b, "u8"),
        "bytes_rx": (<size_t>&d.bytes_rx - b, "u8"),
        "violations": (<size_t>&d.violations - b, "u4"), "index": (<size_t>&d.index - b, "u4"),
        "key": (<size_t>&d.key - b, "V16"),
    }, sizeof(device_t)


def _layout_decoded():
    cdef pkt_t k
    cdef size_t b = <size_t>&k
    return {
        "dst_mac": (<size_t>&k.dst_mac - b, "V6"), "src_mac": (<size_t>&k.src_mac - b, "V6"),
        "has_mac": (<size_t>&k.has_mac - b, "u1"), "l3": (<size_t>&k.l3 - b, "u1"),
        "proto": (<size_t>&k.proto - b, "u1"), "frag": (<size_t>&k.frag - b, "u1"),
        "tcp_flags": (<size_t>&k.tcp_flags - b, "u1"), "icmp_type": (<size_t>&k.icmp_type - b, "u1"),
        "icmp_code": (<size_t>&k.icmp_code - b, "u1"), "tunnel": (<size_t>&k.tunnel - b, "u1"),
        "ethertype": (<size_t>&k.ethertype - b, "u2"), "vlan": (<size_t>&k.vlan - b, "u2"),
        "vlan_outer": (<size_t>&k.vlan_outer - b, "u2"), "sport": (<size_t>&k.sport - b, "u2"),
        "dport": (<size_t>&k.dport - b, "u2"), "icmp_id": (<size_t>&k.icmp_id - b, "u2"),
        "frag_id": (<size_t>&k.frag_id - b, "u4"), "l4_off": (<size_t>&k.l4_off - b, "u4"),
        "frag_off": (<size_t>&k.frag_off - b, "u2"), "more_frags": (<size_t>&k.more_frags - b, "u1"),
        "answer": (<size_t>&k.answer - b, "u1"),
        "src": (<size_t>&k.src - b, "V16"), "dst": (<size_t>&k.dst - b, "V16"),
    }, sizeof(pkt_t)


def decode_batch(const uint8_t[::1] buf, const int64_t[::1] offsets, const uint32_t[::1] lengths,
                 const uint16_t[::1] linktypes, uint8_t[::1] out, uint8_t[::1] reasons):
    """Decode each packet into `out` (records of _layout_decoded) for reports and tests.

    Not the hot path: `replay --packets-out` and the differential tests use it.
    """
    cdef Py_ssize_t i, n = offsets.shape[0]
    cdef pkt_t* recs
    if (out.shape[0] < n * <Py_ssize_t>sizeof(pkt_t) or reasons.shape[0] < n
            or lengths.shape[0] < n or linktypes.shape[0] < n):
        raise ValueError("batch arrays shorter than offsets")
    if n == 0:
        return
    recs = <pkt_t*>&out[0]
    with nogil:
        for i in range(n):
            memset(&recs[i], 0, sizeof(pkt_t))
            if offsets[i] < 0 or offsets[i] > buf.shape[0] or lengths[i] > buf.shape[0] - offsets[i]:
                reasons[i] = R_BAD_OFFSET
                continue
            reasons[i] = decode_packet(&buf[0] + offsets[i], lengths[i], linktypes[i], &recs[i])


cdef inline bint is_discovery(uint16_t p) noexcept nogil:
    return (p == 67 or p == 68 or p == 546 or p == 547 or p == 5353 or p == 1900
            or p == 137 or p == 138)


cdef inline bint discovery_port(const pkt_t* k) noexcept nogil:
    """UDP services that name a device: DHCP, DHCPv6, mDNS, SSDP, NetBIOS."""
    if k.proto != 17:
        return 0
    return is_discovery(k.sport) or is_discovery(k.dport)


cdef uint32_t next_pow2(uint64_t n):
    cdef uint64_t p = 1
    while p < n:
        p <<= 1
    return <uint32_t>p


cdef class Classifier:
    """Per-packet verdicts for batches; fixed memory chosen at construction.

    flow_capacity: flow slots (rounded up to a power of two times BUCKET_SLOTS), 128 bytes each.
    device_capacity: device slots (power of two), filled to 7/8 at most.
    event_capacity: events the ring holds between drains.
    timeouts: idle seconds per class: tcp, udp, icmp, other, closing.
    compact: take the compact path (compact.pxi) for plain IPv4 TCP/UDP packets of known
    flows; False sends every packet through the general path (for comparing the two).
    """

    def __cinit__(self, uint64_t flow_capacity=65536, uint64_t device_capacity=4096,
                  uint64_t event_capacity=65536, seed=None, timeouts=None, bint compact=True):
        if flow_capacity < BUCKET_SLOTS or flow_capacity > (1 << 28):
            raise ValueError("flow_capacity must be between 8 and 268435456")
        if device_capacity < 16 or device_capacity > (1 << 24):
            raise ValueError("device_capacity must be between 16 and 16777216")
        if event_capacity < 16 or event_capacity > (1 << 24):
            raise ValueError("event_capacity must be between 16 and 16777216")
        self.n_buckets = next_pow2((flow_capacity + BUCKET_SLOTS - 1) // BUCKET_SLOTS)
        self.bucket_mask = self.n_buckets - 1
        self.sweep_buckets = max(1, self.n_buckets // 256)
        self.flows = <flow_t*>table_alloc(<size_t>self.n_buckets * BUCKET_SLOTS * sizeof(flow_t))
        self.tags = <uint32_t*>table_alloc(<size_t>self.n_buckets * BUCKET_SLOTS * sizeof(uint32_t))
        self.dev_capacity = next_pow2(device_capacity)
        self.devices = <device_t*>calloc(self.dev_capacity, sizeof(device_t))
        self.dev_tags = <uint32_t*>calloc(self.dev_capacity, sizeof(uint32_t))
        self.frag_mask = 1023
        self.frag_keys = <uint64_t*>calloc(self.frag_mask + 1, sizeof(uint64_t))
        self.frag_flows = <uint32_t*>calloc(self.frag_mask + 1, sizeof(uint32_t))
        self.frag_flow_ids = <uint64_t*>calloc(self.frag_mask + 1, sizeof(uint64_t))
        self.ring_mask = next_pow2(event_capacity) - 1
        self.ring = <event_t*>calloc(self.ring_mask + 1, sizeof(event_t))
        self.svc_mask = SERVICE_SLOTS - 1
        self.svc_keys = <uint64_t*>calloc(SERVICE_SLOTS, sizeof(uint64_t))
        self.addr_mask = ADDR_SLOTS - 1
        self.addr_tags = <uint64_t*>calloc(ADDR_SLOTS, sizeof(uint64_t))
        self.addr_devs = <uint32_t*>calloc(ADDR_SLOTS, sizeof(uint32_t))
        self.binds = <bind_t*>calloc(BIND_BUCKETS * BIND_SLOTS, sizeof(bind_t))
        self.bind_tags = <uint32_t*>calloc(BIND_BUCKETS * BIND_SLOTS, sizeof(uint32_t))
        self.folds = <fold_t*>calloc(FOLD_SLOTS, sizeof(fold_t))
        if (self.flows == NULL or self.tags == NULL or self.devices == NULL
                or self.dev_tags == NULL or self.frag_keys == NULL or self.frag_flows == NULL or self.frag_flow_ids == NULL
                or self.ring == NULL or self.svc_keys == NULL or self.addr_tags == NULL
                or self.addr_devs == NULL or self.binds == NULL or self.bind_tags == NULL
                or self.folds == NULL):
            raise MemoryError("cannot allocate the classifier's tables")
        if seed is None:
            seed = int.from_bytes(os.urandom(8), "little")
        self.seed = seed
        self.next_flow_id = 1
        seconds = timeouts or (3600, 60, 30, 120, 10)
        if len(seconds) != TIMEOUT_CLASSES:
            raise ValueError("timeouts: tcp, udp, icmp, other, closing")
        for i in range(TIMEOUT_CLASSES):
            self.timeouts[i] = <uint64_t>(seconds[i] * 1000000000)
        self.mode = MODE_LEARN
        self.policy = None
        self.compact = compact
        self.event_types = 0xFFFFFFFF
        self.set_sampling()

    def __dealloc__(self):
        table_free(self.flows, <size_t>self.n_buckets * BUCKET_SLOTS * sizeof(flow_t))
        table_free(self.tags, <size_t>self.n_buckets * BUCKET_SLOTS * sizeof(uint32_t))
        free(self.devices)
        free(self.dev_tags)
        free(self.frag_keys)
        free(self.frag_flows)
        free(self.frag_flow_ids)
        free(self.ring)
        free(self.svc_keys)
        free(self.addr_tags)
        free(self.addr_devs)
        free(self.binds)
        free(self.bind_tags)
        free(self.folds)

    # -- configuration, between batches ------------------------------------------------

    def set_policy(self, CompiledPolicy policy):
        """Use `policy` for flows that start from the next batch on (None: no policy)."""
        self.policy = policy

    def reevaluate(self):
        """Decide every active flow again under the current policy (after a reload).

        Flows that stay allowed are untouched. Returns the flows whose verdict changed, as
        event tuples (EVENT_FIELDS) carrying the new verdict; a flow that became denied also
        gets a violation event on the ring, like a new flow would.
        """
        cdef CompiledPolicy policy = self.policy
        cdef uint64_t i, slots = <uint64_t>self.n_buckets * BUCKET_SLOTS
        cdef flow_t* f
        cdef event_t e
        cdef event_t* v
        cdef uint8_t old
        changed = []
        for i in range(slots):
            if (self.tags[i] == 0 or self.flows[i].state != FLOW_ACTIVE
                    or self.flows[i].pending):     # decided when its receiver speaks
                continue
            f = &self.flows[i]
            old = f.verdict
            decide_flow(self, f, &policy.pol if policy is not None else NULL)
            if f.verdict == old:
                continue
            memset(&e, 0, sizeof(event_t))
            fill_flow_event(&e, EV_VIOLATION, f, self.now_ns)
            e.reason = f.reason
            changed.append(_event_tuple(&e))
            if f.verdict == VERDICT_DENY:
                if f.dev[0] != NO_DEVICE:
                    self.devices[f.dev[0]].violations += 1
                v = event_slot(self, EV_VIOLATION)
                if v != NULL:
                    v[0] = e
        return changed

    def set_mode(self, str mode):
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        self.mode = MODES[mode]

    def set_sampling(self, int per_flow=6, int device_budget=16, double device_window_s=3600,
                     int global_budget=64):
        """Budgets for packets marked for deep dissection (classify's `samples` array).

        Marked: the first `per_flow` packets of each flow (handshakes, first requests),
        and DHCP, DHCPv6, mDNS, SSDP, NetBIOS, LLDP and CDP frames; at most
        `device_budget` per device per `device_window_s` and `global_budget` per second.
        """
        if not (0 <= per_flow <= 255 and 0 <= device_budget <= 65535 and device_window_s > 0
                and 0 <= global_budget <= 1000000):
            raise ValueError("sampling budgets out of range")
        self.sample_per_flow = per_flow
        self.sample_device_budget = device_budget
        self.sample_device_window_ns = <uint64_t>(device_window_s * 1e9)
        self.sample_global_budget = global_budget

    def add_services(self, services):
        """Services known to be offered: (16-byte address, protocol, port) each (IPv4 as
        ::ffff:a.b.c.d). They orient flows first seen in the middle (docs/fastpath.md)."""
        cdef bytes addr
        n = 0
        for addr, proto, port in services:
            if len(addr) != 16 or not 0 <= proto <= 255 or not 0 <= port <= 65535:
                raise ValueError("service: (16-byte address, protocol, port)")
            service_learn(self, addr, proto, port)
            n += 1
        return n

    def knows_service(self, bytes addr, int proto, int port):
        """Whether `addr` is known to offer `port` (learned or added)."""
        if len(addr) != 16:
            raise ValueError("address: 16 bytes")
        return bool(service_known(self, addr, proto, port))

    @property
    def mode_name(self):
        return {v: k for k, v in MODES.items()}[self.mode]

    @property
    def memory_bytes(self):
        """Bytes of every table this classifier holds; fixed for its life."""
        slots = <uint64_t>self.n_buckets * BUCKET_SLOTS
        return (slots * (sizeof(flow_t) + 4) + self.dev_capacity * (sizeof(device_t) + 4)
                + (self.frag_mask + 1) * 20 + (self.ring_mask + 1) * sizeof(event_t)
                + (self.svc_mask + 1) * sizeof(uint64_t)
                + (self.addr_mask + 1) * (sizeof(uint64_t) + sizeof(uint32_t))
                + BIND_BUCKETS * BIND_SLOTS * (sizeof(bind_t) + sizeof(uint32_t))
                + FOLD_SLOTS * sizeof(fold_t))

    def bindings(self, uint64_t now_ns=0):
        """Name -> address bindings alive at `now_ns` (default: the latest packet's time), as
        (16-byte address, name, expires_ns), for `wardtap` status and tests."""
        cdef uint32_t i
        cdef bind_t* b
        now = now_ns or self.now_ns
        out = []
        for i in range(BIND_BUCKETS * BIND_SLOTS):
            b = &self.binds[i]
            if b.expires_ns > now:
                out.append((b.addr[:16], b.name[:b.len].decode("ascii"), b.expires_ns))
        return out

    @property
    def flow_capacity(self):
        return self.n_buckets * BUCKET_SLOTS

    @property
    def device_capacity(self):
        return self.dev_capacity

    # -- the hot path ------------------------------------------------------------------

    def classify(self, const uint8_t[::1] buf, const int64_t[::1] offsets,
                 const uint32_t[::1] lengths, const uint64_t[::1] timestamps,
                 const uint16_t[::1] linktypes, uint8_t[::1] verdicts, uint8_t[::1] reasons,
                 uint16_t[::1] rules, uint8_t[::1] samples=None, const uint8_t[::1] hints=None):
        """Classify one batch: packet i is buf[offsets[i]:offsets[i]+lengths[i]].

        Fills verdicts, reasons and rules for every packet, and, when `samples` is given,
        samples[i] = 1 for packets marked for deep dissection (see set_sampling).
        `hints` (inline datapaths): per packet, what the kernel's connection tracking knows
        of its conversation (HINT_KNOWN_CONVERSATION: tracked before this packet,
        HINT_NEW_CONVERSATION: this packet is its first; 0: nothing known).
        Returns the packet count.
        """
        cdef uint8_t* sample_out = NULL
        cdef const uint8_t* hint_in = NULL
        cdef Py_ssize_t n = offsets.shape[0]
        cdef CompiledPolicy policy = self.policy     # held for the whole batch
        cdef const policy_t* pol = &policy.pol if policy is not None else NULL
        if (lengths.shape[0] < n or timestamps.shape[0] < n or linktypes.shape[0] < n
                or verdicts.shape[0] < n or reasons.shape[0] < n or rules.shape[0] < n
                or (samples is not None and samples.shape[0] < n)
                or (hints is not None and hints.shape[0] < n)):
            raise ValueError("batch arrays shorter than offsets")
        if n == 0:
            return 0
        if samples is not None:
            sample_out = &samples[0]
        if hints is not None:
            hint_in = &hints[0]
        with nogil:
            classify_batch(self, &buf[0] if buf.shape[0] else NULL, buf.shape[0], &offsets[0],
                           &lengths[0], &timestamps[0], &linktypes[0], &verdicts[0], &reasons[0],
                           &rules[0], sample_out, hint_in, n, pol)
        return n

    # -- the slow path's side ----------------------------------------------------------

    def drain_events(self, uint8_t[::1] out):
        """Move up to len(out) // EVENT_BYTES events into `out`; return how many."""
        cdef uint64_t n = 0, room = out.shape[0] // sizeof(event_t)
        cdef event_t* dst = <event_t*>&out[0] if out.shape[0] else NULL
        while n < room and self.ring_tail < self.ring_head:
            dst[n] = self.ring[self.ring_tail & self.ring_mask]
            self.ring_tail += 1
            n += 1
        return n

    def drain(self, Py_ssize_t max_events=8192):
        """Take up to max_events events off the ring as tuples (fields as EVENT_FIELDS)."""
        cdef list out = []
        cdef event_t* e
        while len(out) < max_events and self.ring_tail < self.ring_head:
            e = &self.ring[self.ring_tail & self.ring_mask]
            self.ring_tail += 1
            out.append(_event_tuple(e))
        return out

    def set_events(self, types=None):
        """Queue only events of these types (names of EVENT_NAMES) on the ring; None: all.

        Events of other types are not built at all: the counters (flows_created,
        flows_ended, devices, malformed, events_counted_only) still count them. What
        nothing consumes costs no copy and no Python.
        """
        cdef uint32_t mask = 0
        if types is None:
            self.event_types = 0xFFFFFFFF
            return
        codes = {name: code for code, name in EVENT_NAMES.items()}
        for name in types:
            if name not in codes:
                raise ValueError(f"unknown event type {name!r}")
            mask |= <uint32_t>1 << <int>codes[name]
        self.event_types = mask

    @property
    def pending_events(self):
        return self.ring_head - self.ring_tail

    def sweep(self, uint64_t now_ns, bint everything=False):
        """Expire idle flows at `now_ns` (live sources call this when traffic pauses)."""
        cdef uint32_t n, rounds = self.n_buckets // self.sweep_buckets if everything else 1
        if now_ns > self.now_ns:
            self.now_ns = now_ns
        with nogil:
            for n in range(rounds):
                sweep_idle(self, self.now_ns)

    def stats(self):
        """Counters since start: a dict of ints plus `reasons` {name: count}."""
        cdef uint64_t* words = <uint64_t*>&self.st
        out = {name: words[i] for i, name in enumerate(STATS_FIELDS)}
        out["reasons"] = {REASON_NAMES[r]: self.st.reasons[r]
                          for r in REASON_NAMES if self.st.reasons[r]}
        out["pending_events"] = self.ring_head - self.ring_tail
        return out

    def copy_devices(self, uint8_t[::1] out):
        """Copy every device record into `out` (records of _layout_device); return count."""
        cdef uint32_t i, n = 0
        cdef device_t* dst = <device_t*>&out[0] if out.shape[0] else NULL
        cdef uint64_t room = out.shape[0] // sizeof(device_t)
        fold_all(self)
        for i in range(self.dev_capacity):
            if self.dev_tags[i] != 0 and n < room:
                dst[n] = self.devices[i]
                n += 1
        return n

    def device_list(self):
        """Every device as a tuple (fields as DEVICE_FIELDS)."""
        cdef uint32_t i
        cdef device_t* d
        out = []
        fold_all(self)
        for i in range(self.dev_capacity):
            if self.dev_tags[i] != 0:
                d = &self.devices[i]
                out.append((d.index, d.mac[:6] if d.has_mac else None, d.ip4[:16], d.ip6[:16],
                            d.multi_ip, d.vlan, d.first_ns, d.last_ns, d.pkts_tx, d.bytes_tx,
                            d.pkts_rx, d.bytes_rx, d.flows, d.violations))
        return out

    def flow_list(self):
        """Every active flow as a flow-end shaped event tuple (fields as EVENT_FIELDS)."""
        cdef uint64_t i, slots = <uint64_t>self.n_buckets * BUCKET_SLOTS
        cdef event_t e
        out = []
        for i in range(slots):
            if self.tags[i] != 0 and self.flows[i].state == FLOW_ACTIVE:
                memset(&e, 0, sizeof(event_t))
                fill_flow_event(&e, EV_FLOW_END, &self.flows[i], self.flows[i].last_ns)
                e.reason = self.flows[i].reason
                out.append(_event_tuple(&e))
        return out

    def copy_flows(self, uint8_t[::1] out, bint active_only=True):
        """Copy active flows into `out` as flow-end shaped event records; return count."""
        cdef uint64_t i, n = 0, slots = <uint64_t>self.n_buckets * BUCKET_SLOTS
        cdef event_t* dst = <event_t*>&out[0] if out.shape[0] else NULL
        cdef uint64_t room = out.shape[0] // sizeof(event_t)
        cdef flow_t* f
        for i in range(slots):
            if self.tags[i] == 0 or n >= room:
                continue
            f = &self.flows[i]
            if active_only and f.state != FLOW_ACTIVE:
                continue
            memset(&dst[n], 0, sizeof(event_t))
            fill_flow_event(&dst[n], EV_FLOW_END, f, f.last_ns)
            dst[n].reason = f.reason
            n += 1
        return n
