# Policy tables: which groups an endpoint is in, and the verdict for a flow's first packet.
# Built once by CompiledPolicy from Python; read here without the GIL.

cdef inline bint prefix_match(const uint8_t* addr, const uint8_t* net, uint8_t bits) noexcept nogil:
    cdef uint8_t whole = bits >> 3
    cdef uint8_t rest = bits & 7
    cdef uint8_t mask
    if memcmp(addr, net, whole) != 0:
        return 0
    if rest == 0:
        return 1
    mask = <uint8_t>(0xFF << (8 - rest))
    return (addr[whole] & mask) == (net[whole] & mask)


cdef inline void groups_of(const policy_t* pol, const uint8_t* mac, bint has_mac,
                           const uint8_t* ip, bint has_ip, uint16_t vlan,
                           uint64_t* out, bint any_mac=0) noexcept nogil:
    """Bitset of the groups an endpoint belongs to; bit 0 ("any") is always set. With
    `any_mac`, the groups it could be in whatever its (unknown) MAC: every MAC and OUI
    selector matches."""
    cdef uint64_t vlan_ok[GROUP_WORDS]
    cdef uint32_t i, w
    cdef const selector_t* s
    for w in range(GROUP_WORDS):
        out[w] = pol.open_groups[w]
        vlan_ok[w] = ~pol.vlan_groups[w]
    for i in range(pol.n_selectors):
        s = &pol.selectors[i]
        if s.kind == SEL_NET:
            if not has_ip or not prefix_match(ip, s.value, s.prefix):
                continue
        elif s.kind == SEL_MAC:
            if not any_mac and (not has_mac or memcmp(mac, s.value, 6) != 0):
                continue
        elif s.kind == SEL_OUI:
            if not any_mac and (not has_mac or memcmp(mac, s.value, 3) != 0):
                continue
        elif s.kind == SEL_VLAN:
            if vlan == (<uint16_t>s.value[0] << 8 | s.value[1]):
                vlan_ok[s.group >> 6] |= (<uint64_t>1) << (s.group & 63)
            continue
        else:
            continue
        out[s.group >> 6] |= (<uint64_t>1) << (s.group & 63)
    for w in range(GROUP_WORDS):
        out[w] &= vlan_ok[w]
    out[0] |= 1


cdef inline bint intersects(const uint64_t* a, const uint64_t* b) noexcept nogil:
    return ((a[0] & b[0]) | (a[1] & b[1]) | (a[2] & b[2]) | (a[3] & b[3])) != 0


cdef inline uint8_t evaluate(const policy_t* pol, const uint64_t* gi, const uint64_t* gr,
                             uint8_t proto, uint16_t port, uint16_t* rule_out,
                             uint16_t* nearest_out) noexcept nogil:
    """Verdict reason for a flow whose initiator is in groups `gi` and responder in `gr`.

    `port` is the responder's port (for ICMP the request's type). Returns R_RULE with
    *rule_out set, or the most specific reason no rule matched, with *nearest_out the rule
    that came closest (NO_RULE when no rule joins the two endpoints at all).
    """
    cdef uint32_t i
    cdef const rule_t* r
    cdef uint8_t best = R_NO_RULE
    cdef uint16_t nearest = NO_RULE
    cdef bint forward, reverse
    for i in range(pol.n_rules):
        r = &pol.rules[i]
        forward = intersects(r.src, gi) and intersects(r.dst, gr)
        reverse = intersects(r.src, gr) and intersects(r.dst, gi)
        if not forward and not (reverse and r.either):
            if reverse and (r.proto == 0 or r.proto == proto) and best < R_WRONG_INITIATOR:
                best = R_WRONG_INITIATOR
                nearest = r.rule
            continue
        if r.proto != 0 and r.proto != proto:
            if best < R_PROTO_NOT_ALLOWED:
                best = R_PROTO_NOT_ALLOWED
                nearest = r.rule
            continue
        if port < r.port_lo or port > r.port_hi:
            if best < R_PORT_NOT_ALLOWED:
                best = R_PORT_NOT_ALLOWED
                nearest = r.rule
            continue
        rule_out[0] = r.rule
        nearest_out[0] = NO_RULE
        return R_RULE
    rule_out[0] = NO_RULE
    nearest_out[0] = nearest
    return best


cdef enum:
    MAX_NAMES = 1024                  # DNS names over all groups of one policy
    MAX_CLINICAL = 1024               # HL7/DICOM values over all rules of one policy

cdef uint32_t _policy_serial = 0


cdef class CompiledPolicy:
    """A policy as C tables. Built by appliance.policy.model from a validated policy file.

    selectors: [(kind, group, value: bytes(16), prefix)], rules: [(src_groups: int bitset,
    dst_groups: int bitset, proto, port_lo, port_hi, either, rule_index)],
    vlan_groups / open_groups: int bitsets.
    names: [(text: bytes, suffix: bool, group)]: DNS names of groups (lower case, no final
    dot; `suffix` for `*.text`). ruleinfo: per source rule, (responder-side groups: int
    bitset, watch: WATCH_HL7/WATCH_DICOM/0, fields: bitset of CF_*). clinical: [(rule,
    field CF_*, text: bytes)]. name_ttl: (min, max) seconds a binding lives.
    """

    def __cinit__(self):
        memset(&self.pol, 0, sizeof(policy_t))

    def __init__(self, selectors, rules, vlan_groups, open_groups, *, arp=True,
                 non_ip=True, fragment_unmatched=False, generation=1, source=None,
                 names=(), ruleinfo=(), clinical=(), name_ttl=(30, 86400)):
        cdef uint32_t i, w
        cdef selector_t* s
        cdef rule_t* r
        cdef name_t* nm
        cdef ruleinfo_t* ri
        cdef clin_t* cl
        global _policy_serial
        self.source = source
        _policy_serial += 1
        self.pol.serial = _policy_serial
        if len(names) > MAX_NAMES or len(clinical) > MAX_CLINICAL:
            raise ValueError("too many names or clinical values")
        self.pol.names = <name_t*>calloc(max(1, len(names)), sizeof(name_t))
        self.pol.ruleinfo = <ruleinfo_t*>calloc(max(1, len(ruleinfo)), sizeof(ruleinfo_t))
        self.pol.clin = <clin_t*>calloc(max(1, len(clinical)), sizeof(clin_t))
        if self.pol.names == NULL or self.pol.ruleinfo == NULL or self.pol.clin == NULL:
            raise MemoryError()
        for i, (text, suffix, group) in enumerate(names):
            if not 0 < len(text) <= NAME_MAX or not 0 <= group < MAX_GROUPS:
                raise ValueError("name out of range")
            nm = &self.pol.names[i]
            memcpy(nm.text, <const char*>text, len(text))
            nm.len = len(text)
            nm.suffix = 1 if suffix else 0
            nm.group = group
        self.pol.n_names = len(names)
        for i, (ends, watch, fields) in enumerate(ruleinfo):
            ri = &self.pol.ruleinfo[i]
            for w in range(GROUP_WORDS):
                ri.ends[w] = (ends >> (64 * w)) & 0xFFFFFFFFFFFFFFFF
            ri.watch = watch
            ri.fields = fields
        self.pol.n_ruleinfo = len(ruleinfo)
        for i, (rule, field, text) in enumerate(clinical):
            if not 0 < len(text) <= CLIN_TEXT:
                raise ValueError("clinical value out of range")
            cl = &self.pol.clin[i]
            cl.rule = rule
            cl.field = field
            cl.len = len(text)
            memcpy(cl.text, <const char*>text, len(text))
        self.pol.n_clin = len(clinical)
        lo, hi = name_ttl
        if not 0 < lo <= hi:
            raise ValueError("name_ttl: 0 < min <= max")
        self.pol.ttl_min_ns = <uint64_t>(lo * 1000000000)
        self.pol.ttl_max_ns = <uint64_t>(hi * 1000000000)
        self.pol.selectors = <selector_t*>calloc(max(1, len(selectors)), sizeof(selector_t))
        self.pol.rules = <rule_t*>calloc(max(1, len(rules)), sizeof(rule_t))
        self.pol.vlan_groups = <uint64_t*>calloc(GROUP_WORDS, sizeof(uint64_t))
        self.pol.open_groups = <uint64_t*>calloc(GROUP_WORDS, sizeof(uint64_t))
        if (self.pol.selectors == NULL or self.pol.rules == NULL
                or self.pol.vlan_groups == NULL or self.pol.open_groups == NULL):
            raise MemoryError()
        for i, (kind, group, value, prefix) in enumerate(selectors):
            if not 0 <= group < MAX_GROUPS or len(value) != 16:
                raise ValueError("selector out of range")
            s = &self.pol.selectors[i]
            s.kind = kind
            s.group = group
            s.prefix = prefix
            memcpy(s.value, <const char*>value, 16)
        self.pol.n_selectors = len(selectors)
        for i, (src, dst, proto, lo, hi, either, index) in enumerate(rules):
            r = &self.pol.rules[i]
            for w in range(GROUP_WORDS):
                r.src[w] = (src >> (64 * w)) & 0xFFFFFFFFFFFFFFFF
                r.dst[w] = (dst >> (64 * w)) & 0xFFFFFFFFFFFFFFFF
            r.proto = proto
            r.port_lo = lo
            r.port_hi = hi
            r.either = either
            r.rule = index
        self.pol.n_rules = len(rules)
        for w in range(GROUP_WORDS):
            self.pol.vlan_groups[w] = (vlan_groups >> (64 * w)) & 0xFFFFFFFFFFFFFFFF
            self.pol.open_groups[w] = (open_groups >> (64 * w)) & 0xFFFFFFFFFFFFFFFF
        self.pol.arp = ACTION_ALLOW if arp else ACTION_DENY
        self.pol.non_ip = ACTION_ALLOW if non_ip else ACTION_DENY
        self.pol.fragment_unmatched = ACTION_ALLOW if fragment_unmatched else ACTION_DENY
        self.pol.generation = generation

    def __dealloc__(self):
        free(self.pol.selectors)
        free(self.pol.rules)
        free(self.pol.vlan_groups)
        free(self.pol.open_groups)
        free(self.pol.names)
        free(self.pol.ruleinfo)
        free(self.pol.clin)

    @property
    def generation(self):
        return self.pol.generation

    def name_groups(self, name: bytes):
        """Group bitset of the groups a DNS name (lower case, no final dot) is in."""
        cdef uint64_t out[GROUP_WORDS]
        memset(out, 0, sizeof(out))
        if 0 < len(name) <= NAME_MAX:
            name_groups(&self.pol, name, len(name), out)
        return sum(int(out[w]) << (64 * w) for w in range(GROUP_WORDS))

    def groups_of(self, mac: bytes, ip16: bytes, int vlan=0):
        """Group bitset of one endpoint (for tests and `policy test`)."""
        cdef uint64_t out[GROUP_WORDS]
        cdef bytes m = mac or bytes(6)
        cdef bytes a = ip16 or bytes(16)
        groups_of(&self.pol, m, mac is not None, a, ip16 is not None, vlan, out)
        return sum(int(out[w]) << (64 * w) for w in range(GROUP_WORDS))
