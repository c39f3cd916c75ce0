# Names: DNS answers -> name/address bindings, the bindings table, and TLS server names.
#
# A policy group may list DNS names. The classifier reads the DNS answers it lets through
# (A, AAAA and the CNAME chain that leads to them) and binds each address to the names of the
# chain the policy lists, for the answer's TTL bounded by the policy's name_ttl_min/max.
# A new flow's endpoint is then in a name's groups while a binding of its address lives.
#
# The table is ward-wide (one per classifier, not per device), fixed at BIND_BUCKETS x
# BIND_SLOTS entries; a seeded hash of the address picks a bucket, so a lookup reads at most
# BIND_SLOTS entries: O(1) per new flow, nothing per packet. A full bucket gives up the
# binding that expires first. Only names some group of the loaded policy lists are bound;
# a binding's groups are worked out again, once, after a policy change.
#
# Every read is bounds-checked; a DNS message that cannot be read whole (a name past the
# end, a compression loop, a label over 63 bytes, a name over 253) binds nothing.

cdef enum:
    DNS_JUMPS_MAX = 16                # compression pointers followed in one name
    NAME_UNUSABLE = 0xFFFF            # dns_name: read fine, but no binding takes it


cdef inline uint64_t name_hash(const uint8_t* name, uint32_t n) noexcept nogil:
    cdef uint64_t h = 0xCBF29CE484222325
    cdef uint32_t i
    for i in range(n):
        h = (h ^ name[i]) * <uint64_t>0x100000001B3
    return mix64(h)


cdef inline bint name_byte_ok(uint8_t b) noexcept nogil:
    """Letters, digits, '-' and '_': a label with a '.' or a control byte in it could pass
    for another name, so a name with one is not bound."""
    return ((b >= 0x61 and b <= 0x7A) or (b >= 0x30 and b <= 0x39) or b == 0x2D
            or b == 0x5F)


cdef inline int dns_name(const uint8_t* p, uint32_t n, uint32_t off, uint8_t* out,
                         uint32_t* out_len) noexcept nogil:
    """Read the (possibly compressed) name at `off` into `out` as lower-case dotted text.

    Returns the offset just past the name where it is written (not where pointers lead),
    or -1 when it cannot be read. *out_len is NAME_UNUSABLE when the name reads fine but has
    bytes no binding takes."""
    cdef uint32_t pos = off, length = 0, jumps = 0
    cdef int after = -1
    cdef uint8_t b, c
    cdef uint32_t i
    cdef bint usable = 1
    while True:
        if pos >= n:
            return -1
        b = p[pos]
        if b == 0:
            if after < 0:
                after = <int>(pos + 1)
            break
        if (b & 0xC0) == 0xC0:
            if pos + 1 >= n:
                return -1
            jumps += 1
            if jumps > DNS_JUMPS_MAX:
                return -1                     # a loop, or a chain no encoder writes
            if after < 0:
                after = <int>(pos + 2)
            pos = (<uint32_t>(b & 0x3F) << 8) | p[pos + 1]
            continue
        if b & 0xC0:
            return -1                         # 0x40/0x80: extended label types, unused
        if pos + 1 + b > n:
            return -1
        if length + b + (1 if length else 0) > NAME_MAX:
            return -1
        if length:
            out[length] = 0x2E
            length += 1
        for i in range(b):
            c = p[pos + 1 + i]
            if c >= 0x41 and c <= 0x5A:
                c += 0x20
            if not name_byte_ok(c):
                usable = 0
            out[length] = c
            length += 1
        pos += 1 + b
    out_len[0] = length if usable else NAME_UNUSABLE
    return after


cdef inline void name_groups(const policy_t* pol, const uint8_t* name, uint32_t n,
                             uint64_t* out) noexcept nogil:
    """OR into `out` the groups whose names match `name` (exact, or under a `*.` suffix)."""
    cdef uint32_t i
    cdef const name_t* e
    for i in range(pol.n_names):
        e = &pol.names[i]
        if e.suffix:
            if (n > e.len and name[n - e.len - 1] == 0x2E
                    and memcmp(name + n - e.len, e.text, e.len) == 0):
                out[e.group >> 6] |= (<uint64_t>1) << (e.group & 63)
        elif n == e.len and memcmp(name, e.text, n) == 0:
            out[e.group >> 6] |= (<uint64_t>1) << (e.group & 63)


cdef inline bint any_bit(const uint64_t* g) noexcept nogil:
    return (g[0] | g[1] | g[2] | g[3]) != 0


cdef inline uint64_t bind_hash(Classifier c, const uint8_t* addr) noexcept nogil:
    cdef const uint64_t* w = <const uint64_t*>addr
    return mix64((w[0] ^ c.seed) * <uint64_t>0x9E3779B97F4A7C15 ^ w[1])


cdef inline void bind_add(Classifier c, const policy_t* pol, const uint8_t* addr,
                          const uint8_t* name, uint32_t n, const uint64_t* groups,
                          uint64_t expires, uint64_t now) noexcept nogil:
    cdef uint64_t ah = bind_hash(c, addr)
    cdef uint32_t base = <uint32_t>(ah & (BIND_BUCKETS - 1)) * BIND_SLOTS, i
    cdef uint32_t tag = <uint32_t>(ah >> 32) | 1
    cdef uint64_t h = name_hash(name, n)
    cdef bind_t* b
    cdef bind_t* slot = NULL
    cdef bind_t* soonest = NULL
    for i in range(BIND_SLOTS):
        b = &c.binds[base + i]
        if b.expires_ns > now and b.name_hash == h and memcmp(b.addr, addr, 16) == 0:
            slot = b                          # the same binding, renewed
            break
        if slot == NULL and b.expires_ns <= now:
            slot = b
        if soonest == NULL or b.expires_ns < soonest.expires_ns:
            soonest = b
    if slot == NULL:
        slot = soonest
        c.st.bindings_evicted += 1
    c.bind_tags[slot - c.binds] = tag
    memcpy(slot.addr, addr, 16)
    slot.expires_ns = expires
    slot.name_hash = h
    slot.len = <uint8_t>n
    memcpy(slot.name, name, n)
    memcpy(slot.groups, groups, GROUP_WORDS * sizeof(uint64_t))
    slot.serial = pol.serial
    c.st.bindings_learned += 1


cdef inline void bind_groups(Classifier c, const policy_t* pol, const uint8_t* addr,
                             uint64_t now, uint64_t* out) noexcept nogil:
    """OR into `out` the groups of every name `addr` is bound to now."""
    cdef uint64_t ah = bind_hash(c, addr)
    cdef uint32_t base = <uint32_t>(ah & (BIND_BUCKETS - 1)) * BIND_SLOTS, i, w
    cdef uint32_t tag = <uint32_t>(ah >> 32) | 1
    cdef bind_t* b
    for i in range(BIND_SLOTS):
        if c.bind_tags[base + i] != tag:      # one cache line of tags; entries on a match
            continue
        b = &c.binds[base + i]
        if b.expires_ns <= now or memcmp(b.addr, addr, 16) != 0:
            continue
        if b.serial != pol.serial:            # bound under another policy: its groups now
            memset(b.groups, 0, GROUP_WORDS * sizeof(uint64_t))
            name_groups(pol, b.name, b.len, b.groups)
            b.serial = pol.serial
        for w in range(GROUP_WORDS):
            out[w] |= b.groups[w]


cdef inline void dns_learn(Classifier c, const policy_t* pol, const uint8_t* p, uint32_t n,
                           uint64_t now) noexcept nogil:
    """Bind the addresses of one DNS answer (UDP payload p[0:n]) to the names of its chain."""
    cdef uint8_t chain[CHAIN_MAX][NAME_MAX + 1]
    cdef uint32_t chain_len[CHAIN_MAX]
    cdef uint64_t chain_ttl[CHAIN_MAX]
    cdef uint64_t groups[CHAIN_MAX][GROUP_WORDS]
    cdef uint8_t owner[NAME_MAX + 1]
    cdef uint8_t target[NAME_MAX + 1]
    cdef uint8_t addr[16]
    cdef uint32_t links = 0, owner_len, target_len, i, j, upto, records, qd, an
    cdef uint16_t rtype, rclass, rdlen
    cdef uint64_t ttl
    cdef int off
    cdef bint wanted = 0
    if n < 12 or (p[3] & 0x0F) != 0:          # a header, RCODE NOERROR
        return
    qd = rd16(p + 4)
    an = rd16(p + 6)
    if qd != 1 or an == 0:
        return
    c.st.dns_answers += 1
    off = dns_name(p, n, 12, chain[0], &chain_len[0])
    if off < 0 or <uint32_t>off + 4 > n:
        c.st.dns_malformed += 1
        return
    if chain_len[0] == NAME_UNUSABLE:
        return
    chain_ttl[0] = pol.ttl_max_ns
    memset(groups[0], 0, sizeof(groups[0]))
    name_groups(pol, chain[0], chain_len[0], groups[0])
    wanted = any_bit(groups[0])
    links = 1
    off += 4
    records = an if an < DNS_RECORDS_MAX else DNS_RECORDS_MAX
    for i in range(records):
        off = dns_name(p, n, <uint32_t>off, owner, &owner_len)
        if off < 0 or <uint32_t>off + 10 > n:
            c.st.dns_malformed += 1
            return
        rtype = rd16(p + off)
        rclass = rd16(p + off + 2)
        ttl = rd32(p + off + 4)
        rdlen = rd16(p + off + 8)
        off += 10
        if <uint32_t>off + rdlen > n:
            c.st.dns_malformed += 1
            return
        if rclass == 1 and owner_len != NAME_UNUSABLE:
            # Only records about a name of the question's chain count: an answer cannot
            # bind a name nobody asked for.
            for j in range(links):
                if chain_len[j] == owner_len and memcmp(chain[j], owner, owner_len) == 0:
                    break
            else:
                j = CHAIN_MAX
            if j < links:
                ttl = ttl * <uint64_t>1000000000
                if ttl < pol.ttl_min_ns:
                    ttl = pol.ttl_min_ns
                if ttl > pol.ttl_max_ns:
                    ttl = pol.ttl_max_ns
                if ttl > chain_ttl[j]:
                    ttl = chain_ttl[j]        # a chain lives as long as its shortest link
                if rtype == 5 and links < CHAIN_MAX:
                    if dns_name(p, <uint32_t>off + rdlen, <uint32_t>off, target,
                                &target_len) < 0:
                        c.st.dns_malformed += 1
                        return
                    if target_len != NAME_UNUSABLE:
                        memcpy(chain[links], target, target_len)
                        chain_len[links] = target_len
                        chain_ttl[links] = ttl
                        memset(groups[links], 0, sizeof(groups[links]))
                        name_groups(pol, target, target_len, groups[links])
                        wanted = wanted or any_bit(groups[links])
                        links += 1
                elif wanted and ((rtype == 1 and rdlen == 4) or (rtype == 28 and rdlen == 16)):
                    if rdlen == 4:
                        memset(addr, 0, 10)
                        addr[10] = 0xFF
                        addr[11] = 0xFF
                        memcpy(addr + 12, p + off, 4)
                    else:
                        memcpy(addr, p + off, 16)
                    # The address answers every name of the chain up to its owner.
                    upto = j + 1
                    for j in range(upto):
                        if any_bit(groups[j]):
                            bind_add(c, pol, addr, chain[j], chain_len[j], groups[j],
                                     now + ttl, now)
        off += rdlen


cdef inline int tls_server_name(const uint8_t* p, uint32_t n, uint8_t* out,
                                uint32_t* out_len) noexcept nogil:
    """The SNI host name of a TLS ClientHello in p[0:n], lower case.

    Returns 1 with the name, 0 for a ClientHello without one (or a name no binding takes),
    -1 when p is not the start of a ClientHello that fits in it."""
    cdef uint32_t off, end, ext_end, etype, elen, list_end, nlen, i
    cdef uint8_t ch
    if n < 9 or p[0] != 0x16 or p[1] != 3 or p[5] != 1:
        return -1
    end = 5 + rd16(p + 3)
    if end > n:
        end = n                               # the rest is in later segments
    off = 9 + 2 + 32                          # record, handshake header, version, random
    if off + 1 > end:
        return -1
    off += 1 + p[off]                         # session id
    if off + 2 > end:
        return -1
    off += 2 + rd16(p + off)                  # cipher suites
    if off + 1 > end:
        return -1
    off += 1 + p[off]                         # compression methods
    if off + 2 > end:
        return 0                              # no extensions
    ext_end = off + 2 + rd16(p + off)
    off += 2
    if ext_end > end:
        ext_end = end
    while off + 4 <= ext_end:
        etype = rd16(p + off)
        elen = rd16(p + off + 2)
        off += 4
        if off + elen > ext_end:
            return -1
        if etype == 0:
            list_end = off + elen
            if off + 5 > list_end or p[off + 2] != 0:
                return -1
            nlen = rd16(p + off + 3)
            off += 5
            if off + nlen > list_end or nlen == 0 or nlen > NAME_MAX:
                return -1
            for i in range(nlen):
                ch = p[off + i]
                if ch >= 0x41 and ch <= 0x5A:
                    ch += 0x20
                if not (name_byte_ok(ch) or ch == 0x2E):
                    return 0
                out[i] = ch
            if out[nlen - 1] == 0x2E:
                nlen -= 1
            out_len[0] = nlen
            return 1
        off += elen
    return 0
