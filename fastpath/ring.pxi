# AF_PACKET TPACKET_V3 receive ring: the walk of one block the kernel has handed to user
# space. The kernel fills fixed-size blocks with variable-length packet records; a block
# whose status has TP_STATUS_USER belongs to us until we write TP_STATUS_KERNEL back. The
# walker never copies a packet: it fills the batch arrays with offsets into the mapped
# ring (the same shape CaptureScanner gives for a file), so classify() reads the frames
# where the kernel wrote them.
#
# Every field read from the block is checked against the block's own length before it is
# used; a block that fails a check is rejected whole (a negative RING_ERR_* code) and no
# byte outside [block_offset, block_offset + block_size) is ever read or written.
#
# Layouts (linux/if_packet.h, native byte order, checked against the C header):
#   tpacket_block_desc: version u32 @0, offset_to_priv u32 @4, then tpacket_hdr_v1:
#     block_status u32 @8, num_pkts u32 @12, offset_to_first_pkt u32 @16, blk_len u32 @20,
#     seq_num u64 @24, ts_first_pkt @32, ts_last_pkt @40; 48 bytes.
#   tpacket3_hdr: tp_next_offset u32 @0, tp_sec @4, tp_nsec @8, tp_snaplen @12, tp_len @16,
#     tp_status @20, tp_mac u16 @24, tp_net u16 @26, tp_rxhash u32 @28, tp_vlan_tci u32 @32,
#     tp_vlan_tpid u16 @36; 48 bytes, followed by a sockaddr_ll (20 bytes, TPACKET3_HDRLEN 68).

from libc.string cimport memmove

cdef extern from *:
    """
    #define WARDTAP_LOAD_ACQUIRE32(p) __atomic_load_n((const uint32_t*)(p), __ATOMIC_ACQUIRE)
    #define WARDTAP_STORE_RELEASE32(p, v) __atomic_store_n((uint32_t*)(p), (v), __ATOMIC_RELEASE)
    """
    uint32_t WARDTAP_LOAD_ACQUIRE32(const void* p) noexcept nogil
    void WARDTAP_STORE_RELEASE32(void* p, uint32_t v) noexcept nogil

cdef enum:
    TP_STATUS_KERNEL_ = 0
    TP_STATUS_USER_ = 1
    TP_STATUS_VLAN_VALID_ = 0x10
    TP_STATUS_VLAN_TPID_VALID_ = 0x40
    BD_STATUS = 8
    BD_NUM_PKTS = 12
    BD_FIRST_PKT = 16
    BD_BLK_LEN = 20
    BD_HDR_LEN = 48
    PK_NEXT = 0
    PK_SEC = 4
    PK_NSEC = 8
    PK_SNAPLEN = 12
    PK_LEN = 16
    PK_STATUS = 20
    PK_MAC = 24
    PK_VLAN_TCI = 32
    PK_VLAN_TPID = 36
    PK_HDR_LEN = 48
    PK_HDR_SLL_LEN = 68         # TPACKET3_HDRLEN: header plus sockaddr_ll
    VLAN_TAG_LEN = 4

# Walker error codes (returned negated); messages in appliance/sources/afpacket.py.
cdef enum:
    RING_ERR_BLOCK_BOUNDS = 1     # block outside the ring, misaligned, or shorter than its header
    RING_ERR_BLOCK_LENGTH = 2     # blk_len past the block or inside the block header
    RING_ERR_FIRST_PACKET = 3     # offset_to_first_pkt inside the header or past blk_len
    RING_ERR_TOO_MANY = 4         # num_pkts larger than the batch arrays
    RING_ERR_PACKET_BOUNDS = 5    # a packet header or its data runs past blk_len
    RING_ERR_NEXT_OFFSET = 6      # tp_next_offset too small to reach the next packet

# Counters a walk adds to (the optional `counters` array), in this order.
RING_COUNTER_NAMES = ("vlan_reinserted", "vlan_not_reinserted", "truncated", "wire_bytes")


cdef inline uint32_t ring32(const uint8_t* p) noexcept nogil:
    cdef uint32_t v
    memcpy(&v, p, 4)
    return v


cdef inline uint16_t ring16(const uint8_t* p) noexcept nogil:
    cdef uint16_t v
    memcpy(&v, p, 2)
    return v


cdef inline void ring_put32(uint8_t* p, uint32_t v) noexcept nogil:
    memcpy(p, &v, 4)


cdef inline void ring_put16(uint8_t* p, uint16_t v) noexcept nogil:
    memcpy(p, &v, 2)


cdef int64_t _ring_walk(uint8_t* blk, uint64_t block_offset, uint64_t block_size,
                        int64_t* offsets, uint32_t* lengths, uint32_t* wire, uint64_t* ts,
                        uint16_t* lt, uint64_t cap, uint16_t linktype,
                        uint64_t* counters) noexcept nogil:
    cdef uint64_t blk_len = ring32(blk + BD_BLK_LEN)
    cdef uint64_t num = ring32(blk + BD_NUM_PKTS)
    cdef uint64_t off = ring32(blk + BD_FIRST_PKT)
    cdef uint64_t mac, snap, length, i, next_off
    cdef uint32_t status
    cdef uint16_t tpid
    cdef uint8_t* h
    cdef uint8_t* frame
    if blk_len > block_size or blk_len < BD_HDR_LEN:
        return -RING_ERR_BLOCK_LENGTH
    if num == 0:
        return 0
    if off < BD_HDR_LEN or off > blk_len:
        return -RING_ERR_FIRST_PACKET
    if num > cap:
        return -RING_ERR_TOO_MANY
    for i in range(num):
        # All in 64 bits: off <= blk_len <= block_size < 2^32 after the checks, so no sum wraps.
        if blk_len - off < PK_HDR_LEN:
            return -RING_ERR_PACKET_BOUNDS
        h = blk + off
        mac = ring16(h + PK_MAC)
        snap = ring32(h + PK_SNAPLEN)
        length = ring32(h + PK_LEN)
        status = ring32(h + PK_STATUS)
        if mac < PK_HDR_LEN or mac > blk_len - off or snap > blk_len - off - mac:
            return -RING_ERR_PACKET_BOUNDS
        if status & TP_STATUS_VLAN_VALID_:
            # The kernel moved the outermost tag into tp_vlan_tci. Put it back in place: the
            # record has headroom between the sockaddr_ll and tp_mac (the kernel aligns the
            # network header), so the two MAC addresses move 4 bytes down and the tag goes
            # after them. The header is updated to describe the rewritten frame, so walking the
            # block again gives the same result.
            frame = h + mac
            if snap >= 12 and mac >= PK_HDR_SLL_LEN + VLAN_TAG_LEN:
                tpid = ring16(h + PK_VLAN_TPID) if status & TP_STATUS_VLAN_TPID_VALID_ else 0x8100
                if tpid == 0:
                    tpid = 0x8100
                memmove(frame - VLAN_TAG_LEN, frame, 12)
                frame[8] = <uint8_t>(tpid >> 8)
                frame[9] = <uint8_t>tpid
                frame[10] = <uint8_t>(ring32(h + PK_VLAN_TCI) >> 8)
                frame[11] = <uint8_t>ring32(h + PK_VLAN_TCI)
                mac -= VLAN_TAG_LEN
                snap += VLAN_TAG_LEN
                length += VLAN_TAG_LEN
                ring_put16(h + PK_MAC, <uint16_t>mac)
                ring_put32(h + PK_SNAPLEN, <uint32_t>snap)
                ring_put32(h + PK_LEN, <uint32_t>length)
                ring_put32(h + PK_STATUS, status & ~(<uint32_t>(TP_STATUS_VLAN_VALID_ | TP_STATUS_VLAN_TPID_VALID_)))
                if counters != NULL:
                    counters[0] += 1
            elif counters != NULL:
                counters[1] += 1
        offsets[i] = <int64_t>(block_offset + off + mac)
        lengths[i] = <uint32_t>snap
        wire[i] = <uint32_t>length
        ts[i] = <uint64_t>ring32(h + PK_SEC) * 1000000000 + ring32(h + PK_NSEC)
        lt[i] = linktype
        if counters != NULL:
            if snap < length:
                counters[2] += 1
            counters[3] += length
        if i + 1 < num:
            next_off = ring32(h + PK_NEXT)
            if next_off < PK_HDR_LEN:
                return -RING_ERR_NEXT_OFFSET
            off += next_off
            if off > blk_len:
                return -RING_ERR_PACKET_BOUNDS
    return <int64_t>num


def ring_block_batch(uint8_t[::1] ring, uint64_t block_offset, uint64_t block_size,
                     int64_t[::1] offsets, uint32_t[::1] lengths, uint32_t[::1] wire,
                     uint64_t[::1] ts, uint16_t[::1] linktypes, uint64_t[::1] counters=None,
                     uint16_t linktype=1):
    """Fill the batch arrays with the packets of the block at ring[block_offset:+block_size].

    Packet i is ring[offsets[i]:offsets[i]+lengths[i]]; wire holds tp_len, ts nanoseconds
    (tp_sec, tp_nsec), linktypes `linktype`. A VLAN tag the kernel stripped into
    tp_vlan_tci is written back into the frame in place (the ring is written, so it must be
    mapped writable). `counters` (4 x uint64, RING_COUNTER_NAMES) is added to when given.
    Returns the packet count, or a negative RING_ERR_* code for a malformed block; the
    arrays may then hold some entries but the block must be treated as empty.
    """
    cdef uint64_t cap = min(offsets.shape[0], lengths.shape[0], wire.shape[0], ts.shape[0],
                            linktypes.shape[0])
    cdef uint64_t size = ring.shape[0]
    cdef uint64_t* ctr = NULL
    cdef int64_t n
    if counters is not None:
        if counters.shape[0] < len(RING_COUNTER_NAMES):
            raise ValueError("counters needs 4 entries")
        ctr = &counters[0]
    if (block_size < BD_HDR_LEN or block_offset > size or block_size > size - block_offset
            or block_size > 0xFFFFFFFF or block_offset % 8):
        return -RING_ERR_BLOCK_BOUNDS
    if cap == 0:
        return -RING_ERR_TOO_MANY if ring32(&ring[block_offset] + BD_NUM_PKTS) else 0
    with nogil:
        n = _ring_walk(&ring[block_offset], block_offset, block_size, &offsets[0], &lengths[0],
                       &wire[0], &ts[0], &linktypes[0], cap, linktype, ctr)
    return n


def ring_block_status(uint8_t[::1] ring, uint64_t block_offset):
    """The block's block_status, read with acquire order (packet data after it is current)."""
    if block_offset % 8 or ring.shape[0] < BD_HDR_LEN or block_offset > <uint64_t>ring.shape[0] - BD_HDR_LEN:
        raise IndexError("block header outside the ring")
    return WARDTAP_LOAD_ACQUIRE32(&ring[block_offset] + BD_STATUS)


def ring_block_release(uint8_t[::1] ring, uint64_t block_offset):
    """Give the block back to the kernel (TP_STATUS_KERNEL, release order: our reads first)."""
    if block_offset % 8 or ring.shape[0] < BD_HDR_LEN or block_offset > <uint64_t>ring.shape[0] - BD_HDR_LEN:
        raise IndexError("block header outside the ring")
    WARDTAP_STORE_RELEASE32(&ring[block_offset] + BD_STATUS, TP_STATUS_KERNEL_)
