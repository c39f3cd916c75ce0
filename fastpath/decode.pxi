# Decode L2-L4 of one frame. Every read is checked against `caplen` (or the end of the
# IP packet, which never exceeds it) first; a frame that cannot be decoded returns a
# R_* malformed reason instead of reading past its end.

cdef enum:
    LINKTYPE_ETHERNET = 1
    LINKTYPE_RAW = 101
    LINKTYPE_LINUX_SLL = 113
    LINKTYPE_IPV4 = 228
    LINKTYPE_IPV6 = 229
    LINKTYPE_LINUX_SLL2 = 276
    MAX_VLAN_TAGS = 2
    MAX_IPV6_EXT = 8


cdef inline uint16_t rd16(const uint8_t* p) noexcept nogil:
    return (<uint16_t>p[0] << 8) | p[1]


cdef inline uint32_t rd32(const uint8_t* p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef inline bint linktype_supported(uint32_t linktype) noexcept nogil:
    return (linktype == LINKTYPE_ETHERNET or linktype == LINKTYPE_RAW
            or linktype == LINKTYPE_LINUX_SLL or linktype == LINKTYPE_LINUX_SLL2
            or linktype == LINKTYPE_IPV4 or linktype == LINKTYPE_IPV6)


cdef inline void set_v4_mapped(uint8_t* dst16, const uint8_t* v4) noexcept nogil:
    memset(dst16, 0, 10)
    dst16[10] = 0xFF
    dst16[11] = 0xFF
    memcpy(dst16 + 12, v4, 4)


cdef inline bint icmp_is_error(uint8_t proto, uint8_t icmp_type) noexcept nogil:
    if proto == 1:
        return (icmp_type == 3 or icmp_type == 4 or icmp_type == 5 or icmp_type == 11
                or icmp_type == 12)
    return icmp_type >= 1 and icmp_type <= 4


cdef inline void decode_icmp_quote(const uint8_t* p, uint32_t off, uint32_t end,
                                   pkt_t* k) noexcept nogil:
    """The IP header (and first 8 L4 bytes) an ICMP error quotes, when it is all there."""
    cdef uint32_t ihl, o
    cdef uint8_t proto
    if end - off >= 20 and (p[off] >> 4) == 4 and k.l3 == L3_IPV4:
        ihl = (p[off] & 0x0F) * 4
        if ihl < 20 or ihl > end - off:
            return
        set_v4_mapped(k.inner_src, p + off + 12)
        set_v4_mapped(k.inner_dst, p + off + 16)
        proto = p[off + 9]
        o = off + ihl
    elif end - off >= 40 and (p[off] >> 4) == 6 and k.l3 == L3_IPV6:
        memcpy(k.inner_src, p + off + 8, 16)
        memcpy(k.inner_dst, p + off + 24, 16)
        proto = p[off + 6]
        o = off + 40
    else:
        return
    if proto == 6 or proto == 17 or proto == 132 or proto == 136:
        if end - o < 4:
            return
        k.inner_sport = rd16(p + o)
        k.inner_dport = rd16(p + o + 2)
    elif proto == 1 or proto == 58:
        if end - o < 8:
            return
        k.inner_icmp_type = p[o]
        k.inner_icmp_id = rd16(p + o + 4)
    k.inner_proto = proto
    k.inner_valid = 1


cdef inline int decode_l4(const uint8_t* p, uint32_t off, uint32_t end, bint snapped,
                          uint8_t proto, pkt_t* k) noexcept nogil:
    cdef uint32_t doff
    cdef uint32_t avail = end - off if end > off else 0
    k.proto = proto
    k.l4_off = off
    if proto == 6:
        if avail < 20:
            return R_TCP_SHORT
        doff = (p[off + 12] >> 4) * 4
        if doff < 20 or (doff > avail and not snapped):
            return R_TCP_OFFSET
        k.sport = rd16(p + off)
        k.dport = rd16(p + off + 2)
        k.tcp_flags = p[off + 13]
    elif proto == 17 or proto == 136:     # UDP, UDP-Lite
        if avail < 8:
            return R_UDP_SHORT
        # UDP's own length must fit the IP payload (UDP-Lite's field is a checksum coverage).
        if proto == 17 and not snapped and (rd16(p + off + 4) < 8 or rd16(p + off + 4) > avail):
            return R_UDP_LENGTH
        k.sport = rd16(p + off)
        k.dport = rd16(p + off + 2)
    elif proto == 132:
        if avail < 12:
            return R_SCTP_SHORT
        k.sport = rd16(p + off)
        k.dport = rd16(p + off + 2)
    elif proto == 1 or proto == 58:
        # ICMP's header is 8 bytes (RFC 792); ICMPv6's common part is 4 (RFC 4443).
        if avail < (8 if proto == 1 else 4):
            return R_ICMP_SHORT
        k.icmp_type = p[off]
        k.icmp_code = p[off + 1]
        if avail >= 8:
            k.icmp_id = rd16(p + off + 4)
            if icmp_is_error(proto, k.icmp_type):
                decode_icmp_quote(p, off + 8, end, k)
    elif proto == 4 or proto == 41 or proto == 47:
        k.tunnel = 1
    return R_RULE


cdef inline int decode_ipv4(const uint8_t* p, uint32_t off, uint32_t caplen,
                            pkt_t* k) noexcept nogil:
    cdef const uint8_t* b = p + off
    cdef uint32_t ihl, total, end, frag_field
    cdef bint snapped = 0
    if caplen - off < 20:
        return R_IPV4_SHORT
    if (b[0] >> 4) != 4:
        return R_IPV4_VERSION
    ihl = (b[0] & 0x0F) * 4
    if ihl < 20:
        return R_IPV4_IHL
    if ihl > caplen - off:
        return R_IPV4_SHORT
    total = rd16(b + 2)
    if total < ihl:
        return R_IPV4_TOTAL_LENGTH
    end = off + total
    if end > caplen:          # cut by the capture's snap length
        end = caplen
        snapped = 1
    k.l3 = L3_IPV4
    set_v4_mapped(k.src, b + 12)
    set_v4_mapped(k.dst, b + 16)
    k.proto = b[9]
    frag_field = rd16(b + 6)
    k.frag_id = rd16(b + 4)
    if frag_field & 0x1FFF:
        k.frag = FRAG_LATER
        return R_RULE
    if frag_field & 0x2000:
        k.frag = FRAG_FIRST
    return decode_l4(p, off + ihl, end, snapped, b[9], k)


cdef inline int decode_ipv6(const uint8_t* p, uint32_t off, uint32_t caplen,
                            pkt_t* k) noexcept nogil:
    cdef const uint8_t* b = p + off
    cdef uint32_t plen, end, o, hl, depth, frag_field
    cdef uint8_t nh
    cdef bint snapped = 0
    if caplen - off < 40:
        return R_IPV6_SHORT
    if (b[0] >> 4) != 6:
        return R_IPV6_VERSION
    plen = rd16(b + 4)
    end = off + 40 + plen
    if plen == 0:             # jumbogram or lying length: bounded by the frame
        end = caplen
    elif end > caplen:
        end = caplen
        snapped = 1
    k.l3 = L3_IPV6
    memcpy(k.src, b + 8, 16)
    memcpy(k.dst, b + 24, 16)
    nh = b[6]
    o = off + 40
    depth = 0
    while nh == 0 or nh == 43 or nh == 60 or nh == 44 or nh == 51:
        if depth == MAX_IPV6_EXT:
            return R_IPV6_EXT_DEPTH
        depth += 1
        if end < 8 or o > end - 8:
            return R_IPV6_EXT_SHORT
        if nh == 44:
            frag_field = rd16(p + o + 2)
            k.frag_id = rd32(p + o + 4)
            nh = p[o]
            o += 8
            if frag_field & 0xFFF8:
                k.frag = FRAG_LATER
                k.proto = nh
                return R_RULE
            if frag_field & 1:
                k.frag = FRAG_FIRST
            continue
        if nh == 51:
            hl = (<uint32_t>p[o + 1] + 2) * 4
        else:
            hl = (<uint32_t>p[o + 1] + 1) * 8
        if hl > end - o:
            return R_IPV6_EXT_SHORT
        nh = p[o]
        o += hl
    return decode_l4(p, o, end, snapped, nh, k)


cdef inline int decode_arp(const uint8_t* p, uint32_t off, uint32_t caplen,
                           pkt_t* k) noexcept nogil:
    cdef const uint8_t* b = p + off
    k.l3 = L3_ARP
    memset(k.src, 0, 16)
    memset(k.dst, 0, 16)
    if caplen - off < 8:
        return R_ARP_SHORT
    if rd16(b) == 1 and rd16(b + 2) == 0x0800 and b[4] == 6 and b[5] == 4:
        if caplen - off < 28:
            return R_ARP_SHORT
        set_v4_mapped(k.src, b + 14)
        set_v4_mapped(k.dst, b + 24)
    return R_RULE


cdef inline int decode_packet(const uint8_t* p, uint32_t caplen, uint32_t linktype,
                              pkt_t* k) noexcept nogil:
    """Fill `k` from one frame; return R_RULE (0) when decoded, else a malformed reason."""
    cdef uint32_t off, tags = 0
    cdef uint16_t et, vid
    # Zero every field before the addresses in one burst of stores (the MACs included);
    # addresses are always written before they are read.
    memset(k, 0, <size_t>(<char*>&k.src[0] - <char*>k))
    if linktype == LINKTYPE_ETHERNET:
        if caplen < 14:
            return R_ETH_SHORT
        memcpy(k.dst_mac, p, 6)
        memcpy(k.src_mac, p + 6, 6)
        k.has_mac = 2
        et = rd16(p + 12)
        off = 14
    elif linktype == LINKTYPE_LINUX_SLL:
        if caplen < 16:
            return R_SLL_SHORT
        if rd16(p + 2) == 1 and rd16(p + 4) == 6:
            memcpy(k.src_mac, p + 6, 6)
            k.has_mac = 1
        et = rd16(p + 14)
        off = 16
    elif linktype == LINKTYPE_LINUX_SLL2:
        if caplen < 20:
            return R_SLL_SHORT
        if rd16(p + 8) == 1 and p[11] == 6:
            memcpy(k.src_mac, p + 12, 6)
            k.has_mac = 1
        et = rd16(p)
        off = 20
    elif linktype == LINKTYPE_RAW or linktype == LINKTYPE_IPV4 or linktype == LINKTYPE_IPV6:
        # Raw IP: the version nibble decides; LINKTYPE_IPV4/IPV6 carry only that version.
        if caplen < 1:
            return R_RAW_VERSION
        if (p[0] >> 4) == 4 and linktype != LINKTYPE_IPV6:
            et = 0x0800
        elif (p[0] >> 4) == 6 and linktype != LINKTYPE_IPV4:
            et = 0x86DD
        else:
            return R_RAW_VERSION
        off = 0
    else:
        return R_LINKTYPE
    while et == 0x8100 or et == 0x88A8 or et == 0x9100:
        if tags == MAX_VLAN_TAGS:
            return R_VLAN_DEPTH
        if caplen - off < 4:
            return R_VLAN_SHORT
        vid = rd16(p + off) & 0x0FFF
        if tags == 1:
            k.vlan_outer = k.vlan
        k.vlan = vid
        et = rd16(p + off + 2)
        off += 4
        tags += 1
    k.ethertype = et
    if et == 0x88CC:                                   # LLDP
        k.discovery = 1
    elif et < 0x0600 and caplen - off >= 8 and p[off] == 0xAA and p[off + 1] == 0xAA \
            and p[off + 3] == 0 and p[off + 4] == 0 and p[off + 5] == 0x0C \
            and p[off + 6] == 0x20 and p[off + 7] == 0x00:   # CDP over LLC/SNAP
        k.discovery = 1
    if et == 0x0800:
        return decode_ipv4(p, off, caplen, k)
    if et == 0x86DD:
        return decode_ipv6(p, off, caplen, k)
    if et == 0x0806:
        return decode_arp(p, off, caplen, k)
    return R_RULE
