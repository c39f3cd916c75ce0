# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""wardtap fast path: decode, flow table, policy match and verdicts for batches of packets.

One Python call per batch; the loop runs without the GIL and allocates nothing. Events
(new device, new flow, violation, flow end, malformed) go to a bounded ring that the slow
path drains; a full ring is counted, never waited on.
"""

from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcmp, memcpy, memset

import os

cdef extern from *:
    """
    #define WARDTAP_PREFETCH(p) __builtin_prefetch((p), 0, 3)
    """
    void WARDTAP_PREFETCH(const void* p) noexcept nogil

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
        self.flows = <flow_t*>calloc(<size_t>self.n_buckets * BUCKET_SLOTS, sizeof(flow_t))
        self.tags = <uint32_t*>calloc(<size_t>self.n_buckets * BUCKET_SLOTS, sizeof(uint32_t))
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
        if (self.flows == NULL or self.tags == NULL or self.devices == NULL
                or self.dev_tags == NULL or self.frag_keys == NULL or self.frag_flows == NULL or self.frag_flow_ids == NULL
                or self.ring == NULL or self.svc_keys == NULL or self.addr_tags == NULL
                or self.addr_devs == NULL or self.binds == NULL or self.bind_tags == NULL):
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
        free(self.flows)
        free(self.tags)
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
            self._decide(f, &policy.pol if policy is not None else NULL)
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

    cdef void _decide(self, flow_t* f, const policy_t* pol) noexcept nogil:
        """Verdict of an existing flow from what its slot and devices remember. A guessed
        initiator that the policy now allows only the other way round is turned round."""
        cdef uint64_t gi[GROUP_WORDS]
        cdef uint64_t gr[GROUP_WORDS]
        cdef const uint8_t* ip_i = <const uint8_t*>f.key.a
        cdef const uint8_t* ip_r = <const uint8_t*>f.key.b
        cdef const uint8_t* mac_i = ip_i
        cdef const uint8_t* mac_r = ip_r
        cdef bint has_i = 0, has_r = 0
        cdef uint16_t rule, nearest
        if not f.init_is_a:
            ip_i = <const uint8_t*>f.key.b
            ip_r = <const uint8_t*>f.key.a
        if f.dev[0] != NO_DEVICE and self.devices[f.dev[0]].has_mac:
            mac_i = self.devices[f.dev[0]].mac
            has_i = 1
        if f.dev[1] != NO_DEVICE and self.devices[f.dev[1]].has_mac:
            mac_r = self.devices[f.dev[1]].mac
            has_r = 1
        if pol == NULL or self.mode == MODE_LEARN:
            f.verdict = VERDICT_ALLOW
            f.reason = R_NO_POLICY
            f.rule = NO_RULE
            f.nearest = NO_RULE
            return
        groups_of(pol, mac_i, has_i, ip_i, 1, f.key.vlan, gi)
        groups_of(pol, mac_r, has_r, ip_r, 1, f.key.vlan, gr)
        if pol.n_names:
            # The bindings that held when the flow started (a flow allowed through a
            # binding stays allowed for its life, as far as the table remembers it).
            bind_groups(self, pol, ip_i, f.first_ns, gi)
            bind_groups(self, pol, ip_r, f.first_ns, gr)
        f.reason = evaluate(pol, gi, gr, f.key.proto, f.dport, &f.rule, &f.nearest)
        if f.reason != R_RULE and f.orient >= ORIENT_GUESSED and has_ports(f.key.proto):
            if evaluate(pol, gr, gi, f.key.proto, f.key.pb if not f.init_is_a else f.key.pa,
                        &rule, &nearest) == R_RULE:
                flow_flip(f)
                f.orient = ORIENT_POLICY
                f.reason = R_RULE
                f.rule = rule
                f.nearest = NO_RULE
        if f.detail != DETAIL_NONE and f.reason == R_RULE:
            # Its first payload broke its rule; that payload is gone and is not judged again.
            f.reason = R_SERVER_NAME if f.detail == DETAIL_SERVER_NAME else R_CLINICAL
            f.nearest = f.rule
            f.rule = NO_RULE
        f.verdict = VERDICT_ALLOW if f.reason == R_RULE else VERDICT_DENY

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
                + BIND_BUCKETS * BIND_SLOTS * (sizeof(bind_t) + sizeof(uint32_t)))

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
            self._classify(&buf[0] if buf.shape[0] else NULL, buf.shape[0], &offsets[0],
                           &lengths[0], &timestamps[0], &linktypes[0], &verdicts[0],
                           &reasons[0], &rules[0], sample_out, hint_in, n, pol)
        return n

    cdef void _classify(self, const uint8_t* buf, Py_ssize_t buflen, const int64_t* offsets,
                        const uint32_t* lengths, const uint64_t* ts, const uint16_t* linktypes,
                        uint8_t* verdicts, uint8_t* reasons, uint16_t* rules, uint8_t* samples,
                        const uint8_t* hints, Py_ssize_t n, const policy_t* pol) noexcept nogil:
        cdef Py_ssize_t i
        cdef pkt_t k
        cdef int r
        cdef uint32_t length
        cdef uint8_t no_sample = 0
        cdef uint8_t* sample = &no_sample
        cdef bint compact = self.compact and WARDTAP_COMPACT_OK
        if self.start_ns == 0:
            self.start_ns = ts[0]     # when the classifier started watching (capture time)
        self.batch_hints = hints      # read at flow starts only (_start_flow)
        self.batch_first = self.st.packets
        for i in range(n):
            if i + PREFETCH_AHEAD < n and offsets[i + PREFETCH_AHEAD] >= 0 and offsets[i + PREFETCH_AHEAD] < buflen:
                WARDTAP_PREFETCH(buf + offsets[i + PREFETCH_AHEAD])
                WARDTAP_PREFETCH(buf + offsets[i + PREFETCH_AHEAD] + 64)
            length = lengths[i]
            if samples != NULL:
                sample = &samples[i]
                sample[0] = 0
            self.st.packets += 1
            self.st.bytes += length
            if offsets[i] < 0 or offsets[i] > buflen or length > buflen - offsets[i]:
                r = R_BAD_OFFSET
            else:
                if ts[i] > self.now_ns:
                    self.now_ns = ts[i]
                if (compact and linktypes[i] == LINKTYPE_ETHERNET
                        and compact_hit(self, buf + offsets[i], length, ts[i],
                                        sample if samples != NULL else NULL,
                                        &verdicts[i], &reasons[i], &rules[i])):
                    continue
                r = decode_packet(buf + offsets[i], length, linktypes[i], &k)
            if r != R_RULE:
                self._malformed(&k, r, ts[i], i)
                verdicts[i] = VERDICT_MALFORMED
                reasons[i] = r
                rules[i] = NO_RULE
                continue
            if k.l3 == L3_IPV4 or k.l3 == L3_IPV6:
                self._ip_packet(&k, buf + offsets[i], length, ts[i], pol, &verdicts[i], &reasons[i], &rules[i],
                                sample if samples != NULL else NULL)
            else:
                self._l2_packet(&k, length, ts[i], pol, &verdicts[i], &reasons[i],
                                sample if samples != NULL else NULL)
                rules[i] = NO_RULE
            if verdicts[i] == VERDICT_ALLOW:
                self.st.allowed += 1
            else:
                self.st.denied += 1
            self.st.reasons[reasons[i]] += 1
        self.batch_hints = NULL
        sweep_idle(self, self.now_ns)

    cdef void _malformed(self, const pkt_t* k, int reason, uint64_t ts, Py_ssize_t i) noexcept nogil:
        cdef event_t* e
        self.st.malformed += 1
        self.st.reasons[reason] += 1
        e = event_slot(self, EV_MALFORMED)
        if e != NULL:
            e.type = EV_MALFORMED
            e.reason = reason
            e.verdict = VERDICT_MALFORMED
            e.ts_ns = ts
            e.packet = self.st.packets - 1
            e.device = NO_DEVICE
            e.peer_device = NO_DEVICE
            e.rule = NO_RULE
            if reason != R_BAD_OFFSET and reason != R_LINKTYPE and k.has_mac:
                memcpy(e.smac, k.src_mac, 6)
                e.has_mac = k.has_mac

    cdef uint32_t _touch_device(self, const pkt_t* k, uint64_t ts) noexcept nogil:
        """Device of the packet's sender, announcing it when new."""
        cdef bint created
        cdef uint32_t d = device_lookup(self, k, ts, &created)
        cdef event_t* e
        if d == NO_DEVICE:
            return d
        device_learn_ip(&self.devices[d], k)
        if k.has_mac == 1 and (k.l3 == L3_IPV4 or k.l3 == L3_IPV6):
            address_learn(self, k.src, d)     # this link will not tell its MAC to its peers
        if created:
            e = event_slot(self, EV_NEW_DEVICE)
            if e != NULL:
                e.type = EV_NEW_DEVICE
                e.ts_ns = ts
                e.packet = self.st.packets - 1
                e.device = d
                e.peer_device = NO_DEVICE
                e.rule = NO_RULE
                memcpy(e.smac, k.src_mac, 6)
                e.has_mac = k.has_mac
                if k.l3 != L3_NONE:
                    memcpy(e.src, k.src, 16)
                e.l3 = k.l3
                e.vlan = k.vlan
        return d

    cdef bint _take_sample(self, uint32_t dev, uint64_t ts) noexcept nogil:
        """Spend one unit of the global and the device's dissection budget, if any is left."""
        cdef device_t* d
        cdef uint32_t window
        if ts - self.sample_global_start >= 1000000000 or ts < self.sample_global_start:
            self.sample_global_start = ts
            self.sample_global_count = 0
        if self.sample_global_count >= self.sample_global_budget:
            self.st.samples_over_budget += 1
            return 0
        if dev != NO_DEVICE:
            d = &self.devices[dev]
            window = <uint32_t>(ts // self.sample_device_window_ns)
            if d.sample_window != window:
                d.sample_window = window
                d.samples = 0
            if d.samples >= self.sample_device_budget:
                self.st.samples_over_budget += 1
                return 0
            d.samples += 1
        self.sample_global_count += 1
        self.st.samples += 1
        return 1

    cdef void _l2_packet(self, const pkt_t* k, uint32_t length, uint64_t ts,
                         const policy_t* pol, uint8_t* verdict, uint8_t* reason,
                         uint8_t* sample) noexcept nogil:
        cdef uint32_t d = self._touch_device(k, ts)
        cdef uint8_t action = ACTION_ALLOW
        if d != NO_DEVICE:
            self.devices[d].pkts_tx += 1
            self.devices[d].bytes_tx += length
            self.devices[d].last_ns = ts
        if sample != NULL and k.discovery:
            sample[0] = self._take_sample(d, ts)
        reason[0] = R_ARP if k.l3 == L3_ARP else R_NON_IP
        if pol != NULL and self.mode != MODE_LEARN:
            action = pol.arp if k.l3 == L3_ARP else pol.non_ip
        else:
            reason[0] = R_NO_POLICY
        verdict[0] = VERDICT_ALLOW if action == ACTION_ALLOW else VERDICT_DENY

    cdef void _ip_packet(self, const pkt_t* k, const uint8_t* p, uint32_t length, uint64_t ts,
                         const policy_t* pol, uint8_t* verdict, uint8_t* reason,
                         uint16_t* rule, uint8_t* sample) noexcept nogil:
        cdef flow_key_t key
        cdef bint swapped, created, from_initiator
        cdef flow_t* f
        cdef uint32_t role, slot
        cdef uint64_t fh
        cdef uint32_t plen
        cdef int settle
        if k.frag == FRAG_LATER:
            fh = frag_hash(k, self.seed)
            slot = fh & self.frag_mask
            f = &self.flows[self.frag_flows[slot]]
            if self.frag_keys[slot] == fh and f.id == self.frag_flow_ids[slot]:
                self.st.fragments_attributed += 1
                verdict[0] = f.verdict
                reason[0] = R_FRAGMENT
                rule[0] = f.rule
                return
            self.st.fragments_unmatched += 1
            reason[0] = R_FRAGMENT_UNMATCHED
            rule[0] = NO_RULE
            if pol == NULL or self.mode == MODE_LEARN or pol.fragment_unmatched == ACTION_ALLOW:
                verdict[0] = VERDICT_ALLOW
            else:
                verdict[0] = VERDICT_DENY
            return
        if k.inner_valid:
            f = related_flow(self, k)
            if f != NULL:
                # An ICMP error about a known flow (port unreachable, TTL exceeded, too
                # big) shares that flow's verdict instead of being a flow of its own.
                f.last_ns = ts
                verdict[0] = f.verdict
                reason[0] = R_RELATED
                rule[0] = f.rule
                return
        swapped = make_key(k, &key)
        f = flow_find_or_add(self, &key, ts, &created)
        if not created and f.state == FLOW_CLOSING and k.proto == 6 and (k.tcp_flags & 0x12) == 0x02:
            # A new SYN on a closed connection's ports: a new flow in the same slot.
            memset(f, 0, sizeof(flow_t))
            f.key = key
            created = 1
        from_initiator = swapped != f.init_is_a
        settle = 0
        if not created and (k.answer | f.pending):
            # Rare: a packet with a say (SYN, DNS/NTP/DHCP) or a flow waiting for a side.
            created = self._heed(f, k, &key, swapped, from_initiator, ts, &settle)
        if created:
            self._start_flow(f, k, swapped, ts, pol)
            from_initiator = swapped != f.init_is_a
        role = 0 if from_initiator else 1
        f.pkts[role] += 1
        f.bytes[role] += length
        f.last_ns = ts
        if f.dev[role] == NO_DEVICE and not created:
            f.dev[role] = self._touch_device(k, ts)
            if f.dev[role] != NO_DEVICE:
                self.devices[f.dev[role]].flows += 1
                # It was not a device yet when this flow's earlier packets reached it.
                self.devices[f.dev[role]].pkts_rx += f.pkts[1 - role]
                self.devices[f.dev[role]].bytes_rx += f.bytes[1 - role]
                if role == 0 and f.verdict == VERDICT_DENY:
                    self.devices[f.dev[role]].violations += 1
        if f.dev[role] != NO_DEVICE:
            self.devices[f.dev[role]].pkts_tx += 1
            self.devices[f.dev[role]].bytes_tx += length
            self.devices[f.dev[role]].last_ns = ts
        if f.dev[1 - role] != NO_DEVICE:
            self.devices[f.dev[1 - role]].pkts_rx += 1
            self.devices[f.dev[1 - role]].bytes_rx += length
        if settle:
            # The pending flow's unidentified side speaks, or has spoken in another flow: its
            # device (touched above, or found by address) knows its MAC. Decide now.
            if f.dev[1 - role] == NO_DEVICE and settle == 2:
                f.dev[1 - role] = device_at(self, k.dst)
                self.devices[f.dev[1 - role]].flows += 1
            self._settle_pending(f, pol, ts)
        if k.proto == 6 and (k.tcp_flags & 0x05):
            self._tcp_close(f, k.tcp_flags, role, ts)
        if sample != NULL and (f.sampled[role] < self.sample_per_flow or discovery_port(k)):
            if self._take_sample(f.dev[role], ts):
                sample[0] = 1
                if f.sampled[role] < self.sample_per_flow:
                    f.sampled[role] += 1
            elif f.sampled[role] < self.sample_per_flow:
                # Over budget: this direction of this flow stops asking, so a device past
                # its budget costs one check per flow, not one per packet.
                f.sampled[role] = 255
        if k.frag == FRAG_FIRST:
            fh = frag_hash(k, self.seed)
            self.frag_keys[fh & self.frag_mask] = fh
            self.frag_flows[fh & self.frag_mask] = <uint32_t>(f - self.flows)
            self.frag_flow_ids[fh & self.frag_mask] = f.id
        if (k.answer == ANSWER_REPLY and k.sport == 53 and k.proto == 17 and pol != NULL
                and pol.n_names and f.verdict == VERDICT_ALLOW):
            # A DNS answer let through under a policy with names: its bindings, before
            # the client can use them.
            plen = rd16(p + k.l4_off + 4)
            if k.l4_off + plen > k.l4_end:
                plen = k.l4_end - k.l4_off
            if k.l4_off + plen > length:
                plen = length - k.l4_off
            if plen > 8:
                dns_learn(self, pol, p + k.l4_off + 8, plen - 8, ts)
        if f.watch:
            reason[0] = self._watched(f, k, p, role, ts, pol)
        else:
            reason[0] = f.reason
        verdict[0] = f.verdict
        rule[0] = f.rule

    cdef bint _heed(self, flow_t* f, const pkt_t* k, const flow_key_t* key, bint swapped,
                    bint from_initiator, uint64_t ts, int* settle) noexcept nogil:
        """An existing flow's packet that says who is who (k.answer), or a flow waiting for
        one side (f.pending). Returns 1 when the flow starts again from this packet: a
        guessed initiator it contradicts, or the receiver of an unsolicited answer speaking
        for itself. Sets *settle (1: the waited-for side sends this; 2: it has spoken in
        another flow) for a flow waiting for its receiver to be identified."""
        if k.answer == ANSWER_REPLY:
            # A SYN-ACK or a DNS/NTP/DHCP answer: its sender offers that port.
            service_learn(self, k.src, k.proto, k.sport)
        if f.state != FLOW_ACTIVE:
            return 0
        if f.pending & PENDING_RESTART:
            if not side_speaks(f.pending, swapped):
                return 0
        elif f.pending:
            if side_speaks(f.pending, swapped):
                settle[0] = 1
            elif k.has_mac == 1 and device_at(self, k.dst) != NO_DEVICE:
                settle[0] = 2
            return 0
        elif not (k.answer and f.orient >= ORIENT_GUESSED
                  and contradicts(k, 0 if from_initiator else 1)):
            return 0
        self.st.flows_reoriented += 1
        end_flow(self, f, END_REORIENTED, ts)
        memset(f, 0, sizeof(flow_t))
        f.key = key[0]
        return 1

    cdef void _start_flow(self, flow_t* f, const pkt_t* k, bint swapped, uint64_t ts,
                          const policy_t* pol) noexcept nogil:
        cdef bint sender_first
        cdef uint8_t orient = orient_packet(self, k, &sender_first)
        cdef uint64_t gs[GROUP_WORDS]      # the sender's groups
        cdef uint64_t gd[GROUP_WORDS]      # the receiver's
        cdef uint64_t static_s[GROUP_WORDS]   # the same without name bindings
        cdef uint64_t static_d[GROUP_WORDS]
        cdef bint enforcing = pol != NULL and self.mode != MODE_LEARN
        cdef bint icmp = k.proto == 1 or k.proto == 58
        cdef uint8_t why = R_NO_POLICY
        cdef uint16_t rule = NO_RULE, nearest = NO_RULE, rule2, nearest2
        cdef event_t* e
        cdef uint32_t d
        cdef bint peer_created
        # What the kernel knows of this conversation (inline datapaths): read here, once per
        # flow, from the batch's hints (this packet is number st.packets - 1).
        cdef uint8_t hint = HINT_NONE
        if self.batch_hints != NULL:
            hint = self.batch_hints[self.st.packets - 1 - self.batch_first]
        if k.answer == ANSWER_REPLY:
            service_learn(self, k.src, k.proto, k.sport)      # a SYN-ACK, a DNS/NTP answer
        # The receiver, if it is a device already known (on links that carry only the
        # sender's MAC, found by its address): its MAC decides its groups.
        cdef uint32_t peer = device_lookup(self, k, ts, &peer_created, 1)
        cdef const uint8_t* rmac = k.dst_mac
        cdef bint rhas = k.has_mac == 2
        if k.has_mac == 1:
            peer = device_at(self, k.dst)
            if peer != NO_DEVICE and self.devices[peer].has_mac:
                rmac = self.devices[peer].mac
                rhas = 1
        if enforcing:
            groups_of(pol, k.src_mac, k.has_mac >= 1, k.src, 1, k.vlan, gs)
            groups_of(pol, rmac, rhas, k.dst, 1, k.vlan, gd)
            memcpy(static_s, gs, sizeof(gs))
            memcpy(static_d, gd, sizeof(gd))
            if pol.n_names:
                # Names: the groups of the names each address is bound to now.
                bind_groups(self, pol, k.src, ts, gs)
                bind_groups(self, pol, k.dst, ts, gd)
            why = decide_oriented(pol, gs, gd, k, sender_first, &rule, &nearest)
            if why != R_RULE and orient >= ORIENT_GUESSED:
                # Allowed the other way round only: that is the way it goes.
                if decide_oriented(pol, gs, gd, k, not sender_first, &rule2,
                                   &nearest2) == R_RULE:
                    sender_first = not sender_first
                    orient = ORIENT_POLICY
                    why = R_RULE
                    rule = rule2
                    nearest = NO_RULE
        if not sender_first and orient != ORIENT_ICMP and not answer_accepted(self, k, hint, ts):
            # It looks like an answer, but no request can have been missed: whoever sent it
            # started this conversation (never a hole for a packet that only looks right).
            sender_first = 1
            orient = ORIENT_UNSOLICITED
            f.pending = PENDING_RESTART | (PENDING_A if swapped else PENDING_B)
            self.st.unsolicited_answers += 1
            if enforcing:
                why = decide_oriented(pol, gs, gd, k, 1, &rule, &nearest)
                if why != R_RULE:
                    why = R_UNSOLICITED
        if (enforcing and why != R_RULE and orient != ORIENT_UNSOLICITED and not rhas
                and k.has_mac == 1 and hint == HINT_KNOWN
                and could_be_allowed(pol, gs, k, sender_first, orient >= ORIENT_GUESSED)):
            # A conversation the kernel already carried, first met here from the side whose
            # MAC the link shows (inline, after a restart): the receiver is not identified
            # yet and its MAC may be what allows it. This packet passes; the flow is decided
            # when the receiver speaks (its next packet carries its MAC).
            why = R_PENDING
            rule = NO_RULE
            nearest = NO_RULE
            f.pending = PENDING_A if swapped else PENDING_B
        f.id = self.next_flow_id
        self.next_flow_id += 1
        f.first_ns = ts
        f.state = FLOW_ACTIVE
        f.orient = orient
        f.init_is_a = (not swapped) == sender_first
        f.timeout_class = timeout_class_of(k.proto)
        f.dev[0] = NO_DEVICE
        f.dev[1] = NO_DEVICE
        f.dport = responder_port(k, sender_first)
        self.st.flows_created += 1
        self.st.flows_active += 1
        d = self._touch_device(k, ts)
        f.dev[0 if sender_first else 1] = d
        if d != NO_DEVICE:
            self.devices[d].flows += 1
        # The receiving side, if it is a device already known, counts what it receives.
        f.dev[1 if sender_first else 0] = peer
        if peer != NO_DEVICE:
            self.devices[peer].flows += 1
        f.reason = why
        f.rule = rule
        f.nearest = nearest
        if enforcing:
            f.verdict = VERDICT_ALLOW if why == R_RULE or why == R_PENDING else VERDICT_DENY
            if why == R_RULE:
                f.watch = self._watch_for(f, pol, &static_d[0] if sender_first else &static_s[0])
                f.watch_left = WATCH_PACKETS
        else:
            f.verdict = VERDICT_ALLOW
        e = event_slot(self, EV_NEW_FLOW)
        if e != NULL:
            fill_flow_event(e, EV_NEW_FLOW, f, ts)
            e.reason = f.reason
            e.packet = self.st.packets - 1
            self._event_macs(e, k, sender_first)
            e.icmp_type = k.icmp_type if icmp else 0
            e.icmp_code = k.icmp_code if icmp else 0
            if icmp:
                e.icmp_type = f.dport
        if f.verdict == VERDICT_DENY:
            if sender_first and d != NO_DEVICE:
                self.devices[d].violations += 1
            e = event_slot(self, EV_VIOLATION)
            if e != NULL:
                fill_flow_event(e, EV_VIOLATION, f, ts)
                e.reason = f.reason
                e.packet = self.st.packets - 1
                self._event_macs(e, k, sender_first)
                if icmp:
                    e.icmp_type = f.dport

    cdef uint8_t _watch_for(self, const flow_t* f, const policy_t* pol,
                            const uint64_t* static_r) noexcept nogil:
        """WATCH_* for a flow just allowed by f.rule: DNS to read, a first payload to judge
        (the rule's HL7/DICOM condition, or the SNI of a flow allowed through a binding)."""
        cdef const ruleinfo_t* ri
        if f.key.proto == 17 and f.dport == 53 and pol.n_names:
            return WATCH_DNS
        if f.key.proto != 6 or f.rule >= pol.n_ruleinfo:
            return WATCH_NONE
        ri = &pol.ruleinfo[f.rule]
        if not ri.watch and not (pol.n_names and not intersects(static_r, ri.ends)):
            return WATCH_NONE
        if f.orient != ORIENT_SYN:
            # Met after its start (a restart, a late tap): what it sends now is not its first
            # payload. It keeps its address verdict rather than being cut mid-conversation.
            self.st.payloads_missed += 1
            return WATCH_NONE
        return ri.watch if ri.watch else WATCH_TLS   # TLS: allowed only through a binding

    cdef uint8_t _watched(self, flow_t* f, const pkt_t* k, const uint8_t* p, uint32_t role,
                          uint64_t ts, const policy_t* pol) noexcept nogil:
        """A packet of a watched flow: read or judge it. Returns the packet's reason:
        R_WATCHED while the flow stays watched (a verdict for this packet only), else the
        flow's reason, now final."""
        cdef uint32_t start, end, n
        cdef uint8_t w = f.watch, detail = DETAIL_NONE
        cdef uint8_t name[NAME_MAX + 1]
        cdef uint32_t name_len = 0
        cdef uint64_t g[GROUP_WORDS]
        cdef int r
        if f.verdict != VERDICT_ALLOW or pol == NULL or f.rule >= pol.n_ruleinfo:
            f.watch = WATCH_NONE          # decided otherwise since, or under no policy
            return f.reason
        if w == WATCH_DNS:
            return R_WATCHED
        n = 0
        if role == 0 and k.proto == 6 and k.frag != FRAG_LATER:
            start = k.l4_off + ((p[k.l4_off + 12] >> 4) << 2)
            end = k.l4_end                # within the frame (decode bounds it)
            n = end - start if end > start else 0
        if n == 0:
            if f.watch_left > 1:
                f.watch_left -= 1
                return R_WATCHED
            f.watch = WATCH_NONE
            if w != WATCH_TLS:
                self._judged(f, R_CLINICAL, DETAIL_NO_PAYLOAD, ts)
            return f.reason
        f.watch = WATCH_NONE
        self.st.payloads_judged += 1
        if w == WATCH_TLS:
            r = tls_server_name(p + start, n, name, &name_len)
            if r < 0:
                self.st.payloads_unreadable += 1     # not TLS: no second signal to check
            elif r == 1:
                memset(g, 0, sizeof(g))
                name_groups(pol, name, name_len, g)
                if not intersects(g, pol.ruleinfo[f.rule].ends):
                    detail = DETAIL_SERVER_NAME
                    self._judged(f, R_SERVER_NAME, detail, ts)
            return f.reason
        if w == WATCH_HL7:
            detail = hl7_judge(pol, f.rule, pol.ruleinfo[f.rule].fields, p + start, n)
            if detail == DETAIL_HL7_NO_MSH:
                self.st.payloads_unreadable += 1
        else:
            detail = dicom_judge(pol, f.rule, pol.ruleinfo[f.rule].fields, p + start, n)
            if detail == DETAIL_DICOM_NOT_ASSOCIATE:
                self.st.payloads_unreadable += 1
        if detail != DETAIL_NONE:
            self._judged(f, R_CLINICAL, detail, ts)
        return f.reason

    cdef void _judged(self, flow_t* f, uint8_t why, uint8_t detail, uint64_t ts) noexcept nogil:
        """A watched flow's first payload broke its rule: the flow is denied from here on,
        and the violation names the rule and the field."""
        cdef event_t* e
        f.verdict = VERDICT_DENY
        f.reason = why
        f.detail = detail
        f.nearest = f.rule
        f.rule = NO_RULE
        if f.dev[0] != NO_DEVICE:
            self.devices[f.dev[0]].violations += 1
        e = event_slot(self, EV_VIOLATION)
        if e != NULL:
            fill_flow_event(e, EV_VIOLATION, f, ts)
            e.reason = why
            e.detail = detail
            e.packet = self.st.packets - 1

    cdef void _settle_pending(self, flow_t* f, const policy_t* pol, uint64_t ts) noexcept nogil:
        """Decide a pending flow now that both sides are known (their devices' MACs)."""
        cdef event_t* e
        f.pending = PENDING_NONE
        self._decide(f, pol)
        if f.verdict == VERDICT_DENY:
            if f.dev[0] != NO_DEVICE:
                self.devices[f.dev[0]].violations += 1
            e = event_slot(self, EV_VIOLATION)
            if e != NULL:
                fill_flow_event(e, EV_VIOLATION, f, ts)
                e.reason = f.reason
                e.packet = self.st.packets - 1

    cdef void _event_macs(self, event_t* e, const pkt_t* k, bint sender_first) noexcept nogil:
        e.has_mac = k.has_mac
        if sender_first:
            memcpy(e.smac, k.src_mac, 6)
            memcpy(e.dmac, k.dst_mac, 6)
        else:
            memcpy(e.smac, k.dst_mac, 6)
            memcpy(e.dmac, k.src_mac, 6)

    cdef void _tcp_close(self, flow_t* f, uint8_t flags, uint32_t role, uint64_t ts) noexcept nogil:
        if flags & 0x04:
            end_flow(self, f, END_RST, ts)
            f.state = FLOW_CLOSING
            return
        f.fin |= 1 << role
        if f.fin == 3:
            end_flow(self, f, END_FIN, ts)
            f.state = FLOW_CLOSING

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
