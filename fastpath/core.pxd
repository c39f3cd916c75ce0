# C declarations of the fast path: packet, flow, device, event and policy tables.
# Loops live in the .pxi files included by core.pyx; nothing here allocates.

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t

# Verdicts written per packet.
cdef enum:
    VERDICT_NONE = 0
    VERDICT_ALLOW = 1
    VERDICT_DENY = 2
    VERDICT_MALFORMED = 3

# Reasons: why a packet got its verdict. Names in core.pyx REASON_NAMES, same order.
cdef enum:
    R_RULE = 0                # allowed by the rule in `rule`
    R_NO_POLICY = 1           # learn mode or no policy loaded: nothing enforced
    R_NO_RULE = 2             # no rule joins the two endpoints' groups
    R_WRONG_INITIATOR = 3     # allowed only if the other side had started it
    R_PROTO_NOT_ALLOWED = 4
    R_PORT_NOT_ALLOWED = 5
    R_ARP = 6                 # ARP, allowed or denied by the policy's `arp`
    R_NON_IP = 7              # other non-IP frame, by the policy's `non_ip`
    R_FRAGMENT = 8            # later IP fragment, attributed to its flow
    R_FRAGMENT_UNMATCHED = 9  # later fragment whose first fragment was not seen
    R_RELATED = 10            # ICMP error about a known flow: that flow's verdict
    R_UNSOLICITED = 11        # looks like an answer, but no request can have been missed
    R_PENDING = 12            # allowed for this packet only: the receiver, who may be the
                              # initiator, is not identified yet (no MAC on this link)
    R_WATCHED = 13            # allowed by `rule` for this packet only: its flow is still
                              # watched (DNS answers to learn from, a first payload to judge)
    R_SERVER_NAME = 14        # the TLS server name (SNI) is none of the names the rule allows
    R_CLINICAL = 15           # the first payload broke the rule's HL7/DICOM condition; the
                              # field is in flow_t.detail / event_t.detail (DETAIL_*)
    R_MALFORMED_FIRST = 16    # reasons from here on come with VERDICT_MALFORMED
    R_BAD_OFFSET = 16         # batch offset/length outside the buffer
    R_LINKTYPE = 17           # link type the decoder does not know
    R_ETH_SHORT = 18
    R_VLAN_SHORT = 19
    R_VLAN_DEPTH = 20         # more than two VLAN tags
    R_SLL_SHORT = 21
    R_RAW_VERSION = 22        # raw-IP link type, version nibble neither 4 nor 6
    R_ARP_SHORT = 23
    R_IPV4_SHORT = 24
    R_IPV4_VERSION = 25
    R_IPV4_IHL = 26
    R_IPV4_TOTAL_LENGTH = 27
    R_IPV6_SHORT = 28
    R_IPV6_VERSION = 29
    R_IPV6_EXT_SHORT = 30
    R_IPV6_EXT_DEPTH = 31     # more than 8 extension headers
    R_TCP_SHORT = 32
    R_TCP_OFFSET = 33         # data offset below 5 words or past the IP packet
    R_UDP_SHORT = 34
    R_UDP_LENGTH = 35
    R_ICMP_SHORT = 36
    R_SCTP_SHORT = 37
    R_LINK_SHORT = 38         # a link header (loopback, PPP, HDLC, 802.11, NFLOG...) cut short
    R_ENCAP_SHORT = 39        # PPPoE, MPLS, VN-Tag, NSH or LLC/SNAP header cut short
    R_ENCAP_DEPTH = 40        # more than MAX_ENCAPS encapsulation headers before IP
    R_COUNT = 41

# Event types in the ring.
cdef enum:
    EV_NEW_DEVICE = 1
    EV_NEW_FLOW = 2
    EV_VIOLATION = 3
    EV_FLOW_END = 4
    EV_MALFORMED = 5

# Why a flow ended (event.reason for EV_FLOW_END).
cdef enum:
    END_FIN = 1
    END_RST = 2
    END_IDLE = 3
    END_EVICTED = 4
    END_NEW_SYN = 5           # a new SYN reused a closing flow's ports
    END_REORIENTED = 6        # evidence contradicted a guessed initiator: started again

# How a flow's initiator was decided (flow_t.orient, event_t.orient); docs/fastpath.md.
# Up to ORIENT_UNSOLICITED the packets said it; from ORIENT_GUESSED on it is a guess, and a
# guess is replaced when a later packet contradicts it (END_REORIENTED).
cdef enum:
    ORIENT_SYN = 1            # TCP SYN (the sender) or SYN-ACK (the receiver)
    ORIENT_ICMP = 2           # ICMP request or reply type
    ORIENT_GROUP = 3          # broadcast or multicast receiver: the sender started it
    ORIENT_PAYLOAD = 4        # DNS, NTP or DHCP header: a request or an answer
    ORIENT_UNSOLICITED = 5    # an answer no request can explain: its sender started it
    ORIENT_POLICY = 6         # the policy allows the conversation one way only
    ORIENT_SERVICE = 7        # one side offers a service known on its port
    ORIENT_PORTS = 8          # service port against ephemeral port (port classes)
    ORIENT_LOWER_PORT = 9     # same class: the lower port is the service
    ORIENT_FIRST = 10         # same port both sides: the first sender
    ORIENT_GUESSED = ORIENT_POLICY

# Payload evidence in pkt_t.answer: what a DNS, NTP or DHCP header says the packet is.
cdef enum:
    ANSWER_UNKNOWN = 0
    ANSWER_REQUEST = 1        # the sender is the client
    ANSWER_REPLY = 2          # the sender is the server

# Per-packet hints from the datapath (classify's `hints`): what the kernel's connection
# tracking knows of the packet's conversation. 0: nothing known (files, taps).
cdef enum:
    HINT_NONE = 0
    HINT_KNOWN = 1            # the kernel tracked this conversation before this packet
    HINT_NEW = 2              # this packet is the first the kernel has seen of it

# Tunnels, reported (pkt_t.tunnel) and not decapsulated: the outer header is classified.
cdef enum:
    TUN_NONE = 0
    TUN_IPIP = 1              # IPv4 in IP (4)
    TUN_IPV6 = 2              # IPv6 in IP (41)
    TUN_GRE = 3               # GRE (47)
    TUN_ETHERIP = 4           # EtherIP (97)
    TUN_L2TP = 5              # L2TPv3 over IP (115)
    TUN_MPLS = 6              # MPLS in IP (137)
# What a flow is watched for (flow_t.watch); docs/policy.md "Names" and "Clinical rules".
cdef enum:
    WATCH_NONE = 0
    WATCH_DNS = 1             # an allowed DNS flow under a policy with names: its answers
                              # are read for bindings, so they must reach the classifier
    WATCH_TLS = 2             # allowed through a name binding: the ClientHello's SNI checks it
    WATCH_HL7 = 3             # the rule has an HL7 condition: judged on the first payload
    WATCH_DICOM = 4           # the rule has a DICOM condition: judged on the A-ASSOCIATE-RQ
    WATCH_PACKETS = 32        # packets a flow is watched for its initiator's first payload

# Which field of the first payload broke a rule (flow_t.detail, event_t.detail).
cdef enum:
    DETAIL_NONE = 0
    DETAIL_HL7_NO_MSH = 1         # no complete MSH segment in the first payload
    DETAIL_HL7_TYPE = 2           # MSH-9 message type
    DETAIL_HL7_SENDING = 3        # MSH-3 sending application
    DETAIL_HL7_RECEIVING = 4      # MSH-5 receiving application
    DETAIL_DICOM_NOT_ASSOCIATE = 5  # not an A-ASSOCIATE-RQ, or its lengths are wrong
    DETAIL_DICOM_CALLING = 6      # calling AE title
    DETAIL_DICOM_CALLED = 7       # called AE title
    DETAIL_DICOM_SERVICE = 8      # a proposed abstract syntax (SOP class) outside the services
    DETAIL_NO_PAYLOAD = 9         # the initiator sent no payload within WATCH_PACKETS packets
    DETAIL_SERVER_NAME = 10       # TLS SNI

# Clinical condition fields (clin_t.field).
cdef enum:
    CF_HL7_TYPE = 1
    CF_HL7_SENDING = 2
    CF_HL7_RECEIVING = 3
    CF_DICOM_CALLING = 4
    CF_DICOM_CALLED = 5
    CF_DICOM_SOP = 6              # exact SOP class UID
    CF_DICOM_SOP_PREFIX = 7       # SOP class UIDs under a prefix (all storage classes)
    CF_HL7_TYPE_PREFIX = 8        # "ORU^*": any trigger event of a message type

cdef enum:
    NAME_MAX = 253                # a DNS name in text form, without the final dot
    BIND_SLOTS = 8                # bindings per bucket
    BIND_BUCKETS = 512            # 4096 bindings in all (docs/policy.md)
    CLIN_TEXT = 64
    CHAIN_MAX = 8                 # names of one CNAME chain
    DNS_RECORDS_MAX = 32          # answer records read per DNS message

cdef enum:
    FLOW_EMPTY = 0
    FLOW_ACTIVE = 1
    FLOW_CLOSING = 2

# A flow waiting for one side to speak (flow_t.pending): the side (key.a or key.b), and what
# then happens: decided with that side identified, or started again from its packet.
cdef enum:
    PENDING_NONE = 0
    PENDING_A = 1
    PENDING_B = 2
    PENDING_SIDE = 3
    PENDING_RESTART = 4       # after an unsolicited answer: its receiver speaks for itself

cdef enum:
    FRAG_NONE = 0
    FRAG_FIRST = 1
    FRAG_LATER = 2

cdef enum:
    L3_NONE = 0     # non-IP frame
    L3_ARP = 1
    L3_IPV4 = 4
    L3_IPV6 = 6

cdef enum:
    TIMEOUT_TCP = 0
    TIMEOUT_UDP = 1
    TIMEOUT_ICMP = 2
    TIMEOUT_OTHER = 3
    TIMEOUT_CLOSING = 4
    TIMEOUT_CLASSES = 5

cdef enum:
    NO_RULE = 0xFFFF
    NO_DEVICE = 0xFFFFFFFF
    BUCKET_SLOTS = 8
    FOLD_SLOTS = 16384       # flows the fold list holds (512 KiB); full, it is folded at once
    MAX_GROUPS = 256
    GROUP_WORDS = 4
    SEL_MAC = 1
    SEL_OUI = 2
    SEL_NET = 3
    SEL_VLAN = 4
    ACTION_ALLOW = 1
    ACTION_DENY = 2
    MODE_LEARN = 0
    MODE_MONITOR = 1
    MODE_ENFORCE = 2
    MODE_BYPASS = 3

# One decoded packet (stack only, never stored).
ctypedef struct pkt_t:
    uint8_t dst_mac[6]
    uint8_t src_mac[6]
    uint8_t has_mac          # 2: both MACs (Ethernet), 1: source only (SLL), 0: none
    uint8_t l3               # L3_*
    uint8_t proto            # IP protocol after extension headers
    uint8_t frag             # FRAG_*
    uint8_t tcp_flags
    uint8_t icmp_type
    uint8_t icmp_code
    uint8_t tunnel           # TUN_*: reported, not decapsulated
    uint8_t discovery        # 1: LLDP or CDP frame (worth deep dissection)
    uint8_t inner_valid      # ICMP error quoting an IP header: the inner_* fields are set
    uint8_t inner_proto
    uint8_t inner_icmp_type
    uint8_t answer           # ANSWER_*: a TCP SYN / SYN-ACK, a DNS, NTP or DHCP request / answer
    uint8_t more_frags       # IP more-fragments flag
    uint16_t frag_off        # fragment offset, 8-byte units
    uint16_t inner_sport
    uint16_t inner_dport
    uint16_t inner_icmp_id
    uint16_t ethertype
    uint16_t vlan            # innermost VLAN id, 0 if untagged
    uint16_t vlan_outer      # outer (service) tag under QinQ, else 0
    uint16_t sport
    uint16_t dport
    uint16_t icmp_id
    uint32_t frag_id
    uint32_t l4_off
    uint32_t l4_end          # end of the IP packet's payload within the frame
    uint8_t src[16]          # IPv4 as ::ffff:a.b.c.d
    uint8_t dst[16]
    uint8_t inner_src[16]    # the packet an ICMP error quotes
    uint8_t inner_dst[16]

# Flow key: endpoints in canonical order so both directions hash alike.
ctypedef struct flow_key_t:
    uint64_t a[2]            # 16-byte address (IPv4 as ::ffff:a.b.c.d)
    uint64_t b[2]
    uint16_t pa              # port of a (ICMP: identifier, not swapped)
    uint16_t pb              # port of b (ICMP: message class, not swapped)
    uint16_t vlan
    uint16_t vlan_outer
    uint8_t proto
    uint8_t l3
    uint8_t pad[6]           # 48 bytes, hashed as six 64-bit words

# One flow slot: 128 bytes (stated limit: at most 256).
ctypedef struct flow_t:
    flow_key_t key
    uint64_t id
    uint64_t first_ns
    uint64_t last_ns
    uint64_t bytes[2]        # [0] initiator -> responder, [1] back
    uint32_t pkts[2]
    uint32_t dev[2]          # device index of initiator, responder
    uint16_t rule
    uint16_t dport           # responder's port (ICMP: request type)
    uint8_t verdict
    uint8_t reason
    uint8_t state            # FLOW_*
    uint8_t init_is_a        # initiator is key.a
    uint8_t fin              # bit 0: FIN from initiator, bit 1: from responder
    uint8_t timeout_class
    uint8_t sampled[2]       # per direction: packets marked for dissection (255: gave up)
    uint16_t nearest         # denied: the rule that came closest (see `reason`), else NO_RULE
    uint8_t orient           # ORIENT_*: how the initiator was decided
    uint8_t pending          # PENDING_*: decided again when this side (key.a or key.b) speaks
    uint8_t watch            # WATCH_*: the classifier still reads this flow's packets
    uint8_t watch_left       # packets left to wait for the initiator's first payload
    uint8_t detail           # DETAIL_*: which first-payload field broke the rule
    uint8_t pad1
    uint16_t fold            # 1 + its entry in the classifier's fold list while compact
                             # hits have counted packets its devices have not (0: none)
    uint8_t pad[2]

# A flow whose compact hits the devices' counters have not taken yet (flowtable.pxi, folds):
# its counters when the first of those hits came. Folded when the devices are read or the
# list is full, and before the general path finds, evicts, ends or turns round the flow.
ctypedef struct fold_t:
    uint32_t slot
    uint32_t pkts[2]
    uint64_t bytes[2]

# One device, keyed by its source MAC (or its address when the link has none).
ctypedef struct device_t:
    uint8_t key[16]
    uint8_t mac[6]
    uint8_t has_mac
    uint8_t multi_ip         # sent from more than one IPv4 address (a router)
    uint16_t vlan
    uint16_t samples         # packets marked for dissection in the current window
    uint32_t flows
    uint8_t ip4[16]          # first IPv4 seen from it (::ffff:a.b.c.d), zero if none
    uint8_t ip6[16]          # first IPv6 seen from it
    uint64_t first_ns
    uint64_t last_ns
    uint64_t pkts_tx
    uint64_t bytes_tx
    uint64_t pkts_rx
    uint64_t bytes_rx
    uint32_t violations
    uint32_t index
    uint32_t sample_window   # which budget window `samples` counts in
    uint32_t pad32

ctypedef struct event_t:
    uint64_t ts_ns
    uint64_t flow_id
    uint64_t pkts
    uint64_t bytes
    uint64_t packet              # packet number (0-based, over the classifier's life)
    uint64_t first_ns            # flow events: when the flow started
    uint8_t src[16]              # initiator / device address
    uint8_t dst[16]              # responder
    uint8_t smac[6]
    uint8_t dmac[6]
    uint16_t sport
    uint16_t dport
    uint16_t vlan
    uint16_t rule
    uint32_t device
    uint32_t peer_device
    uint8_t type
    uint8_t reason
    uint8_t verdict
    uint8_t proto
    uint8_t l3
    uint8_t has_mac
    uint8_t icmp_type
    uint8_t icmp_code
    uint8_t orient               # flow events: ORIENT_*
    uint8_t detail               # violations: DETAIL_*

ctypedef struct selector_t:
    uint8_t value[16]
    uint8_t kind                 # SEL_*
    uint8_t prefix               # SEL_NET: prefix length over the 16-byte form
    uint16_t group

ctypedef struct rule_t:
    uint64_t src[GROUP_WORDS]    # group bitsets; bit 0 is "any"
    uint64_t dst[GROUP_WORDS]
    uint16_t port_lo             # responder port range (ICMP: type range)
    uint16_t port_hi
    uint16_t rule                # index of the source rule
    uint8_t proto                # 0: any
    uint8_t either               # either side may initiate

# A DNS name of a policy group: exact, or `*.suffix` (names under the suffix).
ctypedef struct name_t:
    uint8_t text[NAME_MAX + 1]   # lower case, no final dot
    uint8_t len
    uint8_t suffix
    uint16_t group

# What a source rule asks of a flow beyond addresses (indexed by rule index).
ctypedef struct ruleinfo_t:
    uint64_t ends[GROUP_WORDS]   # groups on its responder side (both sides when `either`)
    uint8_t watch                # WATCH_HL7, WATCH_DICOM or WATCH_NONE
    uint16_t fields              # bit per CF_* field it constrains

# One allowed value of a clinical condition.
ctypedef struct clin_t:
    uint8_t text[CLIN_TEXT]
    uint16_t rule
    uint8_t field                # CF_*
    uint8_t len

# A name -> address binding learned from a DNS answer (Classifier.binds).
ctypedef struct bind_t:
    uint8_t addr[16]
    uint64_t expires_ns          # 0: empty
    uint64_t name_hash
    uint64_t groups[GROUP_WORDS] # the name's groups under policy `serial`
    uint32_t serial
    uint8_t len
    uint8_t name[NAME_MAX + 1]

ctypedef struct policy_t:
    selector_t* selectors
    rule_t* rules
    name_t* names
    ruleinfo_t* ruleinfo
    clin_t* clin
    uint32_t n_names
    uint32_t n_ruleinfo
    uint32_t n_clin
    uint32_t serial              # unique per compiled policy (bindings' groups cache)
    uint64_t ttl_min_ns          # a binding lives its answer's TTL, bounded by these
    uint64_t ttl_max_ns
    uint64_t* vlan_groups        # GROUP_WORDS words: groups with a VLAN condition
    uint64_t* open_groups        # GROUP_WORDS words: groups with no identity selector
    uint32_t n_selectors
    uint32_t n_rules
    uint32_t generation
    uint8_t arp
    uint8_t non_ip
    uint8_t fragment_unmatched   # ACTION_*

ctypedef struct stats_t:
    uint64_t packets
    uint64_t bytes
    uint64_t allowed
    uint64_t denied
    uint64_t malformed
    uint64_t flows_created
    uint64_t flows_ended
    uint64_t flows_evicted
    uint64_t flows_active
    uint64_t devices
    uint64_t device_table_full
    uint64_t events_dropped
    uint64_t fragments_attributed
    uint64_t fragments_unmatched
    uint64_t samples
    uint64_t samples_over_budget
    uint64_t unsolicited_answers     # flows started by an answer no request explains
    uint64_t flows_reoriented        # guessed initiators a later packet contradicted
    uint64_t compact                 # packets classified by the compact path (compact.pxi)
    uint64_t events_counted_only     # events of types nothing consumes (set_events): not queued
    uint64_t flows_evicted_allowed   # evicted allowed flows of more than one packet
    uint64_t dns_answers             # DNS answers read for bindings
    uint64_t dns_malformed           # DNS answers that could not be read (no binding taken)
    uint64_t bindings_learned        # name -> address bindings taken or renewed
    uint64_t bindings_evicted        # live bindings pushed out by a full bucket
    uint64_t payloads_judged         # first payloads checked (SNI, HL7, DICOM)
    uint64_t payloads_unreadable     # first payloads that were not what the rule expects
    uint64_t payloads_missed         # flows met after their start (no SYN seen): their first
                                     # payload was not seen, decided on addresses alone
    uint64_t reasons[64]


cdef class CompiledPolicy:
    cdef policy_t pol
    cdef readonly object source


cimport cython

@cython.final
cdef class Classifier:
    cdef flow_t* flows
    cdef uint32_t* tags
    cdef uint32_t n_buckets
    cdef uint32_t bucket_mask
    cdef uint32_t sweep_cursor
    cdef uint32_t sweep_buckets
    cdef device_t* devices
    cdef uint32_t* dev_tags
    cdef uint32_t dev_capacity
    cdef uint32_t dev_count
    cdef uint64_t* frag_keys
    cdef uint32_t* frag_flows
    cdef uint64_t* frag_flow_ids     # the flow's id, so a reused slot is not mistaken for it
    cdef uint32_t frag_mask
    cdef event_t* ring
    cdef uint32_t ring_mask
    cdef uint64_t ring_head
    cdef uint64_t ring_tail
    cdef uint64_t seed
    cdef uint64_t next_flow_id
    cdef uint64_t timeouts[TIMEOUT_CLASSES]
    cdef uint64_t now_ns
    cdef stats_t st
    cdef int mode
    cdef CompiledPolicy policy
    cdef uint8_t sample_per_flow
    cdef uint16_t sample_device_budget
    cdef uint64_t sample_device_window_ns
    cdef uint32_t sample_global_budget
    cdef uint32_t sample_global_count
    cdef uint64_t sample_global_start
    cdef uint64_t* svc_keys          # services seen offered: (address, protocol, port) hashes
    cdef uint32_t svc_mask
    cdef uint64_t start_ns           # the first packet's time: the request of an early
                                     # answer may predate the classifier
    cdef uint64_t* addr_tags         # address -> device: a receiver's MAC on links that
    cdef uint32_t* addr_devs         # carry the sender's only (inline, Linux cooked)
    cdef uint32_t addr_mask
    cdef bind_t* binds               # name -> address bindings (BIND_BUCKETS x BIND_SLOTS)
    cdef uint32_t* bind_tags         # per slot: the address's hash tag (0: never used), so
                                     # a lookup reads one cache line, not eight entries
    cdef const uint8_t* batch_hints  # the current batch's hints (or NULL), and the packet
    cdef uint64_t batch_first        # number of its first packet: read at flow starts only
    cdef bint compact                # plain IPv4 TCP/UDP hits take compact.pxi's path
    cdef uint32_t event_types        # bit per EV_* type queued on the ring; others only counted
    cdef fold_t* folds               # flows with device counters still to fold (FOLD_SLOTS)
    cdef uint32_t n_folds
