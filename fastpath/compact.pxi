# The compact hot path: a packet of an IPv4 TCP or UDP flow already in the table, on
# Ethernet with at most one 802.1Q tag, that says nothing about who is who (no SYN, FIN or
# RST; no DNS, NTP or DHCP header: no UDP port below 1024). That is nearly every packet of
# a ward. It is decoded straight from the frame into the flow key's words (no 16-byte
# address mapping, no pkt_t), hashed in two words and compared in place; anything else, or
# any doubt (options, fragments, lengths that need the general decoder's judgement, a flow
# waiting for its other side, a sample wanted), returns 0 before changing anything and the
# packet takes the general path. Both paths find the same slot: hash_key hashes every IPv4
# key with hash_v4 over the same two words (flowtable.pxi). tests/fastpath/test_compact.py
# compares the two paths' verdicts, counters, events and devices on the same packets.

cdef extern from *:
    """
    #if defined(__SIZEOF_INT128__)
    static inline uint64_t wardtap_mum(uint64_t a, uint64_t b) {
        __uint128_t r = (__uint128_t)a * b;
        return (uint64_t)r ^ (uint64_t)(r >> 64);
    }
    #else
    static inline uint64_t wardtap_mum(uint64_t a, uint64_t b) {
        uint64_t h = (a ^ (b >> 29)) * 0x9E3779B97F4A7C15ULL ^ (b + (a >> 31)) * 0xC2B2AE3D27D4EB4FULL;
        return h ^ (h >> 32);
    }
    #endif
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    #define WARDTAP_COMPACT_OK 1
    #else
    #define WARDTAP_COMPACT_OK 0
    #endif
    #define WARDTAP_V4_MAPPED_LOW 0xFFFF0000ULL
    static inline uint32_t wardtap_ld32(const uint8_t* p) { uint32_t v; memcpy(&v, p, 4); return v; }
    """
    uint64_t wardtap_mum(uint64_t a, uint64_t b) noexcept nogil
    uint32_t wardtap_ld32(const uint8_t* p) noexcept nogil
    bint WARDTAP_COMPACT_OK
    uint64_t WARDTAP_V4_MAPPED_LOW

# The low 32 bits of an IPv4-mapped address's second word (bytes 8-15, little-endian):
# bytes 10 and 11 are 0xFF, bytes 8 and 9 zero; the IPv4 address is the high 32 bits.


cdef inline uint64_t hash_v4(uint64_t w0, uint64_t w1, uint64_t seed) noexcept nogil:
    """Seeded multiply-fold of two words: one 64x64->128 multiply, the halves folded.

    Not CRC32C: a CRC is linear, so two keys that collide collide under every seed, and a
    flood crafted offline would aim at one bucket. The seed keeps the multiply's inputs
    unknown to the sender. w0: both addresses; w1: ports, VLAN ids and protocol.
    """
    return wardtap_mum(w0 ^ seed, w1 ^ ((seed << 29) | (seed >> 35)) ^ <uint64_t>0x9E3779B97F4A7C15)


cdef inline bint compact_hit(Classifier c, const uint8_t* p, uint32_t caplen, uint64_t ts,
                             uint8_t* sample, uint8_t* verdict, uint8_t* reason,
                             uint16_t* rule) noexcept nogil:
    """Classify `p` on the compact path; 0 (nothing changed) when it needs the general one."""
    cdef uint32_t off = 14, total, avail, l4, doff, ulen, ip_s, ip_d, ip_a, ip_b, role, j
    cdef uint32_t tag, base
    cdef uint16_t et, vlan = 0, sport, dport, pa, pb
    cdef uint8_t proto
    cdef bint swapped
    cdef const uint8_t* b
    cdef uint64_t w2, a1, b1, w5, h
    cdef const uint64_t* kw
    cdef flow_t* f
    if caplen < 42 or caplen > 0xFFFF:
        return 0
    et = rd16(p + 12)
    if et == 0x8100:
        vlan = rd16(p + 14) & 0x0FFF
        et = rd16(p + 16)
        off = 18
    b = p + off
    if et != 0x0800 or b[0] != 0x45 or (rd16(b + 6) & 0x3FFF):
        return 0
    total = rd16(b + 2)
    if total < 20 or total > caplen - off:
        return 0
    avail = total - 20
    l4 = off + 20
    proto = b[9]
    if proto == 6:
        if avail < 20 or (p[l4 + 13] & 0x07):         # SYN, FIN, RST: the general path
            return 0
        doff = (p[l4 + 12] >> 4) * 4
        if doff < 20 or doff > avail:
            return 0
    elif proto == 17:
        if avail < 8:
            return 0
        ulen = rd16(p + l4 + 4)
        if ulen < 8 or ulen > avail:
            return 0
    else:
        return 0
    sport = rd16(p + l4)
    dport = rd16(p + l4 + 2)
    if proto == 17:
        if sport < 1024 or dport < 1024:               # DNS, NTP, DHCP, discovery
            return 0
        if sample != NULL and (sport == 5353 or dport == 5353 or sport == 1900 or dport == 1900):
            return 0
    # Canonical order as make_key: addresses compared as native words, then ports.
    ip_s = wardtap_ld32(b + 12)
    ip_d = wardtap_ld32(b + 16)
    swapped = ip_s > ip_d or (ip_s == ip_d and sport > dport)
    if swapped:
        ip_a = ip_d
        ip_b = ip_s
        pa = dport
        pb = sport
    else:
        ip_a = ip_s
        ip_b = ip_d
        pa = sport
        pb = dport
    w2 = <uint64_t>pa | (<uint64_t>pb << 16) | (<uint64_t>vlan << 32)
    h = hash_v4(<uint64_t>ip_a | (<uint64_t>ip_b << 32), w2 ^ (<uint64_t>proto << 56), c.seed)
    tag = <uint32_t>(h >> 32) | 1
    base = (<uint32_t>h & c.bucket_mask) * BUCKET_SLOTS
    a1 = (<uint64_t>ip_a << 32) | WARDTAP_V4_MAPPED_LOW
    b1 = (<uint64_t>ip_b << 32) | WARDTAP_V4_MAPPED_LOW
    w5 = <uint64_t>proto | (<uint64_t>L3_IPV4 << 8)
    f = NULL
    for j in range(BUCKET_SLOTS):
        if c.tags[base + j] == tag:
            kw = <const uint64_t*>&c.flows[base + j].key
            if (kw[0] | kw[2] | (kw[1] ^ a1) | (kw[3] ^ b1) | (kw[4] ^ w2) | (kw[5] ^ w5)) == 0:
                f = &c.flows[base + j]
                break
    if f == NULL or f.state != FLOW_ACTIVE or f.pending or f.watch or flow_expired(c, f, ts):
        # an expired flow ends and starts again; a watched one waits for its first payload
        # (names.pxi, clinical.pxi): the general path
        return 0
    role = 0 if swapped != f.init_is_a else 1
    if f.dev[role] == NO_DEVICE:
        return 0
    if sample != NULL:
        if f.sampled[role] < c.sample_per_flow:
            return 0
    # Decided: from here on the packet is this path's. The devices' packet and byte counters
    # take it when the flow is folded (flowtable.pxi), not here.
    if f.fold == 0:
        fold_mark(c, f)
    f.pkts[role] += 1
    f.bytes[role] += caplen
    f.last_ns = ts
    c.devices[f.dev[role]].last_ns = ts
    verdict[0] = f.verdict
    reason[0] = f.reason
    rule[0] = f.rule
    c.st.reasons[f.reason] += 1       # allowed, denied and compact: counted by the loop
    return 1
