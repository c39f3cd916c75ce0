"""A conversation idle past its timeout has ended, whichever slot its flow sits in.

The idle sweep walks the table a few buckets per batch, in slot order, and slots follow the
per-process hash seed. Whether the sweep had reached a flow before its conversation resumed
must not decide what happens next: it was found to make `wardtap learn` write a different
policy from the same capture on about one run in three.
"""

from __future__ import annotations

from array import array

from demoward import frames as P
from fastpath import EVENT_FIELDS, EVENT_NAMES, FLOW_END_NAMES, Classifier

CLIENT, SERVER = "10.40.1.10", "10.20.0.53"
CLIENT_MAC, ROUTER_MAC = "00:1a:2b:00:00:01", "00:00:0c:00:00:fe"
UDP_TIMEOUT_S = 30
SECOND = 1_000_000_000


def _query() -> bytes:
    return P.ether(ROUTER_MAC, CLIENT_MAC, 0x0800,
                   P.ipv4(CLIENT, SERVER, 17, P.udp(40000, 53, b"q" * 20, CLIENT, SERVER)))


def _flow_events(seed: int) -> list[tuple[str, str | None, int]]:
    """(event, end reason, packets) of the query's flows, with this hash seed."""
    clf = Classifier(flow_capacity=1 << 16, device_capacity=64, seed=seed,
                     timeouts=(3600, UDP_TIMEOUT_S, 30, 120, 10))
    frame = _query()
    # the same query at 0 s and 1 s, then after 100 s of silence (past the UDP timeout)
    for t in (0, 1, 101):
        clf.classify(frame, array("q", [0]), array("I", [len(frame)]),
                     array("Q", [10**18 + t * SECOND]), array("H", [1]), array("B", [0]),
                     array("B", [0]), array("H", [0]))
    out: list[tuple[str, str | None, int]] = []
    for rec in clf.drain(1 << 10) + clf.flow_list():
        e = dict(zip(EVENT_FIELDS, rec, strict=True))
        kind = EVENT_NAMES[e["type"]]
        if kind in ("new_flow", "flow_end"):
            out.append((kind, FLOW_END_NAMES.get(e["reason"]) if kind == "flow_end" else None,
                        e["pkts"]))
    return out


def test_a_resumed_conversation_is_a_new_flow_for_every_hash_seed() -> None:
    seen = {tuple(_flow_events(seed)) for seed in range(1, 41)}
    assert len(seen) == 1, seen
    # the first flow (2 packets) ended idle; the query after the silence started a new one,
    # still live (flow_list shows it as a flow-end shaped record with its 1 packet)
    [events] = seen
    assert [(k, r) for k, r, _ in events[:3]] == [("new_flow", None), ("flow_end", "idle"),
                                                  ("new_flow", None)], events
    assert events[1][2] == 2 and events[-1][2] == 1, events
