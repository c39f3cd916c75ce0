"""Who started a flow, when its first packet seen is from the middle of the conversation.

The rule (docs/fastpath.md, "Who started a flow"): what the packet says (SYN, ICMP type,
group receiver, DNS/NTP/DHCP header), then the policy when it allows one orientation only,
then services known to be offered, then port classes, then the lower port. An answer whose
request cannot have been missed is unsolicited: denied, counted and reported. Real daemons'
traffic is in tests/datapath/test_midstream.py; these are the rule's cases one by one.
"""

from __future__ import annotations

import struct
from array import array
from typing import Any

from appliance.common.records import event_dict
from appliance.policy.evaluate import addr16
from appliance.policy.model import compile_policy, parse_policy
from demoward import frames as P
from fastpath import (
    HINT_KNOWN_CONVERSATION,
    HINT_NEW_CONVERSATION,
    REASON_NAMES,
    VERDICT_NAMES,
    Classifier,
)

POLICY = """
[groups.ward]
ip = ["10.1.0.0/24"]
[groups.servers]
ip = ["10.9.0.0/24"]
[[rules]]
name = "dns"
from = "ward"
to = "servers"
proto = "udp"
ports = [53]
[[rules]]
name = "ntp"
from = "ward"
to = "servers"
proto = "udp"
ports = [123]
[[rules]]
name = "dicom"
from = "ward"
to = "servers"
proto = "tcp"
ports = [11112]
[[rules]]
name = "hl7-engine"
from = "ward"
to = "servers"
proto = "tcp"
ports = [50000]
[[rules]]
name = "telemetry"
from = "ward"
to = "servers"
proto = "udp"
ports = [7400]
"""
CART, PUMP, DNS, PACS = "10.1.0.5", "10.1.0.6", "10.9.0.53", "10.9.0.10"
MAC_W, MAC_S = "02:00:00:00:01:05", "02:00:00:00:09:53"
S = 1_000_000_000
T0 = 1_700_000_000 * S


def dns(query: bool, ident: int = 7) -> bytes:
    flags = 0x0100 if query else 0x8180
    question = b"\x04ward\x04test\x00\x00\x01\x00\x01"
    return struct.pack("!HHHHHH", ident, flags, 1, 0 if query else 1, 0, 0) + question


def ntp(mode: int) -> bytes:
    return bytes([(4 << 3) | mode]) + bytes(47)


def frame(src: str, sport: int, dst: str, dport: int, payload: bytes = b"x" * 16,
          proto: int = 17, flags: str = "A") -> bytes:
    ward_side = src.startswith("10.1.")
    smac, dmac = (MAC_W, MAC_S) if ward_side else (MAC_S, MAC_W)
    l4 = P.udp(sport, dport, payload) if proto == 17 else P.tcp(sport, dport, flags,
                                                                  payload=payload)
    return P.ether(dmac, smac, 0x0800, P.ipv4(src, dst, proto, l4))


class Run:
    """One classifier, fed frames with chosen timestamps (and hints), keeping the events."""

    def __init__(self, policy: str | None = POLICY, mode: str = "enforce") -> None:
        self.clf = Classifier(flow_capacity=256, device_capacity=64, event_capacity=1024,
                              seed=5)
        if policy is not None:
            self.clf.set_policy(compile_policy(parse_policy(policy)))
            self.clf.set_mode(mode)
        self.events: list[dict[str, Any]] = []

    def feed(self, frames: list[bytes], times: list[int] | None = None,
             hints: list[int] | None = None) -> list[tuple[str, str]]:
        n = len(frames)
        times = times or [T0 + i * 1000 for i in range(n)]
        buf = b"".join(frames)
        offsets = array("q", [sum(len(f) for f in frames[:i]) for i in range(n)])
        verdicts, reasons, rules = array("B", bytes(n)), array("B", bytes(n)), array("H", [0] * n)
        self.clf.classify(buf, offsets, array("I", map(len, frames)), array("Q", times),
                          array("H", [1] * n), verdicts, reasons, rules, None,
                          array("B", hints) if hints is not None else None)
        self.events += [event_dict(e) for e in self.clf.drain()]
        return [(VERDICT_NAMES[v], REASON_NAMES[r]) for v, r in zip(verdicts, reasons,
                                                                     strict=True)]

    def flows(self, kind: str = "new_flow") -> list[tuple[Any, ...]]:
        return [(e["src"], e["sport"], e["dst"], e["dport"], e["orient"])
                for e in self.events if e["type"] == kind]


ALLOW = ("allow", "rule")


def test_dns_answer_seen_first_is_an_answer_to_an_allowed_request() -> None:
    run = Run()
    got = run.feed([frame(DNS, 53, CART, 40000, dns(False)),
                    frame(CART, 40000, DNS, 53, dns(True, 8))])
    assert got == [ALLOW, ALLOW]
    assert run.flows() == [(CART, 40000, DNS, 53, "payload")]


def test_symmetric_ntp_answered_first_is_oriented_by_the_policy() -> None:
    run = Run()
    # 123 <-> 123, symmetric mode (the header says nothing): the policy allows the ward to
    # ask the server, not the other way round.
    got = run.feed([frame(DNS, 123, CART, 123, ntp(1)), frame(CART, 123, DNS, 123, ntp(1))])
    assert got == [ALLOW, ALLOW]
    assert run.flows() == [(CART, 123, DNS, 123, "policy")]
    # Client/server mode: the header says it.
    run = Run()
    assert run.feed([frame(DNS, 123, PUMP, 123, ntp(4))]) == [ALLOW]
    assert run.flows() == [(PUMP, 123, DNS, 123, "payload")]


def test_old_client_low_ephemeral_port_to_service_on_high_port() -> None:
    """A Windows XP-era cart (ephemeral ports 1025-5000) to DICOM on 11112 and an HL7 engine
    on 50000, caught mid-stream with the server's segment first."""
    run = Run()
    got = run.feed([frame(PACS, 11112, CART, 1030, proto=6),
                    frame(CART, 1030, PACS, 11112, proto=6),
                    frame(PACS, 50000, CART, 1031, proto=6),
                    frame(CART, 1031, PACS, 50000, proto=6)])
    assert got == [ALLOW] * 4
    assert run.flows() == [(CART, 1030, PACS, 11112, "ports"), (CART, 1031, PACS, 50000, "policy")]
    # Without a policy (learning) the port classes still orient the DICOM one; the HL7 one
    # (50000 is an ephemeral port for most stacks) is a guess: the lower port.
    learn = Run(None)
    learn.feed([frame(PACS, 11112, CART, 1030, proto=6), frame(PACS, 50000, CART, 1031, proto=6)])
    assert learn.flows() == [(CART, 1030, PACS, 11112, "ports"),
                             (PACS, 50000, CART, 1031, "lower_port")]


def test_services_learned_from_syn_acks_orient_later_flows() -> None:
    learn = Run(None)
    learn.feed([frame(CART, 1040, PACS, 50000, proto=6, flags="S"),
                frame(PACS, 50000, CART, 1040, proto=6, flags="SA"),
                frame(PACS, 50000, PUMP, 1041, proto=6, flags="PA")])   # another, mid-stream
    assert learn.clf.knows_service(addr16(PACS).to_bytes(16, "big"), 6, 50000)
    assert learn.flows()[-1] == (PUMP, 1041, PACS, 50000, "service")
    # Services can also be given (the daemon gives what its store knows).
    given = Run(None)
    assert given.clf.add_services([(addr16(PACS).to_bytes(16, "big"), 6, 50000)]) == 1
    given.feed([frame(PACS, 50000, PUMP, 1041, proto=6, flags="PA")])
    assert given.flows() == [(PUMP, 1041, PACS, 50000, "service")]


def test_unsolicited_answers_are_denied_counted_and_reported() -> None:
    run = Run()
    # The classifier has watched for two minutes: a DNS answer nobody asked for, towards a
    # port no flow uses, is no answer.
    got = run.feed([frame(CART, 40001, DNS, 53, dns(True)),
                    frame(DNS, 53, CART, 40002, dns(False))], [T0, T0 + 120 * S])
    assert got == [ALLOW, ("deny", "unsolicited_answer")]
    violation = next(e for e in run.events if e["type"] == "violation")
    assert (violation["src"], violation["sport"], violation["dst"], violation["dport"]) == (
        DNS, 53, CART, 40002)
    assert violation["orient"] == "unsolicited"
    assert run.clf.stats()["unsolicited_answers"] == 1
    # More of them stay denied; when the cart itself then asks on that port, the flow starts
    # again from its request and is allowed.
    got = run.feed([frame(DNS, 53, CART, 40002, dns(False)), frame(CART, 40002, DNS, 53, dns(True)),
                    frame(DNS, 53, CART, 40002, dns(False))],
                   [T0 + 121 * S, T0 + 122 * S, T0 + 122 * S + 1000])
    assert got == [("deny", "unsolicited_answer"), ALLOW, ALLOW]
    assert run.clf.stats()["flows_reoriented"] == 1
    assert run.flows("flow_end")[-1][-1] == "unsolicited"


def test_answer_towards_a_service_port_is_never_an_answer() -> None:
    run = Run()
    # From port 53 to the cart's SSH port, even in the first minute.
    assert run.feed([frame(DNS, 53, CART, 22, b"x" * 20)]) == [("deny", "unsolicited_answer")]
    # From 53 to a port the cart is known to serve on: even though the policy would allow
    # the cart to ask that server, the cart's service port is no client's port.
    run = Run()
    run.clf.add_services([(addr16(CART).to_bytes(16, "big"), 17, 7400)])
    assert run.feed([frame(DNS, 53, CART, 7400, b"y" * 20)]) == [("deny", "unsolicited_answer")]
    # A packet to a service the receiver is known to offer is a request, not an answer.
    run = Run()
    run.feed([frame(DNS, 40003, CART, 7400, proto=6, flags="S"),
              frame(CART, 7400, DNS, 40003, proto=6, flags="SA")])
    assert run.feed([frame(DNS, 123, CART, 7400, b"y" * 20, proto=6, flags="PA")]) == [
        ("deny", "wrong_initiator")]
    assert run.flows()[-1] == (DNS, 123, CART, 7400, "service")


def test_kernel_hints_decide_whether_a_request_can_have_been_missed() -> None:
    answer = frame(DNS, 53, CART, 40004, dns(False))
    # Inline: the kernel's connection tracking knew the conversation before this packet (the
    # request went through while the classifier restarted): an answer, even long after the
    # classifier started.
    run = Run()
    run.feed([frame(CART, 40005, DNS, 53, dns(True))], [T0])
    assert run.feed([answer], [T0 + 300 * S], [HINT_KNOWN_CONVERSATION]) == [ALLOW]
    # The kernel had never seen the conversation: unsolicited, even in the first second.
    run = Run()
    assert run.feed([answer], [T0], [HINT_NEW_CONVERSATION]) == [("deny", "unsolicited_answer")]


def test_a_guess_contradicted_by_a_later_packet_is_decided_again() -> None:
    """A TCP flow between two ephemeral ports, met mid-stream, is a guess (the lower port
    taken for the service); a SYN from the side taken for the server turns it round."""
    run = Run(None)
    run.feed([frame(PACS, 40020, CART, 40030, proto=6),            # guessed: lower port
              frame(PACS, 40020, CART, 40030, proto=6, flags="S")])  # PACS opens it
    assert run.flows() == [(CART, 40030, PACS, 40020, "lower_port"),
                           (PACS, 40020, CART, 40030, "syn")]
    assert run.clf.stats()["flows_reoriented"] == 1


def test_broadcast_and_multicast_receivers_start_nothing() -> None:
    run = Run(None)
    run.feed([P.ether("ff:ff:ff:ff:ff:ff", MAC_S, 0x0800,
                      P.ipv4(DNS, "255.255.255.255", 17, P.udp(67, 68, b"o" * 8))),
              P.ether("01:00:5e:00:00:fb", MAC_W, 0x0800,
                      P.ipv4(CART, "224.0.0.251", 17, P.udp(5353, 5353, b"m" * 8)))])
    assert [f[-1] for f in run.flows()] == ["group", "group"]
    assert run.flows()[0][0] == DNS


def test_policy_reload_turns_a_guessed_flow_round() -> None:
    run = Run(POLICY.replace("ports = [7400]", "ports = [7401]"))
    # Telemetry from the server's 7400 to the cart's 45000, guessed: 7400 is the service.
    assert run.feed([frame(DNS, 45000, CART, 7400)]) == [("deny", "wrong_initiator")]
    run.clf.set_policy(compile_policy(parse_policy(POLICY.replace(
        'ports = [7400]', 'ports = [45000]'))))
    changed = run.clf.reevaluate()
    assert len(changed) == 1
    flow = run.clf.flow_list()[0]
    assert event_dict(flow)["src"] == CART and event_dict(flow)["orient"] == "policy"
