"""Property tests of the fast path on hostile input (hypothesis), and the atheris target.

Random bytes under every link type and mutated valid frames (bits flipped, bytes set,
inserted, deleted, length fields set to edge values, truncated) go through decode_batch and
Classifier.classify. Properties: no crash; verdict always allow/deny/malformed; malformed
exactly when decode_batch gives a malformed reason, and with that reason; the counters add
up. A crash in the C extension kills the test process: that is the failure signal.
"""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastpath
from demoward import frames as P

ROOT = Path(__file__).resolve().parents[2]
FUZZ_TARGET = ROOT / "tests" / "fuzz" / "fuzz_decode.py"

LINKTYPES = list(fastpath.LINKTYPES)
M1, M2, OUI_MAC = "02:11:22:33:44:55", "02:66:77:88:99:aa", "00:1a:2b:00:00:01"
A4, B4, A6, B6 = "10.4.1.10", "10.20.0.15", "fd00:4::10", "fd00:20::15"
SETTINGS = dict(deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def seed_frames() -> list[tuple[int, bytes]]:
    """Valid frames of every decode path, (linktype, frame)."""
    u4, u6 = P.udp(1500, 1000, b"x" * 8, src=A4, dst=B4), P.udp(1500, 1000, b"y" * 8)
    e4 = lambda proto, pl, **kw: P.ether(M2, OUI_MAC, P.ETH_IPV4,  # noqa: E731
                                         P.ipv4(A4, B4, proto, pl, **kw))
    e6 = lambda nh, pl, **kw: P.ether(M2, M1, P.ETH_IPV6, P.ipv6(A6, B6, nh, pl, **kw))  # noqa: E731
    return [
        (1, e4(6, P.tcp(40000, 443, "S", options=P.tcp_syn_options()))),
        (1, e4(6, P.tcp(443, 40000, "SA"))),
        (1, e4(6, P.tcp(40000, 443, "FA"))),
        (1, e4(6, P.tcp(40000, 443, "R"))),
        (1, e4(17, u4, options=b"\x94\x04\x00\x00")),
        (1, e4(1, P.icmp(8, 0, 7, 1, b"ping"))),
        (1, e4(1, P.icmp(0, 0, 7, 1, b"pong"))),
        (1, e4(1, P.icmp(3, 3, payload=P.ipv4(B4, A4, 17, u4)))),
        (1, e4(132, P.sctp(2905, 2905, P.sctp_chunk(1, 0, bytes(16))))),
        (1, e4(17, u4, ident=5, more_fragments=True)),
        (1, e4(17, b"z" * 16, ident=5, frag_offset=2)),
        (1, e4(47, P.gre(0x0800, P.ipv4("1.1.1.1", "2.2.2.2", 6, P.tcp(1, 2))))),
        (1, e4(4, P.ipv4("1.1.1.1", "2.2.2.2", 17, P.udp(1, 2, b"")))),
        (1, P.ether(M2, M1, P.ETH_IPV4, P.ipv4(A4, B4, 6, P.tcp(5, 443)), vlans=[104])),
        (1, P.ether(M2, M1, P.ETH_IPV6, P.ipv6(A6, B6, 17, u6), vlans=[200, 104], qinq=True)),
        (1, e6(6, P.tcp(50000, 443, "S"))),
        (1, e6(58, P.icmpv6(128, 0, struct.pack("!HH", 1, 1)))),
        (1, e6(58, P.icmpv6(135, 0, P.nd_solicit(B6, M1)))),
        (1, e6(17, u6, ext_headers=[P.hop_by_hop(P.router_alert()), P.routing([B6]),
                                    P.fragment_header(0, True, 9), P.dest_options()])),
        (1, e6(17, b"w" * 16, ext_headers=[P.fragment_header(3, False, 9)])),
        (1, e6(17, u6, ext_headers=[(51, struct.pack("!BBHII", 0, 4, 0, 1, 1) + bytes(12))])),
        (1, e6(132, P.sctp(1, 2), ext_headers=[P.dest_options()])),
        (1, P.ether(P.BROADCAST_MAC, M1, P.ETH_ARP, P.arp(1, M1, A4, M2, B4), pad=True)),
        (1, P.ether("01:80:c2:00:00:0e", M1, P.ETH_LLDP, bytes(24))),
        (113, P.sll(P.ipv4(A4, B4, 17, u4), P.ETH_IPV4, M1)),
        (113, P.sll(P.ipv6(A6, B6, 6, P.tcp(1, 2)), P.ETH_IPV6, M1, arphrd=772)),
        (276, P.sll2(P.ipv6(A6, B6, 58, P.icmpv6(129, 0, bytes(4))), P.ETH_IPV6, M2)),
        (276, P.sll2(P.arp(2, M2, B4, M1, A4), P.ETH_ARP, M2)),
        (101, P.ipv4(A4, B4, 6, P.tcp(7, 8))),
        (101, P.ipv6(A6, B6, 17, u6)),
        (228, P.ipv4(A4, B4, 1, P.icmp(8, 0, 3, 3))),
        (229, P.ipv6(A6, B6, 6, P.tcp(9, 10, "S"))),
        # other link types and encapsulations (docs/fastpath.md)
        (0, P.null_loopback(P.ipv4(A4, B4, 17, u4))),
        (0, P.cisco_hdlc(P.ipv4(A4, B4, 6, P.tcp(1, 2)))),
        (108, P.loop(P.ipv6(A6, B6, 17, u6))),
        (9, P.ppp(P.ipv4(A4, B4, 6, P.tcp(3, 4)))),
        (50, P.ppp(P.ipv6(A6, B6, 17, u6), 0x0057)),
        (51, P.pppoe_session(P.ipv4(A4, B4, 1, P.icmp(8, 0, 1, 1)))),
        (104, P.cisco_hdlc(P.ipv6(A6, B6, 6, P.tcp(5, 6)), P.ETH_IPV6)),
        (107, P.frame_relay(P.ipv4(A4, B4, 17, u4))),
        (8, P.slip(P.ipv4(A4, B4, 6, P.tcp(7, 8)))),
        (117, P.pflog(P.ipv6(A6, B6, 17, u6), 28)),
        (239, P.nflog(P.ipv4(A4, B4, 6, P.tcp(9, 10)))),
        (12, P.ipv4(A4, B4, 17, u4)),
        (14, P.ipv6(A6, B6, 17, u6)),
        (105, P.dot11_data(P.ipv4(A4, B4, 6, P.tcp(1, 2)), M2, M1, OUI_MAC)),
        (127, P.radiotap(P.dot11_data(P.ipv6(A6, B6, 17, u6), M2, M1, OUI_MAC, to_ds=False,
                                      qos=True, ethertype=P.ETH_IPV6))),
        (1, P.ether(M2, M1, P.ETH_PPPOE_SESSION, P.pppoe_session(P.ipv4(A4, B4, 17, u4)))),
        (1, P.ether(M2, M1, P.ETH_MPLS, P.mpls(P.ipv6(A6, B6, 6, P.tcp(1, 2))))),
        (1, P.ether(M2, M1, P.ETH_VNTAG, P.vntag(P.ipv4(A4, B4, 1, P.icmp(8, 0, 2, 2))))),
        (1, P.ether(M2, M1, P.ETH_NSH, P.nsh(P.ether(M1, M2, P.ETH_IPV4,
                                                     P.ipv4(A4, B4, 17, u4)), 3))),
        (1, P.ether_8023(M2, M1, P.llc_snap(P.ipv4(A4, B4, 6, P.tcp(3, 4))))),
    ]


SEEDS = seed_frames()
EDGE16 = [0, 1, 4, 7, 8, 19, 20, 39, 40, 0x7FFF, 0x8000, 0xFFFF]


@st.composite
def mutated_frame(draw: st.DrawFn) -> tuple[int, bytes]:
    linktype, frame = draw(st.sampled_from(SEEDS))
    if draw(st.integers(0, 9)) == 0:
        linktype = draw(st.sampled_from(LINKTYPES))  # the right bytes under the wrong link
    b = bytearray(frame)
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "edge16", "truncate"]))
        pos = draw(st.integers(0, max(0, len(b) - 1)))
        if op == "flip" and b:
            b[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and b:
            b[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            b[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and b:
            del b[pos:pos + draw(st.integers(1, 8))]
        elif op == "edge16" and len(b) >= 2:
            pos = min(pos, len(b) - 2)
            b[pos:pos + 2] = draw(st.sampled_from(EDGE16)).to_bytes(2, "big")
        elif op == "truncate":
            del b[pos:]
    return linktype, bytes(b)


random_frame = st.tuples(st.sampled_from(LINKTYPES + [2, 147]), st.binary(max_size=160))


def policy() -> fastpath.CompiledPolicy:
    v4 = bytes(10) + b"\xff\xff"
    selectors = [(2, 1, bytes.fromhex("001a2b").ljust(16, b"\0"), 0),
                 (3, 2, v4 + bytes([10, 20, 0, 0]), 112),
                 (3, 2, bytes.fromhex("fd00") + bytes(14), 16),
                 (4, 3, (104).to_bytes(2, "big").ljust(16, b"\0"), 0)]
    rules = [(1 << 1, 1 << 2, 6, 443, 443, 0, 0), (1 << 1, 1 << 2, 17, 1000, 2000, 1, 1),
             (1, 1, 1, 8, 8, 0, 2), (1 << 3, 1, 0, 0, 65535, 0, 3)]
    return fastpath.CompiledPolicy(selectors, rules, 1 << 3, 1 << 3, arp=False, non_ip=True,
                                   fragment_unmatched=False)


def run_batch(frames: list[tuple[int, bytes]], clf: fastpath.Classifier,
              stamps: list[int] | None = None) -> None:
    """Decode and classify one batch; check every property."""
    buf = b"".join(f for _, f in frames)
    n = len(frames)
    lengths = np.array([len(f) for _, f in frames], np.uint32)
    offsets = np.zeros(n, np.int64)
    offsets[1:] = np.cumsum(lengths)[:-1]
    links = np.array([lt for lt, _ in frames], np.uint16)
    ts = np.array(stamps if stamps is not None else range(1, n + 1), np.uint64)
    decoded = np.zeros(n, fastpath.DECODED_DTYPE)
    dreasons = np.full(n, 255, np.uint8)
    fastpath.decode_batch(buf, offsets, lengths, links, decoded.view(np.uint8), dreasons)
    verdicts = np.zeros(n, np.uint8)
    reasons = np.full(n, 255, np.uint8)
    rules = np.zeros(n, np.uint16)
    before = clf.stats()
    assert clf.classify(buf, offsets, lengths, ts, links, verdicts, reasons, rules) == n
    for i in range(n):
        v, r, d = int(verdicts[i]), int(reasons[i]), int(dreasons[i])
        what = (i, frames[i][0], frames[i][1].hex(), v, r, d)
        assert d in fastpath.REASON_NAMES and (d == 0 or d >= fastpath.MALFORMED_FIRST), what
        assert v in (1, 2, 3), what  # allow, deny, malformed
        assert r in fastpath.REASON_NAMES, what
        assert (v == 3) == (r >= fastpath.MALFORMED_FIRST), what
        assert (v == 3) == (d != 0), what
        if v == 3:
            assert r == d and int(rules[i]) == fastpath.NO_RULE_INDEX, what
        else:
            rec = decoded[i]
            assert rec["l3"] in (0, 1, 4, 6), what
            if rec["l3"] in (0, 1):
                assert r in (1, 6, 7), what  # no_policy, arp, non_ip
            if int(rules[i]) != fastpath.NO_RULE_INDEX:
                assert r in (0, 8), what  # allowed by a rule, or its fragment
    after = clf.stats()
    delta = {k: after[k] - before[k] for k in ("packets", "allowed", "denied", "malformed")}
    assert delta["packets"] == n
    assert delta["allowed"] + delta["denied"] + delta["malformed"] == n
    assert delta["malformed"] == int(np.count_nonzero(verdicts == 3))
    assert after["flows_created"] - after["flows_ended"] == after["flows_active"]
    assert after["flows_active"] <= clf.flow_capacity
    events = np.empty(16, fastpath.EVENT_DTYPE)
    while (got := clf.drain_events(events.view(np.uint8))):
        assert all(int(t) in fastpath.EVENT_NAMES for t in events["type"][:got])


def tiny_classifier(with_policy: bool) -> fastpath.Classifier:
    clf = fastpath.Classifier(8, 16, 16, seed=99, timeouts=(3, 2, 1, 1, 1))
    if with_policy:
        clf.set_policy(policy())
        clf.set_mode("enforce")
    return clf


@settings(max_examples=300, **SETTINGS)
@given(frames=st.lists(random_frame, min_size=1, max_size=24))
def test_random_bytes_under_every_linktype(frames: list[tuple[int, bytes]]) -> None:
    run_batch(frames, tiny_classifier(with_policy=False))


@settings(max_examples=400, **SETTINGS)
@given(frames=st.lists(mutated_frame(), min_size=1, max_size=24), with_policy=st.booleans(),
       stamps=st.lists(st.integers(0, 2**64 - 1), min_size=24, max_size=24))
def test_mutated_valid_frames(frames: list[tuple[int, bytes]], with_policy: bool,
                              stamps: list[int]) -> None:
    clf = tiny_classifier(with_policy)
    run_batch(frames, clf, sorted(stamps)[:len(frames)])
    run_batch(frames, clf, stamps[:len(frames)])  # again, time going backwards too


@settings(max_examples=200, **SETTINGS)
@given(frames=st.lists(mutated_frame(), min_size=1, max_size=8),
       offsets=st.lists(st.integers(-(2**40), 2**40), min_size=8, max_size=8),
       lengths=st.lists(st.integers(0, 2**32 - 1), min_size=8, max_size=8))
def test_arbitrary_offsets_and_lengths(frames: list[tuple[int, bytes]], offsets: list[int],
                                       lengths: list[int]) -> None:
    """Offsets/lengths outside the buffer are bad_offset, never a read outside it."""
    buf = b"".join(f for _, f in frames)
    n = len(frames)
    # odd packets near the buffer, even ones anywhere
    off = np.array([o % (len(buf) + 8) if i % 2 else o for i, o in enumerate(offsets[:n])],
                   np.int64)
    lens = np.array([v % (len(buf) + 8) if i % 2 else v for i, v in enumerate(lengths[:n])],
                    np.uint32)
    links = np.array([lt for lt, _ in frames], np.uint16)
    decoded = np.zeros(n, fastpath.DECODED_DTYPE)
    dreasons = np.zeros(n, np.uint8)
    fastpath.decode_batch(buf, off, lens, links, decoded.view(np.uint8), dreasons)
    verdicts, reasons = np.zeros(n, np.uint8), np.zeros(n, np.uint8)
    clf = tiny_classifier(with_policy=True)
    clf.classify(buf, off, lens, np.ones(n, np.uint64), links, verdicts, reasons,
                 np.zeros(n, np.uint16))
    for i in range(n):
        inside = 0 <= off[i] and off[i] + int(lens[i]) <= len(buf)
        if not inside:
            assert dreasons[i] == reasons[i] == 16, (i, off[i], lens[i])  # bad_offset
        assert (verdicts[i] == 3) == (dreasons[i] != 0)
        assert reasons[i] == dreasons[i] or verdicts[i] != 3


def test_long_stateful_run_with_tiny_tables() -> None:
    """Many flows through 8 flow slots, 16 devices and a 16-event ring: eviction, idle
    expiry, device table full, event drops; counters stay consistent."""
    clf = tiny_classifier(with_policy=True)
    rng = np.random.default_rng(5)
    t = 0
    for _ in range(40):
        frames = []
        for _i in range(64):
            linktype, frame = SEEDS[int(rng.integers(len(SEEDS)))]
            b = bytearray(frame)
            if len(b) > 40 and rng.random() < 0.7:   # vary addresses, ports and MACs
                for pos in rng.integers(6, min(len(b), 60), size=3):
                    b[int(pos)] = int(rng.integers(256))
            frames.append((linktype, bytes(b)))
        t += int(rng.integers(0, 3_000_000_000))
        run_batch(frames, clf, [t + i for i in range(len(frames))])
    stats = clf.stats()
    assert stats["packets"] == 40 * 64
    assert stats["devices"] <= 16 and stats["flows_evicted"] > 0


def test_expired_flow_taken_over_in_its_bucket_ends_once() -> None:
    """flow_find_or_add ends an idle-expired flow (END_IDLE) to reuse its slot, leaves its
    state ACTIVE, then the eviction branch ends it again (END_EVICTED): two flow-end
    events for one flow, flows_evicted counted, flows_active one too low (it wraps)."""
    frames = [(1, P.ether(M2, M1, P.ETH_IPV4, P.ipv4(f"10.0.0.{i}", B4, 17,
                                                      P.udp(1000, 53, b""))))
              for i in range(1, 10)]
    clf = fastpath.Classifier(8, 16, 64, seed=1, timeouts=(1, 1, 1, 1, 1))  # one bucket
    buf = b"".join(f for _, f in frames)
    lengths = np.array([len(f) for _, f in frames], np.uint32)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    stamps = np.array([1, 2, 3, 4, 5, 6, 7, 8, 10 * 10**9], np.uint64)  # 9th: all idle
    out = np.zeros(9, np.uint8), np.zeros(9, np.uint8), np.zeros(9, np.uint16)
    clf.classify(buf, offsets, lengths, stamps, np.ones(9, np.uint16), *out)
    events = np.empty(64, fastpath.EVENT_DTYPE)
    got = clf.drain_events(events.view(np.uint8))
    ends = [fastpath.FLOW_END_NAMES[int(e["reason"])] for e in events[:got] if e["type"] == 4]
    stats = clf.stats()
    assert ends == ["idle"] * 8, ends
    assert (stats["flows_created"], stats["flows_ended"], stats["flows_evicted"],
            stats["flows_active"]) == (9, 8, 0, 1)


def write_seed_corpus(directory: Path) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    for i, (linktype, frame) in enumerate(SEEDS):
        (directory / f"seed-{i:03d}").write_bytes(bytes([LINKTYPES.index(linktype)]) + frame)
    return len(SEEDS)


def test_atheris_target_runs_clean(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    assert write_seed_corpus(corpus) == len(SEEDS)
    proc = subprocess.run(
        [sys.executable, str(FUZZ_TARGET), str(corpus), "-runs=20000", "-seed=1",
         "-max_len=512", f"-artifact_prefix={tmp_path}/"],
        capture_output=True, text=True, cwd=tmp_path, timeout=90)
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
    assert proc.returncode == 0, f"fuzz target failed (rc={proc.returncode}):\n{tail}"
    assert "Done 20000 runs" in proc.stderr, tail
    assert not list(tmp_path.glob("crash-*")), tail
