# The per-packet path of Classifier.classify, included by core.pyx: the batch loop, decode
# errors, device upkeep and sampling, L2 frames, and IP packets against the flow table.
# Each function takes the classifier as its first argument, as compact.pxi's do; plain
# IPv4 TCP/UDP hits of known flows never come here (compact.pxi).

cdef void classify_batch(Classifier self, const uint8_t* buf, Py_ssize_t buflen,
                         const int64_t* offsets, const uint32_t* lengths, const uint64_t* ts,
                         const uint16_t* linktypes, uint8_t* verdicts, uint8_t* reasons,
                         uint16_t* rules, uint8_t* samples, const uint8_t* hints, Py_ssize_t n,
                         const policy_t* pol) noexcept nogil:
    cdef Py_ssize_t i
    cdef pkt_t k
    cdef int r
    cdef uint32_t length
    cdef uint8_t* sample = NULL      # this packet's dissection mark, when marks are asked for
    cdef bint compact = self.compact and WARDTAP_COMPACT_OK
    # Counted in registers and stored once a batch: through the output pointers the compiler
    # must assume any store may change the classifier's fields (-fno-strict-aliasing).
    cdef uint64_t packets = self.st.packets, nbytes = 0, now = self.now_ns
    cdef uint64_t hits = 0, hits_allowed = 0
    if self.start_ns == 0:
        self.start_ns = ts[0]     # when the classifier started watching (capture time)
    self.batch_hints = hints      # read at flow starts only (_start_flow)
    self.batch_first = self.st.packets
    for i in range(n):
        if i + PREFETCH_AHEAD < n:
            WARDTAP_PREFETCH_AT(buf, offsets[i + PREFETCH_AHEAD])
        length = lengths[i]
        if samples != NULL:
            sample = &samples[i]
            sample[0] = 0
        packets += 1
        nbytes += length
        if not packet_in_buffer(offsets[i], length, buflen):
            r = R_BAD_OFFSET
        else:
            if ts[i] > now:
                now = ts[i]
            if (compact and linktypes[i] == LINKTYPE_ETHERNET
                    and compact_hit(self, buf + offsets[i], length, ts[i],
                                    sample,
                                    &verdicts[i], &reasons[i], &rules[i])):
                hits += 1
                hits_allowed += verdicts[i] == VERDICT_ALLOW
                continue
            r = decode_packet(buf + offsets[i], length, linktypes[i], &k)
        self.st.packets = packets     # the general path reads both: events' packet numbers,
        self.now_ns = now             # lookups' idle checks
        if r != R_RULE:
            packet_malformed(self, &k, r, ts[i], i)
            verdicts[i] = VERDICT_MALFORMED
            reasons[i] = r
            rules[i] = NO_RULE
            continue
        if k.l3 == L3_IPV4 or k.l3 == L3_IPV6:
            ip_packet(self, &k, buf + offsets[i], length, ts[i], pol, &verdicts[i], &reasons[i],
                      &rules[i], sample)
        else:
            l2_packet(self, &k, length, ts[i], pol, &verdicts[i], &reasons[i],
                      sample)
            rules[i] = NO_RULE
        if verdicts[i] == VERDICT_ALLOW:
            self.st.allowed += 1
        else:
            self.st.denied += 1
        self.st.reasons[reasons[i]] += 1
    self.st.packets = packets
    self.st.bytes += nbytes
    self.now_ns = now
    self.st.compact += hits
    self.st.allowed += hits_allowed
    self.st.denied += hits - hits_allowed
    self.batch_hints = NULL
    sweep_idle(self, self.now_ns)

cdef inline bint packet_in_buffer(int64_t offset, uint32_t length, Py_ssize_t buflen
                                  ) noexcept nogil:
    """0 <= offset and offset + length <= buflen, in two compares: a negative offset is a
    huge unsigned one. Checked per packet, with loads the loop makes anyway; a branch-free
    pass over the whole batch first cost more (14 instructions a packet on x86-64, which
    has no 64-bit vector compare before SSE4.2)."""
    return length <= buflen and <uint64_t>offset <= <uint64_t>(buflen - length)

cdef void packet_malformed(Classifier self, const pkt_t* k, int reason, uint64_t ts,
                           Py_ssize_t i) noexcept nogil:
    cdef event_t* e
    self.st.malformed += 1
    self.st.reasons[reason] += 1
    e = event_slot(self, EV_MALFORMED)
    if e != NULL:
        e.type = EV_MALFORMED
        e.reason = reason
        e.verdict = VERDICT_MALFORMED
        e.ts_ns = ts
        e.packet = self.st.packets - 1
        e.device = NO_DEVICE
        e.peer_device = NO_DEVICE
        e.rule = NO_RULE
        if reason != R_BAD_OFFSET and reason != R_LINKTYPE and k.has_mac:
            memcpy(e.smac, k.src_mac, 6)
            e.has_mac = k.has_mac

cdef uint32_t touch_device(Classifier self, const pkt_t* k, uint64_t ts) noexcept nogil:
    """Device of the packet's sender, announcing it when new."""
    cdef bint created
    cdef uint32_t d = device_lookup(self, k, ts, &created)
    cdef event_t* e
    if d == NO_DEVICE:
        return d
    device_learn_ip(&self.devices[d], k)
    if k.has_mac == 1 and (k.l3 == L3_IPV4 or k.l3 == L3_IPV6):
        address_learn(self, k.src, d)     # this link will not tell its MAC to its peers
    if created:
        e = event_slot(self, EV_NEW_DEVICE)
        if e != NULL:
            e.type = EV_NEW_DEVICE
            e.ts_ns = ts
            e.packet = self.st.packets - 1
            e.device = d
            e.peer_device = NO_DEVICE
            e.rule = NO_RULE
            memcpy(e.smac, k.src_mac, 6)
            e.has_mac = k.has_mac
            if k.l3 != L3_NONE:
                memcpy(e.src, k.src, 16)
            e.l3 = k.l3
            e.vlan = k.vlan
    return d

cdef bint take_sample(Classifier self, uint32_t dev, uint64_t ts) noexcept nogil:
    """Spend one unit of the global and the device's dissection budget, if any is left."""
    cdef device_t* d
    cdef uint32_t window
    if ts - self.sample_global_start >= 1000000000 or ts < self.sample_global_start:
        self.sample_global_start = ts
        self.sample_global_count = 0
    if self.sample_global_count >= self.sample_global_budget:
        self.st.samples_over_budget += 1
        return 0
    if dev != NO_DEVICE:
        d = &self.devices[dev]
        window = <uint32_t>(ts // self.sample_device_window_ns)
        if d.sample_window != window:
            d.sample_window = window
            d.samples = 0
        if d.samples >= self.sample_device_budget:
            self.st.samples_over_budget += 1
            return 0
        d.samples += 1
    self.sample_global_count += 1
    self.st.samples += 1
    return 1

cdef void l2_packet(Classifier self, const pkt_t* k, uint32_t length, uint64_t ts,
                    const policy_t* pol, uint8_t* verdict, uint8_t* reason,
                    uint8_t* sample) noexcept nogil:
    cdef uint32_t d = touch_device(self, k, ts)
    cdef uint8_t action = ACTION_ALLOW
    if d != NO_DEVICE:
        self.devices[d].pkts_tx += 1
        self.devices[d].bytes_tx += length
        self.devices[d].last_ns = ts
    if sample != NULL and k.discovery:
        sample[0] = take_sample(self, d, ts)
    reason[0] = R_ARP if k.l3 == L3_ARP else R_NON_IP
    if pol != NULL and self.mode != MODE_LEARN:
        action = pol.arp if k.l3 == L3_ARP else pol.non_ip
    else:
        reason[0] = R_NO_POLICY
    verdict[0] = VERDICT_ALLOW if action == ACTION_ALLOW else VERDICT_DENY

cdef void ip_packet(Classifier self, const pkt_t* k, const uint8_t* p, uint32_t length,
                    uint64_t ts, const policy_t* pol, uint8_t* verdict, uint8_t* reason,
                    uint16_t* rule, uint8_t* sample) noexcept nogil:
    cdef flow_key_t key
    cdef bint swapped, created, from_initiator
    cdef flow_t* f
    cdef uint32_t role, slot
    cdef uint64_t fh
    cdef uint32_t plen
    cdef int settle
    if k.frag == FRAG_LATER:
        fh = frag_hash(k, self.seed)
        slot = fh & self.frag_mask
        f = &self.flows[self.frag_flows[slot]]
        if self.frag_keys[slot] == fh and f.id == self.frag_flow_ids[slot]:
            self.st.fragments_attributed += 1
            verdict[0] = f.verdict
            reason[0] = R_FRAGMENT
            rule[0] = f.rule
            return
        self.st.fragments_unmatched += 1
        reason[0] = R_FRAGMENT_UNMATCHED
        rule[0] = NO_RULE
        if pol == NULL or self.mode == MODE_LEARN or pol.fragment_unmatched == ACTION_ALLOW:
            verdict[0] = VERDICT_ALLOW
        else:
            verdict[0] = VERDICT_DENY
        return
    if k.inner_valid:
        f = related_flow(self, k)
        if f != NULL:
            # An ICMP error about a known flow (port unreachable, TTL exceeded, too
            # big) shares that flow's verdict instead of being a flow of its own.
            f.last_ns = ts
            verdict[0] = f.verdict
            reason[0] = R_RELATED
            rule[0] = f.rule
            return
    swapped = make_key(k, &key)
    f = flow_find_or_add(self, &key, ts, &created)
    if not created and f.state == FLOW_CLOSING and k.proto == 6 and (k.tcp_flags & 0x12) == 0x02:
        # A new SYN on a closed connection's ports: a new flow in the same slot.
        memset(f, 0, sizeof(flow_t))
        f.key = key
        created = 1
    from_initiator = swapped != f.init_is_a
    settle = 0
    if not created and (k.answer | f.pending):
        # Rare: a packet with a say (SYN, DNS/NTP/DHCP) or a flow waiting for a side.
        created = heed(self, f, k, &key, swapped, from_initiator, ts, &settle)
    if created:
        start_flow(self, f, k, swapped, ts, pol)
        from_initiator = swapped != f.init_is_a
    role = 0 if from_initiator else 1
    f.pkts[role] += 1
    f.bytes[role] += length
    f.last_ns = ts
    if f.dev[role] == NO_DEVICE and not created:
        f.dev[role] = touch_device(self, k, ts)
        if f.dev[role] != NO_DEVICE:
            self.devices[f.dev[role]].flows += 1
            # It was not a device yet when this flow's earlier packets reached it.
            self.devices[f.dev[role]].pkts_rx += f.pkts[1 - role]
            self.devices[f.dev[role]].bytes_rx += f.bytes[1 - role]
            if role == 0 and f.verdict == VERDICT_DENY:
                self.devices[f.dev[role]].violations += 1
    if f.dev[role] != NO_DEVICE:
        self.devices[f.dev[role]].pkts_tx += 1
        self.devices[f.dev[role]].bytes_tx += length
        self.devices[f.dev[role]].last_ns = ts
    if f.dev[1 - role] != NO_DEVICE:
        self.devices[f.dev[1 - role]].pkts_rx += 1
        self.devices[f.dev[1 - role]].bytes_rx += length
    if settle:
        # The pending flow's unidentified side speaks, or has spoken in another flow: its
        # device (touched above, or found by address) knows its MAC. Decide now.
        if f.dev[1 - role] == NO_DEVICE and settle == 2:
            f.dev[1 - role] = device_at(self, k.dst)
            self.devices[f.dev[1 - role]].flows += 1
        settle_pending(self, f, pol, ts)
    if k.proto == 6 and (k.tcp_flags & 0x05):
        tcp_close(self, f, k.tcp_flags, role, ts)
    if sample != NULL and (f.sampled[role] < self.sample_per_flow or discovery_port(k)):
        if take_sample(self, f.dev[role], ts):
            sample[0] = 1
            if f.sampled[role] < self.sample_per_flow:
                f.sampled[role] += 1
        elif f.sampled[role] < self.sample_per_flow:
            # Over budget: this direction of this flow stops asking, so a device past
            # its budget costs one check per flow, not one per packet.
            f.sampled[role] = 255
    if k.frag == FRAG_FIRST:
        fh = frag_hash(k, self.seed)
        self.frag_keys[fh & self.frag_mask] = fh
        self.frag_flows[fh & self.frag_mask] = <uint32_t>(f - self.flows)
        self.frag_flow_ids[fh & self.frag_mask] = f.id
    if (k.answer == ANSWER_REPLY and k.sport == 53 and k.proto == 17 and pol != NULL
            and pol.n_names and f.verdict == VERDICT_ALLOW):
        # A DNS answer let through under a policy with names: its bindings, before
        # the client can use them.
        plen = rd16(p + k.l4_off + 4)
        if k.l4_off + plen > k.l4_end:
            plen = k.l4_end - k.l4_off
        if k.l4_off + plen > length:
            plen = length - k.l4_off
        if plen > 8:
            dns_learn(self, pol, p + k.l4_off + 8, plen - 8, ts)
    if f.watch:
        reason[0] = watched_payload(self, f, k, p, role, ts, pol)
    else:
        reason[0] = f.reason
    verdict[0] = f.verdict
    rule[0] = f.rule

cdef void event_macs(Classifier self, event_t* e, const pkt_t* k,
                     bint sender_first) noexcept nogil:
    e.has_mac = k.has_mac
    if sender_first:
        memcpy(e.smac, k.src_mac, 6)
        memcpy(e.dmac, k.dst_mac, 6)
    else:
        memcpy(e.smac, k.dst_mac, 6)
        memcpy(e.dmac, k.src_mac, 6)

cdef void tcp_close(Classifier self, flow_t* f, uint8_t flags, uint32_t role,
                    uint64_t ts) noexcept nogil:
    if flags & 0x04:
        end_flow(self, f, END_RST, ts)
        f.state = FLOW_CLOSING
        return
    f.fin |= 1 << role
    if f.fin == 3:
        end_flow(self, f, END_FIN, ts)
        f.state = FLOW_CLOSING
