# `replay --packets-out`: one JSON line per packet, formatted here, without the GIL.
#
# A per-packet output is per-packet work, so it is done where the per-packet work is: a
# Python loop over every packet made a replay 20 to 40 times slower. The names (verdicts,
# reasons, rules) come in as one table of JSON-ready strings built in Python; addresses go
# through libc's inet_ntop, as socket.inet_ntop does, so the text is the same as before.

cdef extern from "arpa/inet.h" nogil:
    const char* inet_ntop(int af, const void* src, char* dst, unsigned int size)

cdef extern from "sys/socket.h" nogil:
    int AF_INET
    int AF_INET6

cdef enum:
    LINE_MAX_BYTES = 640       # longest line: two IPv6 addresses, a 64-character rule name
    ADDR_CACHE = 256           # formatted addresses kept (direct-mapped): a ward has few
    ADDR_TEXT = 48             # a quoted address fits (IPv6 text is at most 45 bytes)


cdef struct addr_slot:
    uint8_t l3
    uint8_t size
    uint8_t raw[16]
    uint8_t text[ADDR_TEXT]


cdef inline Py_ssize_t put(uint8_t* out, Py_ssize_t at, const char* text) noexcept nogil:
    cdef Py_ssize_t i = 0
    while text[i] != 0:
        out[at + i] = <uint8_t>text[i]
        i += 1
    return at + i


cdef inline Py_ssize_t put_u(uint8_t* out, Py_ssize_t at, uint64_t value) noexcept nogil:
    cdef char digits[24]
    cdef int n = 0
    if value == 0:
        out[at] = 48
        return at + 1
    while value:
        digits[n] = <char>(48 + value % 10)
        value //= 10
        n += 1
    while n:
        n -= 1
        out[at] = <uint8_t>digits[n]
        at += 1
    return at


cdef inline Py_ssize_t put_n(uint8_t* out, Py_ssize_t at, const char* text,
                             Py_ssize_t n) noexcept nogil:
    memcpy(out + at, text, n)
    return at + n


cdef inline Py_ssize_t put_name(uint8_t* out, Py_ssize_t at, const uint8_t* table,
                                const int32_t* offs, Py_ssize_t index) noexcept nogil:
    cdef Py_ssize_t n = offs[index + 1] - offs[index]
    memcpy(out + at, table + offs[index], n)
    return at + n


cdef inline Py_ssize_t put_hex16(uint8_t* out, Py_ssize_t at, uint32_t w) noexcept nogil:
    """A 16-bit group in lower-case hex without leading zeros."""
    cdef const char* hexd = b"0123456789abcdef"
    cdef int shift = 12
    while shift > 0 and (w >> shift) == 0:
        shift -= 4
    while shift >= 0:
        out[at] = <uint8_t>hexd[(w >> shift) & 15]
        at += 1
        shift -= 4
    return at


cdef inline Py_ssize_t put_addr(uint8_t* out, Py_ssize_t at, const uint8_t* raw,
                                uint8_t l3) noexcept nogil:
    """An address as socket.inet_ntop writes it: dotted IPv4; IPv6 in RFC 5952 form (the
    longest run of two or more zero groups as "::", the first of equal runs), and through
    libc itself for the IPv4-compatible and -mapped forms it writes with a dotted tail."""
    cdef char text[64]
    cdef uint32_t words[8]
    cdef int i, best = -1, best_len = 0, run = 0
    out[at] = 34
    at += 1
    if l3 == L3_IPV4:
        for i in range(4):
            if i:
                out[at] = 46
                at += 1
            at = put_u(out, at, raw[12 + i])
    else:
        for i in range(8):
            words[i] = (<uint32_t>raw[2 * i] << 8) | raw[2 * i + 1]
        if words[0] == 0 and words[1] == 0 and words[2] == 0 and words[3] == 0 \
                and words[4] == 0 and (words[5] == 0 or words[5] == 0xffff):
            inet_ntop(AF_INET6, raw, text, 64)
            at = put(out, at, text)
        else:
            for i in range(8):
                if words[i] == 0:
                    run += 1
                    if run > best_len:
                        best_len = run
                        best = i - run + 1
                else:
                    run = 0
            if best_len < 2:
                best = -1
            i = 0
            while i < 8:
                if i == best:
                    out[at] = 58
                    out[at + 1] = 58
                    at += 2
                    i += best_len
                    continue
                if i and i != best + best_len:
                    out[at] = 58
                    at += 1
                at = put_hex16(out, at, words[i])
                i += 1
    out[at] = 34
    return at + 1


cdef inline Py_ssize_t put_mac(uint8_t* out, Py_ssize_t at, const uint8_t* m) noexcept nogil:
    cdef const char* hexd = b"0123456789abcdef"
    cdef int i
    out[at] = 34
    at += 1
    for i in range(6):
        if i:
            out[at] = 58
            at += 1
        out[at] = <uint8_t>hexd[m[i] >> 4]
        out[at + 1] = <uint8_t>hexd[m[i] & 15]
        at += 2
    out[at] = 34
    return at + 1


cdef inline Py_ssize_t put_addr_cached(uint8_t* out, Py_ssize_t at, const uint8_t* raw,
                                       uint8_t l3, addr_slot* cache) noexcept nogil:
    cdef uint32_t h = (raw[15] * 31u + raw[14] * 7u + raw[13] + raw[11] * 3u + raw[7]) & (ADDR_CACHE - 1)
    cdef addr_slot* slot = &cache[h]
    cdef Py_ssize_t end
    if slot.size and slot.l3 == l3 and memcmp(slot.raw, raw, 16) == 0:
        memcpy(out + at, slot.text, slot.size)
        return at + slot.size
    end = put_addr(out, at, raw, l3)
    if end - at <= ADDR_TEXT:
        slot.l3 = l3
        slot.size = <uint8_t>(end - at)
        memcpy(slot.raw, raw, 16)
        memcpy(slot.text, out + at, end - at)
    return end


cdef inline const char* tunnel_text(uint8_t tunnel) noexcept nogil:
    """TUNNEL_NAMES as JSON strings."""
    if tunnel == TUN_IPIP:
        return b'"ipip"'
    if tunnel == TUN_IPV6:
        return b'"6in4"'
    if tunnel == TUN_GRE:
        return b'"gre"'
    if tunnel == TUN_ETHERIP:
        return b'"etherip"'
    if tunnel == TUN_L2TP:
        return b'"l2tpv3"'
    if tunnel == TUN_MPLS:
        return b'"mpls-in-ip"'
    return b'"other"'


def packet_lines(const uint8_t[::1] buf, const int64_t[::1] offsets,
                 const uint32_t[::1] lengths, const uint16_t[::1] linktypes,
                 const uint64_t[::1] timestamps, const uint8_t[::1] verdicts,
                 const uint8_t[::1] reasons, const uint16_t[::1] rules, int64_t first_index,
                 const uint8_t[::1] names, const int32_t[::1] name_offsets,
                 Py_ssize_t n_rules, uint8_t[::1] out):
    """Write one JSON line per packet into `out` (at least LINE_MAX_BYTES a packet);
    return the bytes written. `names` holds JSON strings back to back, `name_offsets`
    where each starts (and the end): 256 verdicts, then 256 reasons, then `n_rules` rules
    and one "null" for no rule."""
    cdef Py_ssize_t i, at = 0, n = offsets.shape[0]
    cdef pkt_t k
    cdef uint8_t decode_reason, l3, proto
    cdef bint ip, has_l4
    cdef uint64_t ts
    cdef Py_ssize_t rule
    if (lengths.shape[0] < n or linktypes.shape[0] < n or timestamps.shape[0] < n
            or verdicts.shape[0] < n or reasons.shape[0] < n or rules.shape[0] < n):
        raise ValueError("batch arrays shorter than offsets")
    if out.shape[0] < n * LINE_MAX_BYTES:
        raise ValueError("output buffer too small")
    if name_offsets.shape[0] < 512 + n_rules + 2 or name_offsets[512 + n_rules + 1] > names.shape[0]:
        raise ValueError("name table too short")
    if n == 0:
        return 0
    cdef addr_slot* cache = <addr_slot*>calloc(ADDR_CACHE, sizeof(addr_slot))
    if cache == NULL:
        raise MemoryError()
    with nogil:
        for i in range(n):
            memset(&k, 0, sizeof(pkt_t))
            if offsets[i] < 0 or offsets[i] > buf.shape[0] or lengths[i] > buf.shape[0] - offsets[i]:
                decode_reason = R_BAD_OFFSET
            else:
                decode_reason = decode_packet(&buf[0] + offsets[i], lengths[i], linktypes[i], &k)
            l3 = k.l3
            ip = (l3 == L3_IPV4 or l3 == L3_IPV6) and decode_reason == 0
            proto = k.proto
            ts = timestamps[i]
            at = put_n(&out[0], at, b'{"i":', 5)
            at = put_u(&out[0], at, <uint64_t>(first_index + i))
            at = put_n(&out[0], at, b',"ts":', 6)
            at = put_u(&out[0], at, ts // 1000000000)
            out[at] = 46
            at += 1
            ts = (ts % 1000000000) // 1000            # microseconds, six digits
            out[at] = <uint8_t>(48 + ts // 100000)
            out[at + 1] = <uint8_t>(48 + ts // 10000 % 10)
            out[at + 2] = <uint8_t>(48 + ts // 1000 % 10)
            out[at + 3] = <uint8_t>(48 + ts // 100 % 10)
            out[at + 4] = <uint8_t>(48 + ts // 10 % 10)
            out[at + 5] = <uint8_t>(48 + ts % 10)
            at = put_n(&out[0], at + 6, b',"verdict":', 11)
            at = put_name(&out[0], at, &names[0], &name_offsets[0], verdicts[i])
            at = put_n(&out[0], at, b',"reason":', 10)
            at = put_name(&out[0], at, &names[0], &name_offsets[0], 256 + reasons[i])
            at = put_n(&out[0], at, b',"rule":', 8)
            rule = rules[i]
            if rule >= n_rules:
                rule = n_rules                         # NO_RULE: "null"
            at = put_name(&out[0], at, &names[0], &name_offsets[0], 512 + rule)
            at = put_n(&out[0], at, b',"vlan":', 8)
            at = put_u(&out[0], at, k.vlan) if k.vlan else put_n(&out[0], at, b"null", 4)
            at = put_n(&out[0], at, b',"src":', 7)
            at = put_addr_cached(&out[0], at, k.src, l3, cache) if ip else \
                put_n(&out[0], at, b"null", 4)
            at = put_n(&out[0], at, b',"dst":', 7)
            at = put_addr_cached(&out[0], at, k.dst, l3, cache) if ip else \
                put_n(&out[0], at, b"null", 4)
            at = put_n(&out[0], at, b',"proto":', 9)
            at = put_u(&out[0], at, proto) if ip else put_n(&out[0], at, b"null", 4)
            if k.vlan_outer:
                at = put_n(&out[0], at, b',"vlan_outer":', 14)
                at = put_u(&out[0], at, k.vlan_outer)
            if k.has_mac:
                at = put_n(&out[0], at, b',"smac":', 8)
                at = put_mac(&out[0], at, k.src_mac)
            has_l4 = ip and k.frag != FRAG_LATER
            if proto == 1 or proto == 58:
                at = put_n(&out[0], at, b',"icmp_type":', 13)
                at = put_u(&out[0], at, k.icmp_type) if has_l4 else put_n(&out[0], at, b"null", 4)
                at = put_n(&out[0], at, b',"icmp_code":', 13)
                at = put_u(&out[0], at, k.icmp_code) if has_l4 else put_n(&out[0], at, b"null", 4)
            else:
                has_l4 = has_l4 and (proto == 6 or proto == 17 or proto == 132 or proto == 136)
                at = put_n(&out[0], at, b',"sport":', 9)
                at = put_u(&out[0], at, k.sport) if has_l4 else put_n(&out[0], at, b"null", 4)
                at = put_n(&out[0], at, b',"dport":', 9)
                at = put_u(&out[0], at, k.dport) if has_l4 else put_n(&out[0], at, b"null", 4)
            if k.frag_off or k.more_frags:
                at = put_n(&out[0], at, b',"frag_offset":', 15)
                at = put_u(&out[0], at, <uint64_t>k.frag_off * 8)
                at = put_n(&out[0], at, b',"more_fragments":', 18)
                at = put(&out[0], at, b"true" if k.more_frags else b"false")
            if k.tunnel:
                at = put_n(&out[0], at, b',"tunnel":', 10)
                at = put(&out[0], at, tunnel_text(k.tunnel))
            out[at] = 125
            out[at + 1] = 10
            at += 2
    free(cache)
    return at
