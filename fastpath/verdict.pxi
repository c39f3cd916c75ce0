# A flow's verdict, included by core.pyx: deciding it at its start (and again after a
# reload), turning a guessed initiator round when the other side speaks first, and judging
# the first payload of flows the policy watches (server names, HL7, DICOM).

cdef void decide_flow(Classifier self, flow_t* f, const policy_t* pol) noexcept nogil:
    """Verdict of an existing flow from what its slot and devices remember. A guessed
    initiator that the policy now allows only the other way round is turned round."""
    cdef uint64_t gi[GROUP_WORDS]
    cdef uint64_t gr[GROUP_WORDS]
    cdef const uint8_t* ip_i = <const uint8_t*>f.key.a
    cdef const uint8_t* ip_r = <const uint8_t*>f.key.b
    cdef const uint8_t* mac_i = ip_i
    cdef const uint8_t* mac_r = ip_r
    cdef bint has_i = 0, has_r = 0
    cdef uint16_t rule, nearest
    if not f.init_is_a:
        ip_i = <const uint8_t*>f.key.b
        ip_r = <const uint8_t*>f.key.a
    if f.dev[0] != NO_DEVICE and self.devices[f.dev[0]].has_mac:
        mac_i = self.devices[f.dev[0]].mac
        has_i = 1
    if f.dev[1] != NO_DEVICE and self.devices[f.dev[1]].has_mac:
        mac_r = self.devices[f.dev[1]].mac
        has_r = 1
    if pol == NULL or self.mode == MODE_LEARN:
        f.verdict = VERDICT_ALLOW
        f.reason = R_NO_POLICY
        f.rule = NO_RULE
        f.nearest = NO_RULE
        return
    groups_of(pol, mac_i, has_i, ip_i, 1, f.key.vlan, gi)
    groups_of(pol, mac_r, has_r, ip_r, 1, f.key.vlan, gr)
    if pol.n_names:
        # The bindings that held when the flow started (a flow allowed through a
        # binding stays allowed for its life, as far as the table remembers it).
        bind_groups(self, pol, ip_i, f.first_ns, gi)
        bind_groups(self, pol, ip_r, f.first_ns, gr)
    f.reason = evaluate(pol, gi, gr, f.key.proto, f.dport, &f.rule, &f.nearest)
    if f.reason != R_RULE and f.orient >= ORIENT_GUESSED and has_ports(f.key.proto):
        if evaluate(pol, gr, gi, f.key.proto, f.key.pb if not f.init_is_a else f.key.pa,
                    &rule, &nearest) == R_RULE:
            if f.fold:
                fold_flow(self, f)     # its pending counts are per direction
            flow_flip(f)
            f.orient = ORIENT_POLICY
            f.reason = R_RULE
            f.rule = rule
            f.nearest = NO_RULE
    if f.detail != DETAIL_NONE and f.reason == R_RULE:
        # Its first payload broke its rule; that payload is gone and is not judged again.
        f.reason = R_SERVER_NAME if f.detail == DETAIL_SERVER_NAME else R_CLINICAL
        f.nearest = f.rule
        f.rule = NO_RULE
    f.verdict = VERDICT_ALLOW if f.reason == R_RULE else VERDICT_DENY

cdef bint heed(Classifier self, flow_t* f, const pkt_t* k, const flow_key_t* key, bint swapped,
               bint from_initiator, uint64_t ts, int* settle) noexcept nogil:
    """An existing flow's packet that says who is who (k.answer), or a flow waiting for
    one side (f.pending). Returns 1 when the flow starts again from this packet: a
    guessed initiator it contradicts, or the receiver of an unsolicited answer speaking
    for itself. Sets *settle (1: the waited-for side sends this; 2: it has spoken in
    another flow) for a flow waiting for its receiver to be identified."""
    if k.answer == ANSWER_REPLY:
        # A SYN-ACK or a DNS/NTP/DHCP answer: its sender offers that port.
        service_learn(self, k.src, k.proto, k.sport)
    if f.state != FLOW_ACTIVE:
        return 0
    if f.pending & PENDING_RESTART:
        if not side_speaks(f.pending, swapped):
            return 0
    elif f.pending:
        if side_speaks(f.pending, swapped):
            settle[0] = 1
        elif k.has_mac == 1 and device_at(self, k.dst) != NO_DEVICE:
            settle[0] = 2
        return 0
    elif not (k.answer and f.orient >= ORIENT_GUESSED
              and contradicts(k, 0 if from_initiator else 1)):
        return 0
    self.st.flows_reoriented += 1
    end_flow(self, f, END_REORIENTED, ts)
    memset(f, 0, sizeof(flow_t))
    f.key = key[0]
    return 1

cdef void start_flow(Classifier self, flow_t* f, const pkt_t* k, bint swapped, uint64_t ts,
                     const policy_t* pol) noexcept nogil:
    cdef bint sender_first
    cdef uint8_t orient = orient_packet(self, k, &sender_first)
    cdef uint64_t gs[GROUP_WORDS]      # the sender's groups
    cdef uint64_t gd[GROUP_WORDS]      # the receiver's
    cdef uint64_t static_s[GROUP_WORDS]   # the same without name bindings
    cdef uint64_t static_d[GROUP_WORDS]
    cdef bint enforcing = pol != NULL and self.mode != MODE_LEARN
    cdef bint icmp = k.proto == 1 or k.proto == 58
    cdef uint8_t why = R_NO_POLICY
    cdef uint16_t rule = NO_RULE, nearest = NO_RULE, rule2, nearest2
    cdef event_t* e
    cdef uint32_t d
    cdef bint peer_created
    # What the kernel knows of this conversation (inline datapaths): read here, once per
    # flow, from the batch's hints (this packet is number st.packets - 1).
    cdef uint8_t hint = HINT_NONE
    if self.batch_hints != NULL:
        hint = self.batch_hints[self.st.packets - 1 - self.batch_first]
    if k.answer == ANSWER_REPLY:
        service_learn(self, k.src, k.proto, k.sport)      # a SYN-ACK, a DNS/NTP answer
    # The receiver, if it is a device already known (on links that carry only the
    # sender's MAC, found by its address): its MAC decides its groups.
    cdef uint32_t peer = device_lookup(self, k, ts, &peer_created, 1)
    cdef const uint8_t* rmac = k.dst_mac
    cdef bint rhas = k.has_mac == 2
    if k.has_mac == 1:
        peer = device_at(self, k.dst)
        if peer != NO_DEVICE and self.devices[peer].has_mac:
            rmac = self.devices[peer].mac
            rhas = 1
    if enforcing:
        groups_of(pol, k.src_mac, k.has_mac >= 1, k.src, 1, k.vlan, gs)
        groups_of(pol, rmac, rhas, k.dst, 1, k.vlan, gd)
        memcpy(static_s, gs, sizeof(gs))
        memcpy(static_d, gd, sizeof(gd))
        if pol.n_names:
            # Names: the groups of the names each address is bound to now.
            bind_groups(self, pol, k.src, ts, gs)
            bind_groups(self, pol, k.dst, ts, gd)
        why = decide_oriented(pol, gs, gd, k, sender_first, &rule, &nearest)
        if why != R_RULE and orient >= ORIENT_GUESSED:
            # Allowed the other way round only: that is the way it goes.
            if decide_oriented(pol, gs, gd, k, not sender_first, &rule2,
                               &nearest2) == R_RULE:
                sender_first = not sender_first
                orient = ORIENT_POLICY
                why = R_RULE
                rule = rule2
                nearest = NO_RULE
    if not sender_first and orient != ORIENT_ICMP and not answer_accepted(self, k, hint, ts):
        # It looks like an answer, but no request can have been missed: whoever sent it
        # started this conversation (never a hole for a packet that only looks right).
        sender_first = 1
        orient = ORIENT_UNSOLICITED
        f.pending = PENDING_RESTART | (PENDING_A if swapped else PENDING_B)
        self.st.unsolicited_answers += 1
        if enforcing:
            why = decide_oriented(pol, gs, gd, k, 1, &rule, &nearest)
            if why != R_RULE:
                why = R_UNSOLICITED
    if (enforcing and why != R_RULE and orient != ORIENT_UNSOLICITED and not rhas
            and k.has_mac == 1 and hint == HINT_KNOWN
            and could_be_allowed(pol, gs, k, sender_first, orient >= ORIENT_GUESSED)):
        # A conversation the kernel already carried, first met here from the side whose
        # MAC the link shows (inline, after a restart): the receiver is not identified
        # yet and its MAC may be what allows it. This packet passes; the flow is decided
        # when the receiver speaks (its next packet carries its MAC).
        why = R_PENDING
        rule = NO_RULE
        nearest = NO_RULE
        f.pending = PENDING_A if swapped else PENDING_B
    f.id = self.next_flow_id
    self.next_flow_id += 1
    f.first_ns = ts
    f.state = FLOW_ACTIVE
    f.orient = orient
    f.init_is_a = (not swapped) == sender_first
    f.timeout_class = timeout_class_of(k.proto)
    f.dev[0] = NO_DEVICE
    f.dev[1] = NO_DEVICE
    f.dport = responder_port(k, sender_first)
    self.st.flows_created += 1
    self.st.flows_active += 1
    d = touch_device(self, k, ts)
    f.dev[0 if sender_first else 1] = d
    if d != NO_DEVICE:
        self.devices[d].flows += 1
    # The receiving side, if it is a device already known, counts what it receives.
    f.dev[1 if sender_first else 0] = peer
    if peer != NO_DEVICE:
        self.devices[peer].flows += 1
    f.reason = why
    f.rule = rule
    f.nearest = nearest
    if enforcing:
        f.verdict = VERDICT_ALLOW if why == R_RULE or why == R_PENDING else VERDICT_DENY
        if why == R_RULE:
            f.watch = watch_for(self, f, pol, &static_d[0] if sender_first else &static_s[0])
            f.watch_left = WATCH_PACKETS
    else:
        f.verdict = VERDICT_ALLOW
    e = event_slot(self, EV_NEW_FLOW)
    if e != NULL:
        fill_flow_event(e, EV_NEW_FLOW, f, ts)
        e.reason = f.reason
        e.packet = self.st.packets - 1
        event_macs(self, e, k, sender_first)
        e.icmp_type = k.icmp_type if icmp else 0
        e.icmp_code = k.icmp_code if icmp else 0
        if icmp:
            e.icmp_type = f.dport
    if f.verdict == VERDICT_DENY:
        if sender_first and d != NO_DEVICE:
            self.devices[d].violations += 1
        e = event_slot(self, EV_VIOLATION)
        if e != NULL:
            fill_flow_event(e, EV_VIOLATION, f, ts)
            e.reason = f.reason
            e.packet = self.st.packets - 1
            event_macs(self, e, k, sender_first)
            if icmp:
                e.icmp_type = f.dport

cdef uint8_t watch_for(Classifier self, const flow_t* f, const policy_t* pol,
                       const uint64_t* static_r) noexcept nogil:
    """WATCH_* for a flow just allowed by f.rule: DNS to read, a first payload to judge
    (the rule's HL7/DICOM condition, or the SNI of a flow allowed through a binding)."""
    cdef const ruleinfo_t* ri
    if f.key.proto == 17 and f.dport == 53 and pol.n_names:
        return WATCH_DNS
    if f.key.proto != 6 or f.rule >= pol.n_ruleinfo:
        return WATCH_NONE
    ri = &pol.ruleinfo[f.rule]
    if not ri.watch and not (pol.n_names and not intersects(static_r, ri.ends)):
        return WATCH_NONE
    if f.orient != ORIENT_SYN:
        # Met after its start (a restart, a late tap): what it sends now is not its first
        # payload. It keeps its address verdict rather than being cut mid-conversation.
        self.st.payloads_missed += 1
        return WATCH_NONE
    return ri.watch if ri.watch else WATCH_TLS   # TLS: allowed only through a binding

cdef uint8_t watched_payload(Classifier self, flow_t* f, const pkt_t* k, const uint8_t* p,
                             uint32_t role, uint64_t ts, const policy_t* pol) noexcept nogil:
    """A packet of a watched flow: read or judge it. Returns the packet's reason:
    R_WATCHED while the flow stays watched (a verdict for this packet only), else the
    flow's reason, now final."""
    cdef uint32_t start, end, n
    cdef uint8_t w = f.watch, detail = DETAIL_NONE
    cdef uint8_t name[NAME_MAX + 1]
    cdef uint32_t name_len = 0
    cdef uint64_t g[GROUP_WORDS]
    cdef int r
    if f.verdict != VERDICT_ALLOW or pol == NULL or f.rule >= pol.n_ruleinfo:
        f.watch = WATCH_NONE          # decided otherwise since, or under no policy
        return f.reason
    if w == WATCH_DNS:
        return R_WATCHED
    n = 0
    if role == 0 and k.proto == 6 and k.frag != FRAG_LATER:
        start = k.l4_off + ((p[k.l4_off + 12] >> 4) << 2)
        end = k.l4_end                # within the frame (decode bounds it)
        n = end - start if end > start else 0
    if n == 0:
        if f.watch_left > 1:
            f.watch_left -= 1
            return R_WATCHED
        f.watch = WATCH_NONE
        if w != WATCH_TLS:
            flow_judged(self, f, R_CLINICAL, DETAIL_NO_PAYLOAD, ts)
        return f.reason
    f.watch = WATCH_NONE
    self.st.payloads_judged += 1
    if w == WATCH_TLS:
        r = tls_server_name(p + start, n, name, &name_len)
        if r < 0:
            self.st.payloads_unreadable += 1     # not TLS: no second signal to check
        elif r == 1:
            memset(g, 0, sizeof(g))
            name_groups(pol, name, name_len, g)
            if not intersects(g, pol.ruleinfo[f.rule].ends):
                detail = DETAIL_SERVER_NAME
                flow_judged(self, f, R_SERVER_NAME, detail, ts)
        return f.reason
    if w == WATCH_HL7:
        detail = hl7_judge(pol, f.rule, pol.ruleinfo[f.rule].fields, p + start, n)
        if detail == DETAIL_HL7_NO_MSH:
            self.st.payloads_unreadable += 1
    else:
        detail = dicom_judge(pol, f.rule, pol.ruleinfo[f.rule].fields, p + start, n)
        if detail == DETAIL_DICOM_NOT_ASSOCIATE:
            self.st.payloads_unreadable += 1
    if detail != DETAIL_NONE:
        flow_judged(self, f, R_CLINICAL, detail, ts)
    return f.reason

cdef void flow_judged(Classifier self, flow_t* f, uint8_t why, uint8_t detail,
                      uint64_t ts) noexcept nogil:
    """A watched flow's first payload broke its rule: the flow is denied from here on,
    and the violation names the rule and the field."""
    cdef event_t* e
    f.verdict = VERDICT_DENY
    f.reason = why
    f.detail = detail
    f.nearest = f.rule
    f.rule = NO_RULE
    if f.dev[0] != NO_DEVICE:
        self.devices[f.dev[0]].violations += 1
    e = event_slot(self, EV_VIOLATION)
    if e != NULL:
        fill_flow_event(e, EV_VIOLATION, f, ts)
        e.reason = why
        e.detail = detail
        e.packet = self.st.packets - 1

cdef void settle_pending(Classifier self, flow_t* f, const policy_t* pol,
                         uint64_t ts) noexcept nogil:
    """Decide a pending flow now that both sides are known (their devices' MACs)."""
    cdef event_t* e
    f.pending = PENDING_NONE
    decide_flow(self, f, pol)
    if f.verdict == VERDICT_DENY:
        if f.dev[0] != NO_DEVICE:
            self.devices[f.dev[0]].violations += 1
        e = event_slot(self, EV_VIOLATION)
        if e != NULL:
            fill_flow_event(e, EV_VIOLATION, f, ts)
            e.reason = f.reason
            e.packet = self.st.packets - 1
