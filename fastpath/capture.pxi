# Capture file scanner: classic pcap (both byte orders, micro- and nanosecond) and pcapng
# (SHB/IDB/EPB/SPB and the obsolete PB, several sections, interfaces and link types, both
# byte orders). It never copies a packet: it fills arrays of offsets into the caller's buffer
# (an mmap), lengths, timestamps and link types, a batch at a time, and stops at the first
# damage with an error code and the byte offset where the damage starts. A classic pcap of a
# link type the decoder does not know is refused at its header; a pcapng interface of one
# is read, its packets left to the decoder (unsupported_linktype).

cdef enum:
    CAP_PCAP = 1
    CAP_PCAPNG = 2
    CAP_MAX_IFACES = 64
    CAP_MAX_CAPLEN = 262144
    CAP_PREFETCH = 4096

# Scanner error codes; messages in appliance/sources/capture.py.
cdef enum:
    CAPERR_NONE = 0
    CAPERR_TRUNCATED = 1          # a record or block runs past the end of the file
    CAPERR_BAD_LENGTH = 2         # a record's captured length is impossible
    CAPERR_BAD_MAGIC = 3          # not a pcap or pcapng file
    CAPERR_LINKTYPE = 4           # classic pcap of a link type the decoder does not know
    CAPERR_BLOCK_LENGTH = 5       # pcapng block length not a multiple of 4, or too small
    CAPERR_NO_SECTION = 6         # pcapng block before any section header
    CAPERR_BAD_INTERFACE = 7      # packet names an interface with no description block
    CAPERR_TOO_MANY_INTERFACES = 8
    CAPERR_TRAILER = 9            # pcapng block's trailing length differs from its header
    CAPERR_HEADER_SHORT = 10      # file shorter than its header


ctypedef struct iface_t:
    uint32_t linktype
    uint32_t snaplen             # 0: no limit
    uint8_t binary_res           # resolution is 2^-res, else 10^-res
    uint8_t res
    int64_t offset_s


cdef inline uint16_t cap16(const uint8_t* p, bint big) noexcept nogil:
    if big:
        return (<uint16_t>p[0] << 8) | p[1]
    return (<uint16_t>p[1] << 8) | p[0]


cdef inline uint32_t cap32(const uint8_t* p, bint big) noexcept nogil:
    if big:
        return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]
    return (<uint32_t>p[3] << 24) | (<uint32_t>p[2] << 16) | (<uint32_t>p[1] << 8) | p[0]


cdef inline uint64_t units_to_ns(uint64_t units, const iface_t* f) noexcept nogil:
    cdef uint64_t ns, frac
    cdef uint32_t n, i
    if f.binary_res:
        n = f.res if f.res < 63 else 63
        frac = units & (((<uint64_t>1) << n) - 1)
        ns = (units >> n) * 1000000000
        if n > 34:
            frac >>= n - 34
            n = 34
        ns += (frac * 1000000000) >> n
    elif f.res <= 9:
        ns = units
        for i in range(9 - f.res):
            ns *= 10
    else:
        ns = units
        for i in range(f.res - 9):
            ns //= 10
    return ns + <uint64_t>(f.offset_s * 1000000000)


cdef class CaptureScanner:
    """Indexes the packets of one capture held in memory (normally an mmap)."""

    cdef const uint8_t[::1] view
    cdef const uint8_t* base
    cdef uint64_t size
    cdef uint64_t pos
    cdef int fmt
    cdef bint big
    cdef uint32_t pcap_linktype
    cdef uint64_t pcap_ns_per_unit
    cdef iface_t ifaces[CAP_MAX_IFACES]
    cdef uint32_t n_ifaces
    cdef bint in_section
    cdef uint64_t last_ts        # simple packet blocks carry none: they take the previous one
    cdef readonly int error
    cdef readonly uint64_t error_offset
    cdef readonly uint32_t bad_linktype
    cdef readonly uint64_t packets

    def __init__(self, const uint8_t[::1] buf):
        self.view = buf
        self.size = buf.shape[0]
        self.base = &buf[0] if self.size else NULL
        self.error = CAPERR_NONE
        self.packets = 0
        if self.size < 4:
            self._fail(CAPERR_HEADER_SHORT, 0)
            return
        if self.base[0] == 0x0A and self.base[1] == 0x0D and self.base[2] == 0x0D and self.base[3] == 0x0A:
            self.fmt = CAP_PCAPNG
            self.pos = 0
            return
        self.fmt = CAP_PCAP
        magic = cap32(self.base, 1)
        if magic == 0xA1B2C3D4 or magic == 0xA1B23C4D:
            self.big = 1
        elif magic == 0xD4C3B2A1 or magic == 0x4D3CB2A1:
            self.big = 0
        else:
            self._fail(CAPERR_BAD_MAGIC, 0)
            return
        self.pcap_ns_per_unit = 1 if (magic == 0xA1B23C4D or magic == 0x4D3CB2A1) else 1000
        if self.size < 24:
            self._fail(CAPERR_HEADER_SHORT, 0)
            return
        self.pcap_linktype = cap32(self.base + 20, self.big) & 0x0FFFFFFF
        if not linktype_supported(self.pcap_linktype):
            self.bad_linktype = self.pcap_linktype
            self._fail(CAPERR_LINKTYPE, 20)
            return
        self.pos = 24

    cdef void _fail(self, int code, uint64_t offset) noexcept nogil:
        self.error = code
        self.error_offset = offset

    @property
    def offset(self):
        """Byte offset of the next record to read."""
        return self.pos

    @property
    def format(self):
        return {CAP_PCAP: "pcap", CAP_PCAPNG: "pcapng"}.get(self.fmt, "unknown")

    def next_batch(self, int64_t[::1] offsets, uint32_t[::1] lengths, uint32_t[::1] wire_lengths,
                   uint64_t[::1] timestamps, uint16_t[::1] linktypes):
        """Fill the arrays with up to their length of packets; return how many.

        0 means the end of the file or an error (see `error` and `error_offset`).
        """
        cdef uint32_t cap = min(offsets.shape[0], lengths.shape[0], wire_lengths.shape[0],
                                timestamps.shape[0], linktypes.shape[0])
        cdef uint32_t n = 0
        if self.error != CAPERR_NONE or cap == 0:
            return 0
        with nogil:
            if self.fmt == CAP_PCAP:
                n = self._scan_pcap(&offsets[0], &lengths[0], &wire_lengths[0],
                                    &timestamps[0], &linktypes[0], cap)
            else:
                n = self._scan_pcapng(&offsets[0], &lengths[0], &wire_lengths[0],
                                      &timestamps[0], &linktypes[0], cap)
        self.packets += n
        return n

    cdef uint32_t _scan_pcap(self, int64_t* offsets, uint32_t* lengths, uint32_t* wire,
                             uint64_t* ts, uint16_t* lt, uint32_t cap) noexcept nogil:
        cdef uint32_t n = 0, caplen
        cdef const uint8_t* r
        cdef uint64_t ahead = self.pos
        while n < cap and self.pos < self.size:
            # Stream the next few KiB into the cache: record headers sit at irregular
            # strides the hardware prefetcher does not follow.
            if ahead < self.pos:
                ahead = self.pos
            while ahead < self.pos + CAP_PREFETCH and ahead < self.size:
                WARDTAP_PREFETCH(self.base + ahead)
                ahead += 64
            if self.size - self.pos < 16:
                self._fail(CAPERR_TRUNCATED, self.pos)
                break
            r = self.base + self.pos
            caplen = cap32(r + 8, self.big)
            if caplen > CAP_MAX_CAPLEN:
                self._fail(CAPERR_BAD_LENGTH, self.pos)
                break
            if self.size - self.pos - 16 < caplen:
                self._fail(CAPERR_TRUNCATED, self.pos)
                break
            offsets[n] = self.pos + 16
            lengths[n] = caplen
            wire[n] = cap32(r + 12, self.big)
            ts[n] = (<uint64_t>cap32(r, self.big) * 1000000000
                     + <uint64_t>cap32(r + 4, self.big) * self.pcap_ns_per_unit)
            lt[n] = <uint16_t>self.pcap_linktype
            n += 1
            self.pos += 16 + caplen
        return n

    cdef int _section_header(self, const uint8_t* b, uint32_t total) noexcept nogil:
        """Start a new section: byte order from its magic, interfaces forgotten."""
        self.in_section = 1
        self.n_ifaces = 0
        return CAPERR_NONE

    cdef int _interface(self, const uint8_t* b, uint32_t total) noexcept nogil:
        cdef iface_t* f
        cdef uint32_t o = 16, code, length
        if total < 20:
            return CAPERR_BLOCK_LENGTH
        if self.n_ifaces == CAP_MAX_IFACES:
            return CAPERR_TOO_MANY_INTERFACES
        f = &self.ifaces[self.n_ifaces]
        f.linktype = cap16(b + 8, self.big)
        f.snaplen = cap32(b + 12, self.big)
        f.binary_res = 0
        f.res = 6
        f.offset_s = 0
        while o + 4 <= total - 4:
            code = cap16(b + o, self.big)
            length = cap16(b + o + 2, self.big)
            if code == 0 or o + 4 + length > total - 4:
                break
            if code == 9 and length >= 1:
                f.binary_res = b[o + 4] >> 7
                f.res = b[o + 4] & 0x7F
            elif code == 14 and length >= 8:
                f.offset_s = <int64_t>((<uint64_t>cap32(b + o + 4 + (0 if self.big else 4), self.big) << 32)
                                       | cap32(b + o + 4 + (4 if self.big else 0), self.big))
            o += 4 + ((length + 3) & ~3)
        # An interface of a link type the decoder does not know is kept: its packets are
        # indexed and classified as malformed (unsupported_linktype), the others read.
        self.n_ifaces += 1
        return CAPERR_NONE

    cdef uint32_t _scan_pcapng(self, int64_t* offsets, uint32_t* lengths, uint32_t* wire,
                               uint64_t* ts, uint16_t* lt, uint32_t cap) noexcept nogil:
        cdef uint32_t n = 0, btype, total, iface, caplen, hdr
        cdef uint64_t units
        cdef const uint8_t* b
        cdef int err
        while n < cap and self.pos < self.size:
            if self.size - self.pos < 12:
                self._fail(CAPERR_TRUNCATED, self.pos)
                break
            b = self.base + self.pos
            btype = cap32(b, 0)
            if btype == 0x0A0D0D0A:
                if self.size - self.pos < 28:
                    self._fail(CAPERR_TRUNCATED, self.pos)
                    break
                if cap32(b + 8, 0) == 0x1A2B3C4D:
                    self.big = 0
                elif cap32(b + 8, 1) == 0x1A2B3C4D:
                    self.big = 1
                else:
                    self._fail(CAPERR_BAD_MAGIC, self.pos + 8)
                    break
            elif not self.in_section:
                self._fail(CAPERR_NO_SECTION, self.pos)
                break
            else:
                btype = cap32(b, self.big)
            total = cap32(b + 4, self.big)
            if total < 12 or total & 3:
                self._fail(CAPERR_BLOCK_LENGTH, self.pos)
                break
            if total > self.size - self.pos:
                self._fail(CAPERR_TRUNCATED, self.pos)
                break
            if cap32(b + total - 4, self.big) != total:
                self._fail(CAPERR_TRAILER, self.pos + total - 4)
                break
            err = CAPERR_NONE
            if btype == 0x0A0D0D0A:
                err = self._section_header(b, total)
            elif btype == 1:
                err = self._interface(b, total)
            elif btype == 6 or btype == 2 or btype == 3:
                if btype == 3:
                    hdr = 12
                    iface = 0
                else:
                    hdr = 28
                    iface = cap16(b + 8, self.big) if btype == 2 else cap32(b + 8, self.big)
                if total < hdr + 4:
                    err = CAPERR_BLOCK_LENGTH
                elif iface >= self.n_ifaces:
                    err = CAPERR_BAD_INTERFACE
                else:
                    if btype == 3:
                        # A simple packet's data is padded: its captured length is the
                        # original length cut at interface 0's snap length.
                        wire[n] = cap32(b + 8, self.big)
                        caplen = wire[n]
                        if self.ifaces[0].snaplen and caplen > self.ifaces[0].snaplen:
                            caplen = self.ifaces[0].snaplen
                        if caplen > total - 16:
                            caplen = total - 16
                        ts[n] = self.last_ts
                    else:
                        caplen = cap32(b + 20, self.big)
                        wire[n] = cap32(b + 24, self.big)
                        units = (<uint64_t>cap32(b + 12, self.big) << 32) | cap32(b + 16, self.big)
                        ts[n] = units_to_ns(units, &self.ifaces[iface])
                        self.last_ts = ts[n]
                    if caplen > total - hdr - 4:
                        err = CAPERR_BAD_LENGTH
                    else:
                        offsets[n] = self.pos + hdr
                        lengths[n] = caplen
                        lt[n] = <uint16_t>self.ifaces[iface].linktype
                        n += 1
            if err != CAPERR_NONE:
                self._fail(err, self.pos)
                break
            self.pos += total
        return n
