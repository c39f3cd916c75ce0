# Decode L2-L4 of one frame. Every read is checked against `caplen` (or the end of the
# IP packet, which never exceeds it) first; a frame that cannot be decoded returns a
# R_* malformed reason instead of reading past its end.

cdef enum:
    LINKTYPE_NULL = 0          # BSD loopback: 4-byte address family, the writer's byte order
    LINKTYPE_ETHERNET = 1
    LINKTYPE_SLIP = 8          # 16-byte SLIP direction/compression header, then IP
    LINKTYPE_PPP = 9
    LINKTYPE_RAW_BSD = 12      # DLT_RAW's own value on most BSDs, found in some files
    LINKTYPE_RAW_OPENBSD = 14
    LINKTYPE_PPP_HDLC = 50
    LINKTYPE_PPP_ETHER = 51    # PPPoE session header without its Ethernet header
    LINKTYPE_RAW = 101
    LINKTYPE_C_HDLC = 104      # Cisco HDLC: address, control, EtherType
    LINKTYPE_IEEE802_11 = 105
    LINKTYPE_FRELAY = 107
    LINKTYPE_LOOP = 108        # OpenBSD loopback: address family in network byte order
    LINKTYPE_LINUX_SLL = 113
    LINKTYPE_PFLOG = 117
    LINKTYPE_RADIOTAP = 127    # radiotap header, then 802.11
    LINKTYPE_IPV4 = 228
    LINKTYPE_IPV6 = 229
    LINKTYPE_NFLOG = 239       # Linux NFLOG: TLVs, the packet in NFULA_PAYLOAD
    LINKTYPE_LINUX_SLL2 = 276
    MAX_VLAN_TAGS = 2
    MAX_IPV6_EXT = 8
    MAX_ENCAPS = 8             # VLAN, PPPoE, MPLS, VN-Tag, NSH, LLC/SNAP headers before IP
    MAX_MPLS_LABELS = 8
    ET_OTHER = 0xFFFF          # "not IP": ends the EtherType walk (reserved by IEEE)


cdef inline uint16_t rd16(const uint8_t* p) noexcept nogil:
    return (<uint16_t>p[0] << 8) | p[1]


cdef inline uint32_t rd32(const uint8_t* p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


# Every link type decode_packet knows, for the capture scanner and the docs.
SUPPORTED_LINKTYPES = (LINKTYPE_NULL, LINKTYPE_ETHERNET, LINKTYPE_SLIP, LINKTYPE_PPP,
                       LINKTYPE_RAW_BSD, LINKTYPE_RAW_OPENBSD, LINKTYPE_PPP_HDLC,
                       LINKTYPE_PPP_ETHER, LINKTYPE_RAW, LINKTYPE_C_HDLC, LINKTYPE_IEEE802_11,
                       LINKTYPE_FRELAY, LINKTYPE_LOOP, LINKTYPE_LINUX_SLL, LINKTYPE_PFLOG,
                       LINKTYPE_RADIOTAP, LINKTYPE_IPV4, LINKTYPE_IPV6, LINKTYPE_NFLOG,
                       LINKTYPE_LINUX_SLL2)


cdef inline bint linktype_supported(uint32_t lt) noexcept nogil:
    return (lt == LINKTYPE_ETHERNET or lt == LINKTYPE_LINUX_SLL or lt == LINKTYPE_RAW
            or lt == LINKTYPE_LINUX_SLL2 or lt == LINKTYPE_IPV4 or lt == LINKTYPE_IPV6
            or lt == LINKTYPE_NULL or lt == LINKTYPE_LOOP or lt == LINKTYPE_SLIP
            or lt == LINKTYPE_PPP or lt == LINKTYPE_RAW_BSD or lt == LINKTYPE_RAW_OPENBSD
            or lt == LINKTYPE_PPP_HDLC or lt == LINKTYPE_PPP_ETHER or lt == LINKTYPE_C_HDLC
            or lt == LINKTYPE_IEEE802_11 or lt == LINKTYPE_FRELAY or lt == LINKTYPE_PFLOG
            or lt == LINKTYPE_RADIOTAP or lt == LINKTYPE_NFLOG)


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


cdef inline uint8_t udp_answer(const uint8_t* p, uint32_t off, uint32_t end, uint16_t sport,
                               uint16_t dport) noexcept nogil:
    """ANSWER_* from a DNS, NTP or DHCP header, when the ports fit the claim (a DNS answer
    comes from port 53, a query goes to it; likewise NTP 123, DHCP 67/68)."""
    cdef uint32_t d = off + 8
    cdef uint32_t avail = end - d if end > d else 0
    cdef uint8_t b
    if sport == 53 or dport == 53:
        if avail < 12 or ((p[d + 2] >> 3) & 0x0F) > 6:     # header, opcode 0-6
            return ANSWER_UNKNOWN
        if p[d + 2] & 0x80:                                  # QR: response
            return ANSWER_REPLY if sport == 53 else ANSWER_UNKNOWN
        return ANSWER_REQUEST if dport == 53 else ANSWER_UNKNOWN
    if sport == 123 or dport == 123:
        if avail < 48:
            return ANSWER_UNKNOWN
        b = p[d]
        if ((b >> 3) & 7) < 1 or ((b >> 3) & 7) > 4:          # NTP version 1-4
            return ANSWER_UNKNOWN
        if (b & 7) == 3:                                     # client
            return ANSWER_REQUEST if dport == 123 else ANSWER_UNKNOWN
        if (b & 7) == 4:                                     # server
            return ANSWER_REPLY if sport == 123 else ANSWER_UNKNOWN
        return ANSWER_UNKNOWN                                # symmetric, broadcast: no side
    if sport == 67 or sport == 68 or dport == 67 or dport == 68:
        if avail < 240 or rd32(p + d + 236) != 0x63825363:   # BOOTP with the DHCP cookie
            return ANSWER_UNKNOWN
        if p[d] == 1:
            return ANSWER_REQUEST if dport == 67 else ANSWER_UNKNOWN
        if p[d] == 2:
            return ANSWER_REPLY if sport == 67 else ANSWER_UNKNOWN
    return ANSWER_UNKNOWN


cdef inline uint8_t tunnel_of(uint8_t proto) noexcept nogil:
    if proto == 4:
        return TUN_IPIP
    if proto == 41:
        return TUN_IPV6
    if proto == 47:
        return TUN_GRE
    if proto == 97:
        return TUN_ETHERIP
    if proto == 115:
        return TUN_L2TP
    if proto == 137:
        return TUN_MPLS
    return TUN_NONE


cdef inline int decode_l4(const uint8_t* p, uint32_t off, uint32_t end, bint snapped,
                          uint8_t proto, pkt_t* k) noexcept nogil:
    """Transport header. `snapped`: the IP packet is cut short (snap length) or is a first
    fragment, so lengths that cover the whole datagram cannot be checked against it."""
    cdef uint32_t doff
    cdef uint32_t avail = end - off if end > off else 0
    k.proto = proto
    k.l4_off = off
    k.l4_end = end
    if proto == 6:
        if avail < 20:
            return R_TCP_SHORT
        doff = (p[off + 12] >> 4) * 4
        if doff < 20 or (doff > avail and not snapped):
            return R_TCP_OFFSET
        k.sport = rd16(p + off)
        k.dport = rd16(p + off + 2)
        k.tcp_flags = p[off + 13]
        if k.tcp_flags & 0x02:            # SYN: a request; SYN-ACK: its answer
            k.answer = ANSWER_REPLY if k.tcp_flags & 0x10 else ANSWER_REQUEST
    elif proto == 17 or proto == 136:     # UDP, UDP-Lite
        if avail < 8:
            return R_UDP_SHORT
        # UDP's own length must fit the IP payload (UDP-Lite's field is a checksum coverage).
        if proto == 17 and (rd16(p + off + 4) < 8 or (rd16(p + off + 4) > avail and not snapped)):
            return R_UDP_LENGTH
        k.sport = rd16(p + off)
        k.dport = rd16(p + off + 2)
        if k.sport < 1024 or k.dport < 1024:     # DNS, NTP, DHCP: who asked (cheap reject)
            k.answer = udp_answer(p, off, end, k.sport, k.dport)
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
    else:
        k.tunnel = tunnel_of(proto)
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
    if total == 0:            # TCP segmentation offload: the sender's NIC fills it in
        end = caplen
        snapped = 1
    elif total < ihl:
        return R_IPV4_TOTAL_LENGTH
    else:
        end = off + total
        if end > caplen:      # cut by the capture's snap length
            end = caplen
            snapped = 1
    k.l3 = L3_IPV4
    set_v4_mapped(k.src, b + 12)
    set_v4_mapped(k.dst, b + 16)
    k.proto = b[9]
    frag_field = rd16(b + 6)
    if frag_field & 0x3FFF:   # more fragments, or an offset: a fragment
        k.frag_id = rd16(b + 4)
        k.frag_off = frag_field & 0x1FFF
        k.more_frags = (frag_field >> 13) & 1
        if k.frag_off:
            k.frag = FRAG_LATER
            return R_RULE
        k.frag = FRAG_FIRST
        snapped = 1           # the transport header's lengths cover the whole datagram
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
            k.frag_off = frag_field >> 3
            k.more_frags = frag_field & 1
            nh = p[o]
            o += 8
            if k.frag_off:
                k.frag = FRAG_LATER
                k.proto = nh
                return R_RULE
            if k.more_frags:
                k.frag = FRAG_FIRST
                snapped = 1       # the transport header's lengths cover the whole datagram
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
    if caplen - off < 8 or 8 + 2 * (<uint32_t>b[4] + b[5]) > caplen - off:
        return R_ARP_SHORT                                # addresses past the frame
    if rd16(b) == 1 and rd16(b + 2) == 0x0800 and b[4] == 6 and b[5] == 4:
        if caplen - off < 28:
            return R_ARP_SHORT
        set_v4_mapped(k.src, b + 14)
        set_v4_mapped(k.dst, b + 24)
    return R_RULE


cdef inline uint16_t family_ethertype(uint32_t family) noexcept nogil:
    """A BSD/Linux address family as an EtherType: AF_INET is 2 everywhere; AF_INET6 is 24
    (NetBSD, OpenBSD), 28 (FreeBSD), 30 (Darwin) or 10 (Linux)."""
    if family == 2:
        return 0x0800
    if family == 24 or family == 28 or family == 30 or family == 10:
        return 0x86DD
    return ET_OTHER


cdef inline uint16_t ppp_ethertype(uint16_t protocol) noexcept nogil:
    if protocol == 0x0021:
        return 0x0800
    if protocol == 0x0057:
        return 0x86DD
    if protocol == 0x0281 or protocol == 0x0283:
        return 0x8847
    return ET_OTHER


cdef inline uint16_t ip_version_ethertype(const uint8_t* p, uint32_t off,
                                          uint32_t caplen) noexcept nogil:
    """IPv4 or IPv6 by the version nibble (link types and labels that do not say which)."""
    if off >= caplen:
        return ET_OTHER
    if (p[off] >> 4) == 4:
        return 0x0800
    if (p[off] >> 4) == 6:
        return 0x86DD
    return ET_OTHER


cdef inline int decode_80211(const uint8_t* p, uint32_t off, uint32_t caplen, pkt_t* k,
                             uint16_t* et, uint32_t* next_off) noexcept nogil:
    """An 802.11 frame: the MACs of data and management frames; for an unprotected data
    frame carrying LLC/SNAP, the EtherType after it. Anything else is a non-IP frame."""
    cdef uint32_t hdr, o
    cdef uint8_t fc0, flags, ds
    et[0] = ET_OTHER
    next_off[0] = caplen
    if caplen - off < 2:
        return R_LINK_SHORT
    fc0 = p[off]
    flags = p[off + 1]
    if ((fc0 >> 2) & 3) == 1:                     # control frames carry no SA
        return R_RULE
    if caplen - off < 24:
        return R_LINK_SHORT
    ds = flags & 3
    # DA: addr1, or addr3 towards the distribution system; SA: addr2, addr3 from it, addr4
    # between access points.
    memcpy(k.dst_mac, p + off + (16 if ds & 1 else 4), 6)
    if ds == 3:
        if caplen - off < 30:
            return R_LINK_SHORT
        memcpy(k.src_mac, p + off + 24, 6)
    else:
        memcpy(k.src_mac, p + off + (16 if ds == 2 else 10), 6)
    k.has_mac = 2
    if ((fc0 >> 2) & 3) != 2 or (fc0 & 0x40) or (flags & 0x40):   # not data, null, protected
        return R_RULE
    hdr = 30 if ds == 3 else 24
    if fc0 & 0x80:                                # QoS data: QoS control, HT control
        hdr += 2
        if flags & 0x80:
            hdr += 4
    o = off + hdr
    if caplen < 8 or o > caplen - 8:
        return R_LINK_SHORT if o > caplen else R_RULE
    if p[o] == 0xAA and p[o + 1] == 0xAA and p[o + 2] == 0x03 and p[o + 3] == 0 \
            and p[o + 4] == 0 and p[o + 5] == 0:
        et[0] = rd16(p + o + 6)
        next_off[0] = o + 8
    return R_RULE


cdef inline int decode_link(const uint8_t* p, uint32_t caplen, uint32_t linktype, pkt_t* k,
                            uint16_t* et_out, uint32_t* off_out) noexcept nogil:
    """Link types other than Ethernet and Linux cooked: the EtherType (or ET_OTHER) and
    offset of what they carry."""
    cdef uint32_t off = 0, family, hl, size
    cdef uint16_t et = ET_OTHER
    cdef int r
    et_out[0] = ET_OTHER             # every early return is "not IP", never a stale value
    off_out[0] = caplen
    if (linktype == LINKTYPE_RAW or linktype == LINKTYPE_IPV4 or linktype == LINKTYPE_IPV6
            or linktype == LINKTYPE_RAW_BSD or linktype == LINKTYPE_RAW_OPENBSD):
        # Raw IP: the version nibble decides; LINKTYPE_IPV4/IPV6 carry only that version.
        if caplen < 1:
            return R_RAW_VERSION
        if (p[0] >> 4) == 4 and linktype != LINKTYPE_IPV6:
            et = 0x0800
        elif (p[0] >> 4) == 6 and linktype != LINKTYPE_IPV4:
            et = 0x86DD
        else:
            return R_RAW_VERSION
    elif linktype == LINKTYPE_NULL or linktype == LINKTYPE_LOOP:
        if caplen < 4:
            return R_LINK_SHORT
        off = 4
        if linktype == LINKTYPE_NULL and (p[0] == 0x0F or p[0] == 0x8F) and p[1] == 0:
            et = rd16(p + 2)          # BSD/OS: a Cisco HDLC header in place of the family
        else:
            family = rd32(p)
            if linktype == LINKTYPE_NULL and family > 0xFFFF:   # written little-endian
                family = (<uint32_t>p[3] << 24) | (<uint32_t>p[2] << 16) | (<uint32_t>p[1] << 8) | p[0]
            et = family_ethertype(family)
    elif linktype == LINKTYPE_PPP or linktype == LINKTYPE_PPP_HDLC:
        if caplen < 2:
            return R_LINK_SHORT
        if p[0] == 0x0F or p[0] == 0x8F:                  # Cisco HDLC framing
            if caplen < 4:
                return R_LINK_SHORT
            et = rd16(p + 2)
            off = 4
        else:
            if p[0] == 0xFF and p[1] == 0x03:             # HDLC address and control
                off = 2
            if caplen - off >= 1 and (p[off] & 1):        # compressed protocol field
                et = ppp_ethertype(p[off])
                off += 1
            elif caplen - off >= 2:
                et = ppp_ethertype(rd16(p + off))
                off += 2
            else:
                return R_LINK_SHORT
    elif linktype == LINKTYPE_PPP_ETHER:
        et = 0x8864                                       # a PPPoE session header follows
    elif linktype == LINKTYPE_C_HDLC:
        if caplen < 4:
            return R_LINK_SHORT
        et = rd16(p + 2)
        off = 4
    elif linktype == LINKTYPE_FRELAY:
        # A Q.922 address of 2-4 bytes (the last has the EA bit), then RFC 2427 (control
        # 0x03, NLPID) or Cisco (an EtherType).
        off = 1
        while off < 4 and off < caplen and not (p[off] & 1):
            off += 1
        if off >= caplen or caplen - off < 3:
            return R_LINK_SHORT
        if (p[0] & 1) or not (p[off] & 1):
            return R_RULE                                 # not a Q.922 address
        off += 1
        if p[off] == 0x03:
            off += 1
            if p[off] == 0x00:                            # padding before the NLPID
                off += 1
            if off >= caplen:
                return R_LINK_SHORT
            if p[off] == 0xCC:
                et = 0x0800
                off += 1
            elif p[off] == 0x8E:
                et = 0x86DD
                off += 1
            elif p[off] == 0x80:                          # SNAP: OUI, then EtherType
                if caplen - off < 6:
                    return R_LINK_SHORT
                et = rd16(p + off + 4)
                off += 6
        else:
            et = rd16(p + off)
            off += 2
    elif linktype == LINKTYPE_SLIP:
        if caplen < 16:
            return R_LINK_SHORT
        off = 16
        if p[0] <= 1:                                     # direction: received, sent
            et = ip_version_ethertype(p, off, caplen)
    elif linktype == LINKTYPE_PFLOG:
        if caplen < 2:
            return R_LINK_SHORT
        hl = (<uint32_t>p[0] + 3) & ~(<uint32_t>3)
        if p[0] < 28 or hl > caplen:
            return R_LINK_SHORT
        et = family_ethertype(p[1])
        off = hl
    elif linktype == LINKTYPE_NFLOG:
        # family, version, resource id; then TLVs (length and type in the writer's byte
        # order, padded to 4); the packet is the payload TLV (type 9).
        if caplen < 4:
            return R_LINK_SHORT
        family = p[0]
        off = 4
        while True:
            if caplen - off < 4:
                return R_LINK_SHORT
            size = p[off] | (<uint32_t>p[off + 1] << 8)
            hl = p[off + 2] | (<uint32_t>p[off + 3] << 8)
            if size < 4 or size > caplen - off:           # big-endian writer
                size = rd16(p + off)
                hl = rd16(p + off + 2)
            if size < 4 or size > caplen - off:
                return R_LINK_SHORT
            if hl == 9:
                off += 4
                et = family_ethertype(family)
                break
            size = (size + 3) & ~(<uint32_t>3)
            if size > caplen - off:
                return R_LINK_SHORT
            off += size
    elif linktype == LINKTYPE_RADIOTAP or linktype == LINKTYPE_IEEE802_11:
        if linktype == LINKTYPE_RADIOTAP:
            if caplen < 4:
                return R_LINK_SHORT
            off = p[2] | (<uint32_t>p[3] << 8)
            if off < 8 or off > caplen:
                return R_LINK_SHORT
        r = decode_80211(p, off, caplen, k, &et, &off)
        if r != R_RULE:
            return r
    else:
        return R_LINKTYPE
    et_out[0] = et
    off_out[0] = off
    return R_RULE


cdef inline int decode_packet(const uint8_t* p, uint32_t caplen, uint32_t linktype,
                              pkt_t* k) noexcept nogil:
    """Fill `k` from one frame; return R_RULE (0) when decoded, else a malformed reason."""
    cdef uint32_t off = caplen, tags = 0, depth = 0, n
    cdef uint16_t et = ET_OTHER, vid
    cdef int r
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
    else:
        r = decode_link(p, caplen, linktype, k, &et, &off)
        if r != R_RULE:
            return r
    # Encapsulations between the link and IP: VLAN tags, PPPoE, MPLS, VN-Tag, NSH, Arista
    # timestamps, LLC/SNAP.
    # Untagged IP leaves at the first comparison.
    while et != 0x0800 and et != 0x86DD:
        if et == 0x8100 or et == 0x88A8 or et == 0x9100:
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
        elif et == 0x8864:                                # PPPoE session, then PPP
            if caplen - off < 8:
                return R_ENCAP_SHORT
            et = ppp_ethertype(rd16(p + off + 6))
            off += 8
        elif et == 0x8847 or et == 0x8848:                # MPLS label stack, then IP
            n = 0
            while True:
                if caplen - off < 4:
                    return R_ENCAP_SHORT
                off += 4
                if p[off - 2] & 1:                        # bottom of stack
                    break
                n += 1
                if n == MAX_MPLS_LABELS:
                    return R_ENCAP_DEPTH
            et = ip_version_ethertype(p, off, caplen)
            if et == ET_OTHER and off < caplen and (p[off] >> 4) == 0 and caplen - off >= 18:
                et = rd16(p + off + 16)                   # pseudowire: control word, Ethernet
                off += 18
        elif et == 0x8926:                                # VN-Tag
            if caplen - off < 6:
                return R_ENCAP_SHORT
            et = rd16(p + off + 4)
            off += 6
        elif et == 0x894F:                                # NSH (RFC 8300)
            if caplen - off < 8:
                return R_ENCAP_SHORT
            n = (rd16(p + off) & 0x3F) * 4
            if n < 8 or n > caplen - off:
                return R_ENCAP_SHORT
            vid = p[off + 3]                              # next protocol
            off += n
            if vid == 1:
                et = 0x0800
            elif vid == 2:
                et = 0x86DD
            elif vid == 5:
                et = 0x8847
            elif vid == 3:                                # Ethernet: its EtherType
                if caplen - off < 14:
                    return R_ENCAP_SHORT
                et = rd16(p + off + 12)
                off += 14
            else:
                et = ET_OTHER
        elif et == 0xD28B:                                # Arista timestamp header
            if caplen - off < 4:
                return R_ENCAP_SHORT
            n = (rd16(p + off + 2) >> 4) & 0x0F           # format: 1 64-bit, 2 48-bit
            if rd16(p + off) != 1 or (n != 1 and n != 2):
                et = ET_OTHER
            else:
                n = 12 if n == 1 else 10                  # subtype, version, timestamp
                if caplen - off < n + 2:
                    return R_ENCAP_SHORT
                et = rd16(p + off + n)
                off += n + 2
        elif et < 0x0600:                                 # 802.3 length: LLC follows
            if caplen - off < 8 or p[off] != 0xAA or p[off + 1] != 0xAA or p[off + 2] != 0x03:
                break
            if p[off + 3] == 0 and p[off + 4] == 0 and (p[off + 5] == 0 or p[off + 5] == 0xF8):
                et = rd16(p + off + 6)                    # SNAP with an EtherType
                off += 8
            else:
                if p[off + 3] == 0 and p[off + 4] == 0 and p[off + 5] == 0x0C \
                        and p[off + 6] == 0x20 and p[off + 7] == 0x00:
                    k.discovery = 1                       # CDP
                break
        else:
            break
        depth += 1
        if depth > MAX_ENCAPS:
            return R_ENCAP_DEPTH
    k.ethertype = et
    if et == 0x0800:
        return decode_ipv4(p, off, caplen, k)
    if et == 0x86DD:
        return decode_ipv6(p, off, caplen, k)
    if et == 0x0806:
        return decode_arp(p, off, caplen, k)
    if et == 0x88CC:                                      # LLDP
        k.discovery = 1
    return R_RULE
