# Who started a flow: decided once, on the first packet seen of it (docs/fastpath.md,
# "Who started a flow"). The packet may be from the middle of the conversation (after a
# restart, on a tap that starts late, in a capture cut short), so the rule does not take
# the first sender for the initiator. In order:
#   1. what the packet says: TCP SYN or SYN-ACK, ICMP request or reply, a broadcast or
#      multicast receiver, a DNS/NTP/DHCP header (request or answer);
#   2. the policy, when it allows the conversation one way only (in _start_flow);
#   3. a service one side is known to offer on its port (SYN-ACKs and answers seen, or
#      given by the slow path: Classifier.add_services);
#   4. port classes: well-known, then registered service ports, then other registered
#      ports, then the ephemeral ranges of the common stacks;
#   5. the lower port is the service; equal ports: the first sender.
# An orientation from 2-5 is a guess: a later packet that contradicts it (a request from the
# side taken for the server) starts the flow again (END_REORIENTED); so does, after an
# unsolicited answer, any packet its receiver sends of its own.
#
# A first packet taken for an answer (its receiver the initiator) is accepted as one only
# when its request can have been missed (answer_accepted); otherwise it is an unsolicited
# answer: its sender is the initiator, and a denied one says so (R_UNSOLICITED).
#
# Cost: all of this runs once per flow, never per packet, except two byte tests per packet
# (k.answer, set by the decoder for SYNs and DNS/NTP/DHCP only, and the flow's `pending`).

cdef enum:
    PORT_WELL_KNOWN = 0        # 1-1023
    PORT_SERVICE = 1           # a registered port of a common service (KNOWN_SERVICE_PORTS)
    PORT_REGISTERED = 2        # other registered ports outside the ephemeral ranges
    PORT_EPHEMERAL = 3         # 1024-5000 (Windows XP, old BSD), 32768-65535 (Linux, IANA,
                               # Windows Vista on, macOS), and port 0
    SVC_PROBES = 4

# Registered (1024-49151) ports of services met on hospital and office networks: a port
# here outranks an ephemeral one even inside the old 1025-5000 ephemeral range.
KNOWN_SERVICE_PORTS = (
    1080, 1194, 1433, 1434, 1521, 1645, 1646, 1701, 1723, 1812, 1813, 1883, 1900, 2000,
    2049, 2055, 2083, 2404, 2575,            # 2575: HL7 over MLLP
    2761, 2762,                              # DICOM over TLS
    3000, 3260, 3268, 3269, 3306, 3389, 3478, 3868, 4369, 4500, 4789, 4840, 5060, 5061,
    5222, 5353, 5355, 5432, 5671, 5672, 5683, 5684, 5900, 5938, 5985, 5986, 6081, 6379,
    6443, 6514, 6660, 6661, 6662, 6663, 6664, 6665, 6666,   # HL7 interface engines
    8000, 8008, 8080, 8081, 8443, 8883, 9000, 9090, 9100, 9200, 9443, 10000,
    11112,                                   # DICOM
    20000, 27017, 44818, 47808)

cdef uint64_t service_port_bits[1024]      # 65,536 bits: KNOWN_SERVICE_PORTS
memset(service_port_bits, 0, sizeof(service_port_bits))
for _port in KNOWN_SERVICE_PORTS:
    service_port_bits[_port >> 6] |= (<uint64_t>1) << (_port & 63)


cdef inline uint8_t port_class(uint16_t p) noexcept nogil:
    if p == 0:
        return PORT_EPHEMERAL
    if p < 1024:
        return PORT_WELL_KNOWN
    if (service_port_bits[p >> 6] >> (p & 63)) & 1:
        return PORT_SERVICE
    if p <= 5000 or p >= 32768:
        return PORT_EPHEMERAL
    return PORT_REGISTERED


cdef inline bint has_ports(uint8_t proto) noexcept nogil:
    return proto == 6 or proto == 17 or proto == 132 or proto == 136


cdef inline bint to_group(const pkt_t* k) noexcept nogil:
    """Sent to a broadcast or multicast address (IP or MAC): such a receiver starts nothing."""
    if k.has_mac == 2 and (k.dst_mac[0] & 1):
        return 1
    if k.l3 == L3_IPV6:
        return k.dst[0] == 0xFF
    return k.dst[12] >= 224


# -- services seen offered: (address, protocol, port), a small open-addressed hash set --------

cdef inline uint64_t svc_hash(uint64_t seed, const uint8_t* addr, uint8_t proto,
                              uint16_t port) noexcept nogil:
    cdef uint64_t w[2]
    memcpy(w, addr, 16)
    return mix64(w[0] ^ seed ^ mix64(w[1] + ((<uint64_t>proto << 16 | port) << 7))) | 1


cdef inline bint service_known(Classifier c, const uint8_t* addr, uint8_t proto,
                               uint16_t port) noexcept nogil:
    cdef uint64_t h = svc_hash(c.seed, addr, proto, port)
    cdef uint32_t i, slot
    for i in range(SVC_PROBES):
        slot = (<uint32_t>h + i) & c.svc_mask
        if c.svc_keys[slot] == h:
            return 1
        if c.svc_keys[slot] == 0:
            return 0
    return 0


cdef inline void service_learn(Classifier c, const uint8_t* addr, uint8_t proto,
                               uint16_t port) noexcept nogil:
    """Remember that `addr` answers on `port`; a full neighbourhood loses its first entry."""
    cdef uint64_t h = svc_hash(c.seed, addr, proto, port)
    cdef uint32_t i, slot
    for i in range(SVC_PROBES):
        slot = (<uint32_t>h + i) & c.svc_mask
        if c.svc_keys[slot] == h:
            return
        if c.svc_keys[slot] == 0:
            c.svc_keys[slot] = h
            return
    c.svc_keys[<uint32_t>h & c.svc_mask] = h


# -- the decision -----------------------------------------------------------------------------

cdef inline uint8_t orient_packet(Classifier c, const pkt_t* k, bint* sender_first) noexcept nogil:
    """Steps 1 and 3-5: who started the flow of first packet `k` (not yet the policy)."""
    cdef bint known_src, known_dst
    cdef uint8_t cs, cd
    sender_first[0] = 1
    if k.proto == 6 and (k.tcp_flags & 0x02):              # SYN: initiator; SYN+ACK: responder
        sender_first[0] = not (k.tcp_flags & 0x10)
        return ORIENT_SYN
    if k.proto == 1 or k.proto == 58:
        sender_first[0] = not icmp_is_reply(k.proto, k.icmp_type)
        return ORIENT_ICMP
    if to_group(k):
        return ORIENT_GROUP
    if k.answer != ANSWER_UNKNOWN:
        sender_first[0] = k.answer == ANSWER_REQUEST
        return ORIENT_PAYLOAD
    if not has_ports(k.proto) or k.sport == k.dport:
        return ORIENT_FIRST
    known_src = service_known(c, k.src, k.proto, k.sport)
    known_dst = service_known(c, k.dst, k.proto, k.dport)
    if known_src != known_dst:
        sender_first[0] = known_dst
        return ORIENT_SERVICE
    cs = port_class(k.sport)
    cd = port_class(k.dport)
    if cs != cd:
        sender_first[0] = cd < cs
        return ORIENT_PORTS
    sender_first[0] = k.dport < k.sport
    return ORIENT_LOWER_PORT


cdef inline bint answer_accepted(Classifier c, const pkt_t* k, uint8_t hint,
                                 uint64_t ts) noexcept nogil:
    """A first packet taken for an answer (its receiver the initiator): can its request have
    been missed? Its receiver's port must be one a client uses (not a well-known port unless
    both ports are the same or DHCP's, not a service the receiver offers); and, without a
    connection to hold on to (UDP and the like), the kernel must have tracked the
    conversation before this packet (inline), or, with no such knowledge, the classifier
    must be younger than the UDP idle timeout, the longest a request is remembered."""
    if k.sport != k.dport and not (k.sport == 67 and k.dport == 68) \
            and not (k.sport == 547 and k.dport == 546):
        if k.dport < 1024 or service_known(c, k.dst, k.proto, k.dport):
            return 0
    if k.proto == 6 or k.proto == 132:
        return 1         # a stray segment opens nothing: the receiving stack resets it
    if hint == HINT_KNOWN:
        return 1
    if hint == HINT_NEW:
        return 0
    return ts - c.start_ns <= c.timeouts[TIMEOUT_UDP]


cdef inline bint contradicts(const pkt_t* k, uint32_t role) noexcept nogil:
    """A packet with a say (k.answer: a SYN or SYN-ACK, a DNS/NTP/DHCP request or answer) that
    contradicts a guessed initiator: a request from the side taken for the responder, or an
    answer from the side taken for the initiator."""
    return (k.answer == ANSWER_REQUEST) == (role == 1)


cdef inline bint side_speaks(uint8_t pending, bint swapped) noexcept nogil:
    """Whether the sender (key.b when `swapped`) is the side a pending flow waits for."""
    return ((pending & PENDING_SIDE) == PENDING_A) != swapped


cdef inline uint16_t responder_port(const pkt_t* k, bint sender_first) noexcept nogil:
    """The port a rule names: the responder's (ICMP: the request's type)."""
    if k.proto == 1 or k.proto == 58:
        if icmp_is_reply(k.proto, k.icmp_type):
            return 8 if k.proto == 1 else 128
        return k.icmp_type
    return k.dport if sender_first else k.sport


cdef inline uint8_t decide_oriented(const policy_t* pol, const uint64_t* g_sender,
                                    const uint64_t* g_receiver, const pkt_t* k,
                                    bint sender_first, uint16_t* rule,
                                    uint16_t* nearest) noexcept nogil:
    """The policy's reason for the flow of `k` with the given initiator."""
    if sender_first:
        return evaluate(pol, g_sender, g_receiver, k.proto, responder_port(k, 1), rule,
                        nearest)
    return evaluate(pol, g_receiver, g_sender, k.proto, responder_port(k, 0), rule, nearest)


cdef inline void flow_flip(flow_t* f) noexcept nogil:
    """Make the responder the initiator (a guessed flow a new policy allows the other way)."""
    cdef uint64_t b
    cdef uint32_t n
    cdef uint8_t s
    f.init_is_a = not f.init_is_a
    f.dport = f.key.pb if f.init_is_a else f.key.pa
    b = f.bytes[0]
    f.bytes[0] = f.bytes[1]
    f.bytes[1] = b
    n = f.pkts[0]
    f.pkts[0] = f.pkts[1]
    f.pkts[1] = n
    n = f.dev[0]
    f.dev[0] = f.dev[1]
    f.dev[1] = n
    s = f.sampled[0]
    f.sampled[0] = f.sampled[1]
    f.sampled[1] = s
    f.fin = ((f.fin & 1) << 1) | ((f.fin >> 1) & 1)


# -- address -> device, for the receiver's MAC on links that carry the sender's only ---------

cdef enum:
    ADDR_SLOTS = 4096


cdef inline uint64_t addr_hash(uint64_t seed, const uint8_t* addr) noexcept nogil:
    cdef uint64_t w[2]
    memcpy(w, addr, 16)
    return mix64(w[0] ^ mix64(w[1] ^ seed ^ 0x5A17)) | 1


cdef inline void address_learn(Classifier c, const uint8_t* addr, uint32_t dev) noexcept nogil:
    """`dev` sent from `addr` (direct-mapped: a newer address takes an older one's slot)."""
    cdef uint64_t h = addr_hash(c.seed, addr)
    c.addr_tags[<uint32_t>h & c.addr_mask] = h
    c.addr_devs[<uint32_t>h & c.addr_mask] = dev


cdef inline uint32_t device_at(Classifier c, const uint8_t* addr) noexcept nogil:
    """The device last seen sending from `addr`, or NO_DEVICE."""
    cdef uint64_t h = addr_hash(c.seed, addr)
    if c.addr_tags[<uint32_t>h & c.addr_mask] == h:
        return c.addr_devs[<uint32_t>h & c.addr_mask]
    return NO_DEVICE


cdef inline bint could_be_allowed(const policy_t* pol, const uint64_t* g_sender, const pkt_t* k,
                                  bint sender_first, bint either_way) noexcept nogil:
    """Whether the flow of `k` could be allowed if the receiver's unknown MAC put it in any
    MAC or OUI group (one orientation, or `either_way` for a guessed one)."""
    cdef uint64_t g_any[GROUP_WORDS]
    cdef uint16_t rule, nearest
    groups_of(pol, k.dst_mac, 0, k.dst, 1, k.vlan, g_any, 1)
    if decide_oriented(pol, g_sender, g_any, k, sender_first, &rule, &nearest) == R_RULE:
        return 1
    return either_way and decide_oriented(pol, g_sender, g_any, k, not sender_first, &rule,
                                          &nearest) == R_RULE
