# Flow and device tables, fixed-size and preallocated, and the bounded event ring.
#
# Flow table: set-associative. A seeded hash of the canonical key picks a bucket of
# BUCKET_SLOTS slots; each slot's 32-bit tag sits in a separate array so a lookup reads one
# cache line of tags before touching a slot. A new flow takes an empty or idle-expired slot
# of its bucket; if none, it evicts the least recently seen flow of that bucket (a flow-end
# event with END_EVICTED and the flows_evicted counter): closed flows first, then denied
# ones, then allowed flows of one packet, and an allowed conversation only when its whole
# bucket is allowed conversations (flows_evicted_allowed). Memory never grows.

cdef inline uint64_t mix64(uint64_t h) noexcept nogil:
    h ^= h >> 33
    h *= <uint64_t>0xFF51AFD7ED558CCD
    h ^= h >> 33
    h *= <uint64_t>0xC4CEB9FE1A85EC53
    h ^= h >> 33
    return h


cdef inline uint64_t hash_key(const flow_key_t* key, uint64_t seed) noexcept nogil:
    """Seeded hash of the key. IPv4: two words (both addresses; ports, VLANs and protocol)
    by hash_v4, as the compact path (compact.pxi) hashes them straight from the frame.
    IPv6: the six words in independent multiply lanes (they run in parallel) folded by one
    finalizer. The per-process seed keeps crafted traffic from aiming at one bucket."""
    cdef const uint64_t* w = <const uint64_t*>key
    if key.l3 == L3_IPV4:
        return hash_v4((w[1] >> 32) | (w[3] & <uint64_t>0xFFFFFFFF00000000),
                       w[4] ^ (<uint64_t>key.proto << 56), seed)
    cdef uint64_t h = ((w[0] ^ seed) * <uint64_t>0x9E3779B97F4A7C15
                       ^ (w[1] + seed) * <uint64_t>0xC2B2AE3D27D4EB4F
                       ^ (w[2] ^ (seed >> 17)) * <uint64_t>0x165667B19E3779F9
                       ^ (w[3] + (seed << 7)) * <uint64_t>0xD6E8FEB86659FD93
                       ^ (w[4] ^ (seed >> 31)) * <uint64_t>0xFF51AFD7ED558CCD
                       ^ (w[5] + (seed >> 45)) * <uint64_t>0x94D049BB133111EB)
    return mix64(h ^ (h >> 29))


cdef inline bint key_equal(const flow_key_t* x, const flow_key_t* y) noexcept nogil:
    cdef const uint64_t* a = <const uint64_t*>x
    cdef const uint64_t* b = <const uint64_t*>y
    return ((a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3])
            | (a[4] ^ b[4]) | (a[5] ^ b[5])) == 0


cdef inline uint8_t timeout_class_of(uint8_t proto) noexcept nogil:
    if proto == 6:
        return TIMEOUT_TCP
    if proto == 17 or proto == 132 or proto == 136:
        return TIMEOUT_UDP
    if proto == 1 or proto == 58:
        return TIMEOUT_ICMP
    return TIMEOUT_OTHER


cdef inline uint16_t icmp_class(uint8_t proto, uint8_t icmp_type, uint8_t code) noexcept nogil:
    """Both messages of a request/response pair share a class; others key on type/code."""
    if proto == 1:
        if icmp_type == 0 or icmp_type == 8:
            return 8 << 8
        if icmp_type == 13 or icmp_type == 14:
            return 13 << 8
    elif icmp_type == 128 or icmp_type == 129:
        return 128 << 8
    return (<uint16_t>icmp_type << 8) | code


cdef inline bint icmp_paired(uint8_t proto, uint8_t icmp_type) noexcept nogil:
    """Echo and timestamp messages: request and reply share an identifier."""
    if proto == 1:
        return icmp_type == 0 or icmp_type == 8 or icmp_type == 13 or icmp_type == 14
    return icmp_type == 128 or icmp_type == 129


cdef inline bint icmp_is_reply(uint8_t proto, uint8_t icmp_type) noexcept nogil:
    if proto == 1:
        return icmp_type == 0 or icmp_type == 14
    return icmp_type == 129


cdef inline bint make_key(const pkt_t* k, flow_key_t* key) noexcept nogil:
    """Canonical key for the packet's flow; returns 1 when the sender is key.b.

    Any total order of the endpoints makes both directions meet on one key; comparing the
    addresses as two native 64-bit words is the cheapest one.
    """
    cdef uint64_t s[2]
    cdef uint64_t d[2]
    cdef int c
    cdef bint swapped
    cdef bint icmp = k.proto == 1 or k.proto == 58
    memcpy(s, k.src, 16)
    memcpy(d, k.dst, 16)
    if s[0] != d[0]:
        c = 1 if s[0] > d[0] else -1
    elif s[1] != d[1]:
        c = 1 if s[1] > d[1] else -1
    else:
        c = 0
    if icmp:
        swapped = c > 0
    else:
        swapped = c > 0 or (c == 0 and k.sport > k.dport)
    if swapped:
        key.a[0] = d[0]
        key.a[1] = d[1]
        key.b[0] = s[0]
        key.b[1] = s[1]
    else:
        key.a[0] = s[0]
        key.a[1] = s[1]
        key.b[0] = d[0]
        key.b[1] = d[1]
    if icmp:
        key.pa = k.icmp_id if icmp_paired(k.proto, k.icmp_type) else 0
        key.pb = icmp_class(k.proto, k.icmp_type, k.icmp_code)
    elif swapped:
        key.pa = k.dport
        key.pb = k.sport
    else:
        key.pa = k.sport
        key.pb = k.dport
    key.vlan = k.vlan
    key.vlan_outer = k.vlan_outer
    key.proto = k.proto
    key.l3 = k.l3
    memset(key.pad, 0, 6)
    return swapped


cdef inline uint32_t device_lookup(Classifier c, const pkt_t* k, uint64_t ts,
                                   bint* created, bint receiver=0) noexcept nogil:
    """Index of the device that sent `k`, created on first sight; NO_DEVICE if full.

    With `receiver`, the device `k` is sent to, looked up only: devices are created from
    what they send, never from what is sent to them.
    """
    cdef uint8_t key[16]
    cdef uint64_t words[2]
    cdef uint64_t h
    cdef uint32_t i, tag, n
    cdef device_t* d
    cdef const uint8_t* mac = k.src_mac
    cdef const uint8_t* addr = k.src
    if receiver:
        mac = k.dst_mac
        addr = k.dst
    created[0] = 0
    memset(key, 0, 16)
    if (k.has_mac == 2) or (k.has_mac == 1 and not receiver):
        if mac[0] & 1:                    # a multicast MAC is no device
            return NO_DEVICE
        memcpy(key, mac, 6)
        key[15] = 1
    elif k.has_mac == 0 and (k.l3 == L3_IPV4 or k.l3 == L3_IPV6):
        memcpy(key, addr, 16)
    else:
        return NO_DEVICE
    memcpy(words, key, 16)
    h = mix64(words[0] ^ c.seed) ^ mix64(words[1] + c.seed)
    tag = <uint32_t>(h >> 32) | 1
    i = <uint32_t>h & (c.dev_capacity - 1)
    for n in range(c.dev_capacity):
        if c.dev_tags[i] == 0:
            break
        if c.dev_tags[i] == tag and memcmp(c.devices[i].key, key, 16) == 0:
            return i
        i = (i + 1) & (c.dev_capacity - 1)
    else:
        if not receiver:
            c.st.device_table_full += 1
        return NO_DEVICE
    if receiver:
        return NO_DEVICE
    if c.dev_count >= c.dev_capacity - c.dev_capacity // 8:
        c.st.device_table_full += 1
        return NO_DEVICE
    c.dev_tags[i] = tag
    c.dev_count += 1
    c.st.devices += 1
    d = &c.devices[i]
    memset(d, 0, sizeof(device_t))
    memcpy(d.key, key, 16)
    if k.has_mac:
        memcpy(d.mac, k.src_mac, 6)
        d.has_mac = 1
    d.vlan = k.vlan
    d.first_ns = ts
    d.last_ns = ts
    d.index = i
    created[0] = 1
    return i


cdef inline void device_learn_ip(device_t* d, const pkt_t* k) noexcept nogil:
    """Remember the first IPv4/IPv6 address a device sent from."""
    cdef uint8_t* slot
    if k.l3 == L3_IPV6:
        slot = d.ip6
        if k.src[0] == 0 and k.src[1] == 0 and memcmp(k.src, k.src + 2, 14) == 0:
            return                         # unspecified address (DAD, DHCPv6)
    elif k.l3 == L3_IPV4 or k.l3 == L3_ARP:
        slot = d.ip4
        if rd32(k.src + 12) == 0:
            return                         # 0.0.0.0 (DHCP discover, ARP probe)
    else:
        return
    if slot[10] == 0 and slot[15] == 0 and slot[0] == 0 and memcmp(slot, slot + 1, 15) == 0:
        memcpy(slot, k.src, 16)
    elif memcmp(slot, k.src, 16) != 0 and k.l3 != L3_IPV6:
        d.multi_ip = 1


cdef inline event_t* event_slot(Classifier c, uint8_t type) noexcept nogil:
    """Next free event in the ring, or NULL: when nothing consumes events of this type (only
    counted: set_events), or when the ring is full (counted as dropped)."""
    cdef event_t* e
    if not (c.event_types >> type) & 1:
        c.st.events_counted_only += 1
        return NULL
    if c.ring_head - c.ring_tail > c.ring_mask:
        c.st.events_dropped += 1
        return NULL
    e = &c.ring[c.ring_head & c.ring_mask]
    c.ring_head += 1
    memset(e, 0, sizeof(event_t))
    e.type = type
    return e


cdef inline void fill_flow_event(event_t* e, uint8_t type, const flow_t* f,
                                 uint64_t ts) noexcept nogil:
    e.type = type
    e.ts_ns = ts
    e.first_ns = f.first_ns
    e.flow_id = f.id
    e.pkts = <uint64_t>f.pkts[0] + f.pkts[1]
    e.bytes = f.bytes[0] + f.bytes[1]
    if f.init_is_a:
        memcpy(e.src, f.key.a, 16)
        memcpy(e.dst, f.key.b, 16)
        e.sport = f.key.pa
        e.dport = f.key.pb
    else:
        memcpy(e.src, f.key.b, 16)
        memcpy(e.dst, f.key.a, 16)
        e.sport = f.key.pb
        e.dport = f.key.pa
    if f.key.proto == 1 or f.key.proto == 58:
        e.sport = f.key.pa
        e.dport = 0
        e.icmp_type = f.dport
    e.vlan = f.key.vlan
    e.proto = f.key.proto
    e.l3 = f.key.l3
    # A violation names the rule that came closest; other events the rule that matched.
    e.rule = f.nearest if type == EV_VIOLATION else f.rule
    e.verdict = f.verdict
    e.device = f.dev[0]
    e.peer_device = f.dev[1]
    e.orient = f.orient


cdef inline void end_flow(Classifier c, flow_t* f, uint8_t why, uint64_t ts) noexcept nogil:
    """Emit a flow-end event; the slot stays for stray packets until it is reused."""
    cdef event_t* e
    if f.state == FLOW_ACTIVE:
        c.st.flows_ended += 1
        c.st.flows_active -= 1
        e = event_slot(c, EV_FLOW_END)
        if e != NULL:
            fill_flow_event(e, EV_FLOW_END, f, ts)
            e.reason = why
            e.verdict = f.verdict


cdef inline bint flow_expired(Classifier c, const flow_t* f, uint64_t now) noexcept nogil:
    cdef uint64_t limit
    if f.state == FLOW_CLOSING:
        limit = c.timeouts[TIMEOUT_CLOSING]
    else:
        limit = c.timeouts[f.timeout_class]
    return now > f.last_ns and now - f.last_ns > limit


cdef inline flow_t* flow_find(Classifier c, const flow_key_t* key) noexcept nogil:
    """The live flow for `key`, or NULL (one idle past its timeout has ended, swept or not)."""
    cdef uint64_t h = hash_key(key, c.seed)
    cdef uint32_t tag = <uint32_t>(h >> 32) | 1
    cdef uint32_t base = (<uint32_t>h & c.bucket_mask) * BUCKET_SLOTS
    cdef uint32_t i
    for i in range(BUCKET_SLOTS):
        if c.tags[base + i] == tag and key_equal(&c.flows[base + i].key, key):
            if flow_expired(c, &c.flows[base + i], c.now_ns):
                return NULL
            return &c.flows[base + i]
    return NULL


cdef inline flow_t* related_flow(Classifier c, const pkt_t* k) noexcept nogil:
    """The flow an ICMP error is about (the packet it quotes), or NULL."""
    cdef pkt_t q
    cdef flow_key_t key
    if not k.inner_valid:
        return NULL
    memcpy(q.src, k.inner_src, 16)
    memcpy(q.dst, k.inner_dst, 16)
    q.proto = k.inner_proto
    q.sport = k.inner_sport
    q.dport = k.inner_dport
    q.icmp_type = k.inner_icmp_type
    q.icmp_code = 0
    q.icmp_id = k.inner_icmp_id
    q.vlan = k.vlan
    q.vlan_outer = k.vlan_outer
    q.l3 = k.l3
    make_key(&q, &key)
    return flow_find(c, &key)


# What a flow is worth keeping when its bucket is full (lowest evicted first).
cdef enum:
    WORTH_ENDED = 0           # closed (FIN, RST): kept only for stray packets
    WORTH_DENIED = 1          # denied: a scan or a flood, or a device out of policy
    WORTH_SINGLE = 2          # allowed, one packet so far: maybe a probe, maybe a new flow
    WORTH_ALLOWED = 3         # allowed, and more than one packet: a conversation


cdef inline uint32_t flow_worth(const flow_t* f) noexcept nogil:
    if f.state != FLOW_ACTIVE:
        return WORTH_ENDED
    if f.verdict != VERDICT_ALLOW:
        return WORTH_DENIED
    if <uint64_t>f.pkts[0] + f.pkts[1] <= 1:
        return WORTH_SINGLE
    return WORTH_ALLOWED


cdef inline flow_t* flow_find_or_add(Classifier c, const flow_key_t* key, uint64_t ts,
                                     bint* created) noexcept nogil:
    """The flow for `key`, or a fresh zeroed slot for it (created=1)."""
    cdef uint64_t h = hash_key(key, c.seed)
    cdef uint32_t tag = <uint32_t>(h >> 32) | 1
    cdef uint32_t base = (<uint32_t>h & c.bucket_mask) * BUCKET_SLOTS
    cdef uint32_t i, victim = BUCKET_SLOTS
    cdef uint64_t oldest = 0xFFFFFFFFFFFFFFFF
    cdef uint32_t w, worth = WORTH_ALLOWED + 1
    cdef uint32_t* tags = c.tags + base
    cdef flow_t* f
    created[0] = 0
    for i in range(BUCKET_SLOTS):
        if tags[i] == tag and key_equal(&c.flows[base + i].key, key):
            f = &c.flows[base + i]
            if f.fold:
                fold_flow(c, f)           # the general path reads and changes it
            if not flow_expired(c, f, ts):
                return f
            # Idle past its timeout, the conversation has ended whether or not the sweep has
            # reached its slot (the sweep's order follows the per-process hash seed): this
            # packet starts a new flow, as it would after the sweep.
            end_flow(c, f, END_IDLE, f.last_ns)
            memset(f, 0, sizeof(flow_t))
            f.key = key[0]
            created[0] = 1
            return f
    # Miss: first empty slot, else an expired one, else the least worth keeping (flow_worth),
    # and of those the least recently seen. Under a flood of new flows, the flows that carry
    # allowed traffic are the last to go.
    for i in range(BUCKET_SLOTS):
        if tags[i] == 0:
            victim = i
            break
        f = &c.flows[base + i]
        if flow_expired(c, f, ts):
            end_flow(c, f, END_IDLE, f.last_ns)
            f.state = FLOW_EMPTY          # ended once: not evicted again below
            victim = i
            break
        w = flow_worth(f)
        if w < worth or (w == worth and f.last_ns < oldest):
            worth = w
            oldest = f.last_ns
            victim = i
    f = &c.flows[base + victim]
    if f.fold:
        fold_flow(c, f)
    if tags[victim] != 0 and f.state == FLOW_ACTIVE:
        c.st.flows_evicted += 1
        if worth == WORTH_ALLOWED:
            c.st.flows_evicted_allowed += 1
        end_flow(c, f, END_EVICTED, ts)
    tags[victim] = tag
    memset(f, 0, sizeof(flow_t))
    f.key = key[0]
    created[0] = 1
    return f


# Folds: a compact hit counts its packet in the flow slot only (and the sender's last-seen
# time), not in both devices' counters; the flow goes on the fold list the first time, with
# its counters then. Folding adds what the flow counted since to its devices. A flow is
# folded before the general path finds it, evicts it or ends it, so the general path's own
# device accounting never sees counts pending; the whole list is folded when the devices
# are read (copy_devices, device_list) and when it is full. A ward's few thousand busy
# flows are marked once between reads: per hit that is one test of `fold`, not two
# devices' counters.

cdef inline void fold_mark(Classifier c, flow_t* f) noexcept nogil:
    """Put `f` on the fold list with its counters as they are before this hit."""
    cdef fold_t* e
    if c.n_folds == FOLD_SLOTS:
        fold_all(c)
    e = &c.folds[c.n_folds]
    e.slot = <uint32_t>(f - c.flows)
    e.pkts[0] = f.pkts[0]
    e.pkts[1] = f.pkts[1]
    e.bytes[0] = f.bytes[0]
    e.bytes[1] = f.bytes[1]
    c.n_folds += 1
    f.fold = <uint16_t>c.n_folds


cdef void fold_flow(Classifier c, flow_t* f) noexcept nogil:
    """Add what `f` counted since its fold entry to its devices, both ways."""
    cdef const fold_t* e = &c.folds[f.fold - 1]
    cdef uint64_t p0 = f.pkts[0] - e.pkts[0], p1 = f.pkts[1] - e.pkts[1]
    cdef uint64_t b0 = f.bytes[0] - e.bytes[0], b1 = f.bytes[1] - e.bytes[1]
    cdef device_t* d
    f.fold = 0
    if f.dev[0] != NO_DEVICE:
        d = &c.devices[f.dev[0]]
        d.pkts_tx += p0
        d.bytes_tx += b0
        d.pkts_rx += p1
        d.bytes_rx += b1
    if f.dev[1] != NO_DEVICE:
        d = &c.devices[f.dev[1]]
        d.pkts_tx += p1
        d.bytes_tx += b1
        d.pkts_rx += p0
        d.bytes_rx += b0


cdef void fold_all(Classifier c) noexcept nogil:
    """Fold every flow on the list (an entry whose flow was folded since is skipped)."""
    cdef uint32_t i
    cdef flow_t* f
    for i in range(c.n_folds):
        f = &c.flows[c.folds[i].slot]
        if f.fold == i + 1:
            fold_flow(c, f)
    c.n_folds = 0


cdef inline void sweep_idle(Classifier c, uint64_t now) noexcept nogil:
    """Expire idle flows in the next few buckets, so flow-end events come out on time."""
    cdef uint32_t n, i, b, slot
    cdef flow_t* f
    for n in range(c.sweep_buckets):
        b = c.sweep_cursor
        c.sweep_cursor = (c.sweep_cursor + 1) & c.bucket_mask
        for i in range(BUCKET_SLOTS):
            slot = b * BUCKET_SLOTS + i
            if c.tags[slot] == 0:
                continue
            f = &c.flows[slot]
            if flow_expired(c, f, now):
                if f.fold:
                    fold_flow(c, f)
                end_flow(c, f, END_IDLE, f.last_ns)
                c.tags[slot] = 0
                f.state = FLOW_EMPTY


# Fragment cache: direct-mapped, a first fragment's identity -> its flow. IPv4 identifies a
# packet by (src, dst, protocol, id) (RFC 791); IPv6 by (src, dst, id) only (RFC 8200), as
# headers after the Fragment header may differ between the first and later fragments.
cdef inline uint64_t frag_hash(const pkt_t* k, uint64_t seed) noexcept nogil:
    cdef uint64_t s[2]
    cdef uint64_t d[2]
    cdef uint64_t proto = k.proto if k.l3 == L3_IPV4 else 0
    memcpy(s, k.src, 16)
    memcpy(d, k.dst, 16)
    return mix64(s[0] ^ mix64(s[1] ^ seed) ^ mix64(d[0] + 0x9E37) ^ mix64(d[1])
                 ^ ((<uint64_t>k.frag_id << 8) | proto)) | 1
