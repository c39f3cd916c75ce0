# Clinical rules: HL7 over MLLP and DICOM, judged on a flow's first payload.
#
# A rule may require, of the first payload its initiator sends, an HL7 message header whose
# MSH-9 (message type), MSH-3 (sending application) and MSH-5 (receiving application) are
# among the values it lists, or a DICOM A-ASSOCIATE-RQ whose calling and called AE titles
# and proposed abstract syntaxes (SOP classes, from the services listed) are. One bounded
# pass over that one segment, no copy beyond a few short fields; a field that is not in the
# segment counts as not matching (docs/policy.md, "Clinical rules").

cdef inline bint clin_value_ok(const policy_t* pol, uint16_t rule, uint8_t field,
                               const uint8_t* v, uint32_t n) noexcept nogil:
    """Whether `v` is among the rule's values for `field` (exact; prefixes for the _PREFIX
    fields)."""
    cdef uint32_t i
    cdef const clin_t* e
    for i in range(pol.n_clin):
        e = &pol.clin[i]
        if e.rule != rule:
            continue
        if e.field == field and n == e.len and memcmp(v, e.text, n) == 0:
            return 1
        if field == CF_DICOM_SOP and e.field == CF_DICOM_SOP_PREFIX:
            if n > e.len and memcmp(v, e.text, e.len) == 0:
                return 1
        if field == CF_HL7_TYPE and e.field == CF_HL7_TYPE_PREFIX:
            # "ORU^*" takes "ORU" and "ORU^<anything>"
            if (n == e.len - 1 and memcmp(v, e.text, n) == 0) or (
                    n > e.len - 1 and memcmp(v, e.text, e.len) == 0):
                return 1
    return 0


cdef inline bint printable(const uint8_t* v, uint32_t n) noexcept nogil:
    cdef uint32_t i
    for i in range(n):
        if v[i] < 0x20 or v[i] > 0x7E:
            return 0
    return 1


cdef inline uint8_t hl7_judge(const policy_t* pol, uint16_t rule, uint16_t fields,
                              const uint8_t* p, uint32_t n) noexcept nogil:
    """DETAIL_* of the first field of an MLLP-framed MSH that breaks the rule, or 0."""
    cdef uint32_t i = 0, start, fld = 2, comp_n = 0
    cdef uint32_t s3 = 0, e3 = 0, s5 = 0, e5 = 0, s9 = 0, e9 = 0
    cdef uint8_t sep, comp, b
    cdef uint8_t mtype[CLIN_TEXT]
    cdef uint32_t mlen = 0
    cdef bint ended = 0
    if n > 0 and p[0] == 0x0B:                # MLLP start block
        i = 1
    if n < i + 8 or p[i] != 0x4D or p[i + 1] != 0x53 or p[i + 2] != 0x48:   # "MSH"
        return DETAIL_HL7_NO_MSH
    sep = p[i + 3]
    comp = p[i + 4]
    if (sep < 0x21 or sep > 0x7E or comp < 0x21 or comp > 0x7E or sep == comp
            or (sep >= 0x30 and sep <= 0x39) or ((sep | 0x20) >= 0x61 and (sep | 0x20) <= 0x7A)):
        return DETAIL_HL7_NO_MSH              # odd encoding characters
    i += 4
    start = i
    # Fields from MSH-2 on, up to the segment's end (CR; LF from sloppy senders).
    while i <= n:
        b = p[i] if i < n else 0
        if i == n or b == sep or b == 0x0D or b == 0x0A:
            if fld == 3:
                s3, e3 = start, i
            elif fld == 5:
                s5, e5 = start, i
            elif fld == 9:
                s9, e9 = start, i
                ended = i < n
                break
            if i == n or b != sep:
                break                         # the segment ended before MSH-9
            fld += 1
            start = i + 1
        i += 1
    if not ended:
        return DETAIL_HL7_NO_MSH
    if fields & (1 << CF_HL7_SENDING):
        i = s3
        while i < e3 and p[i] != comp:
            i += 1
        if not printable(p + s3, i - s3) or not clin_value_ok(pol, rule, CF_HL7_SENDING,
                                                              p + s3, i - s3):
            return DETAIL_HL7_SENDING
    if fields & (1 << CF_HL7_RECEIVING):
        i = s5
        while i < e5 and p[i] != comp:
            i += 1
        if not printable(p + s5, i - s5) or not clin_value_ok(pol, rule, CF_HL7_RECEIVING,
                                                              p + s5, i - s5):
            return DETAIL_HL7_RECEIVING
    if fields & ((1 << CF_HL7_TYPE) | (1 << CF_HL7_TYPE_PREFIX)):
        # MSH-9's message code and trigger event, as "ORU^R01" whatever the separator.
        for i in range(s9, e9):
            b = p[i]
            if b == comp:
                comp_n += 1
                if comp_n == 2:
                    break
                b = 0x5E
            if mlen >= CLIN_TEXT:
                return DETAIL_HL7_TYPE
            mtype[mlen] = b
            mlen += 1
        if not printable(mtype, mlen) or not clin_value_ok(pol, rule, CF_HL7_TYPE, mtype, mlen):
            return DETAIL_HL7_TYPE
    return DETAIL_NONE


cdef inline uint32_t ae_trim(const uint8_t* v, uint32_t* start) noexcept nogil:
    """An AE title field (16 bytes, space padded) without its leading and trailing spaces."""
    cdef uint32_t s = 0, e = 16
    while s < e and v[s] == 0x20:
        s += 1
    while e > s and (v[e - 1] == 0x20 or v[e - 1] == 0):
        e -= 1
    start[0] = s
    return e - s


cdef inline uint8_t dicom_judge(const policy_t* pol, uint16_t rule, uint16_t fields,
                                const uint8_t* p, uint32_t n) noexcept nogil:
    """DETAIL_* of the first field of an A-ASSOCIATE-RQ that breaks the rule, or 0."""
    cdef uint32_t pdu_end, off, item_end, sub, sub_end, ulen, s, l
    cdef uint8_t itype
    cdef bint whole
    if n < 74 or p[0] != 0x01 or rd16(p + 6) != 1:
        return DETAIL_DICOM_NOT_ASSOCIATE     # PDU type 1, protocol version 1
    pdu_end = 6 + rd32(p + 2)
    if pdu_end < 74 or rd32(p + 2) > 1048576:
        return DETAIL_DICOM_NOT_ASSOCIATE
    if fields & (1 << CF_DICOM_CALLING):
        l = ae_trim(p + 26, &s)
        if (l == 0 or not printable(p + 26 + s, l)
                or not clin_value_ok(pol, rule, CF_DICOM_CALLING, p + 26 + s, l)):
            return DETAIL_DICOM_CALLING
    if fields & (1 << CF_DICOM_CALLED):
        l = ae_trim(p + 10, &s)
        if (l == 0 or not printable(p + 10 + s, l)
                or not clin_value_ok(pol, rule, CF_DICOM_CALLED, p + 10 + s, l)):
            return DETAIL_DICOM_CALLED
    if not fields & ((1 << CF_DICOM_SOP) | (1 << CF_DICOM_SOP_PREFIX)):
        return DETAIL_NONE
    # Every presentation context's abstract syntax must be a SOP class the services allow;
    # a PDU longer than this segment cannot be checked whole, and is not taken on trust.
    whole = pdu_end <= n
    if not whole:
        return DETAIL_DICOM_SERVICE
    off = 74
    while off + 4 <= pdu_end:
        itype = p[off]
        item_end = off + 4 + rd16(p + off + 2)
        if item_end > pdu_end:
            return DETAIL_DICOM_NOT_ASSOCIATE
        if itype == 0x20:
            sub = off + 8                     # item header, context id, three reserved
            while sub + 4 <= item_end:
                sub_end = sub + 4 + rd16(p + sub + 2)
                if sub_end > item_end:
                    return DETAIL_DICOM_NOT_ASSOCIATE
                if p[sub] == 0x30:
                    ulen = sub_end - sub - 4
                    while ulen and (p[sub + 4 + ulen - 1] == 0 or p[sub + 4 + ulen - 1] == 0x20):
                        ulen -= 1
                    if (ulen == 0 or not printable(p + sub + 4, ulen)
                            or not clin_value_ok(pol, rule, CF_DICOM_SOP, p + sub + 4, ulen)):
                        return DETAIL_DICOM_SERVICE
                sub = sub_end
        off = item_end
    return DETAIL_NONE
