"""The compact hot path (fastpath/compact.pxi) decides exactly as the general path.

The same packets go through two classifiers with the same seed, one with the compact path
and one without: every packet's verdict, reason, rule and dissection mark, every event, the
counters, the devices and the flows must be equal. The packets are real: captures of real
daemons and libraries (tests/data/realward.pcap), the conformance corpus of public captures
(tests/data/corpus), and the demo ward's IMIX traffic under its allow-list.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from capturekit import classify_captures

import fastpath
from appliance.errors import CaptureError
from appliance.policy.model import compile_policy, parse_policy
from demoward import frames as P
from demoward.ward import DEMO_POLICY, write_imix

DATA = Path(__file__).resolve().parents[1] / "data"
CORPUS = sorted(p for p in (DATA / "corpus").iterdir() if p.suffix in (".pcap", ".pcapng"))


def run(paths: list[Path], compact: bool, mode: str, flow_capacity: int, sampling: bool,
        batch: int = 512, policy: str = DEMO_POLICY) -> dict[str, object]:
    clf = fastpath.Classifier(flow_capacity=flow_capacity, device_capacity=256,
                              event_capacity=1 << 16, seed=11, compact=compact)
    if mode != "learn":
        clf.set_policy(compile_policy(parse_policy(policy)))
    clf.set_mode(mode)
    per_packet: list[np.ndarray] = []
    events: list[tuple] = []
    devices: list[list[tuple]] = []
    for path in paths:
        try:
            for c in classify_captures(clf, [path], batch, sampling):
                cols = [c.verdicts, c.reasons, c.rules.astype(np.uint8),
                        (c.rules >> 8).astype(np.uint8)]
                if c.samples is not None:
                    cols.append(c.samples)
                per_packet.append(np.stack(cols).copy())
                events.extend(clf.drain(1 << 16))
                if len(per_packet) % 8 == 0:      # devices read mid-stream, as the daemon does
                    devices.append(sorted(clf.device_list()))
        except CaptureError:
            pass                      # damaged or refused: the packets before it count
    stats = clf.stats()
    return {"packets": np.concatenate(per_packet, axis=1), "events": events,
            "compact": stats.pop("compact"), "stats": stats,
            "devices": devices + [sorted(clf.device_list())], "flows": sorted(clf.flow_list())}


def assert_same(paths: list[Path], mode: str, flow_capacity: int = 65536,
                sampling: bool = False, policy: str = DEMO_POLICY, batch: int = 512) -> int:
    fast = run(paths, True, mode, flow_capacity, sampling, batch, policy)
    general = run(paths, False, mode, flow_capacity, sampling, batch, policy)
    assert general["compact"] == 0
    assert np.array_equal(fast["packets"], general["packets"])
    for key in ("stats", "events", "devices", "flows"):
        assert fast[key] == general[key], key
    return int(fast["compact"])  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def imix(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("imix") / "imix.pcap"
    write_imix(path, 30_000, flows=400, seed=3)
    return path


@pytest.mark.parametrize("mode", ["learn", "monitor", "enforce"])
def test_ward_traffic_same_on_both_paths(imix: Path, mode: str) -> None:
    hits = assert_same([imix], mode)
    assert hits > 20_000        # the compact path carried most of the ward's packets


def test_ward_traffic_with_evictions_and_sampling(imix: Path) -> None:
    # 64 slots for 400 flows: flows are evicted and started again mid-stream all the time.
    assert_same([imix], "enforce", flow_capacity=64, sampling=True)


def write_udp_rounds(path: Path, flows: int) -> None:
    """`flows` UDP conversations between high ports (64 clients, 16 servers, each its own
    MAC), in five rounds over all of them: client, client, server, server, client. The
    first packet of each side takes the general path; the others are compact hits."""
    def mac(i: int) -> str:
        return f"02:00:00:00:{i >> 8:02x}:{i & 0xFF:02x}"

    frames = []
    for i in range(flows):
        c, s, port = i % 64, 64 + i % 16, 1024 + i // 64
        cip, sip = f"10.40.0.{c + 1}", f"10.20.0.{s + 1}"
        up = P.ether(mac(s), mac(c), 0x0800, P.ipv4(cip, sip, 17, P.udp(port, 9000, b"u" * 8)))
        down = P.ether(mac(c), mac(s), 0x0800, P.ipv4(sip, cip, 17, P.udp(9000, port, b"d" * 8)))
        frames.append((up, down))
    header = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    records = []
    for n, side in enumerate((0, 0, 1, 1, 0)):
        for i, pair in enumerate(frames):
            t = n * flows + i
            records.append(struct.pack("<IIII", 1_700_000_000 + t // 100_000, t % 100_000 * 10,
                                       len(pair[side]), len(pair[side])) + pair[side])
    path.write_bytes(header + b"".join(records))


def test_devices_folded_from_flows_in_large_batches(tmp_path: Path) -> None:
    # Compact hits count in the flow slot; the devices take them when they are read, when
    # the general path touches the flow and when the fold list is full (flowtable.pxi,
    # folds). 40,000 flows hit between two reads overflow the 16,384-entry fold list;
    # 32,768 slots evict flows with counts still to fold.
    path = tmp_path / "rounds.pcap"
    write_udp_rounds(path, 40_000)
    assert assert_same([path], "monitor", batch=4096) > 100_000
    assert assert_same([path], "monitor", flow_capacity=32768, batch=4096) > 20_000


def test_real_daemons_same_on_both_paths() -> None:
    assert assert_same([DATA / "realward.pcap"], "enforce", sampling=True) > 0
    assert_same([DATA / "realward.pcap"], "learn", flow_capacity=16)


# The real ward's DNS, HL7 and DICOM under rules by name and by clinical protocol: flows the
# classifier still watches (DNS answers read for bindings, a first payload to judge) must
# stay on the general path until decided.
NAMES_AND_CLINICAL = """
[policy]
name = "names-and-clinical"
version = 1
[groups.ward]
ip = ["10.61.0.0/24"]
[groups.pacs]
names = ["pacs.ward61.test"]
[[rules]]
name = "dns"
from = "ward"
to = "ward"
proto = "udp"
ports = [53]
[[rules]]
name = "vitals"
from = "ward"
to = "ward"
proto = "tcp"
ports = [2575, 2576]
hl7 = { message_types = ["ORU^R01"] }
[[rules]]
name = "images"
from = "ward"
to = "pacs"
proto = "tcp"
ports = [104]
dicom = { services = ["C-ECHO"] }
"""


def test_watched_flows_same_on_both_paths() -> None:
    assert assert_same([DATA / "realward.pcap"], "enforce", policy=NAMES_AND_CLINICAL) > 0
    stats = run([DATA / "realward.pcap"], True, "enforce", 65536, False,
                policy=NAMES_AND_CLINICAL)["stats"]
    assert isinstance(stats, dict)
    assert stats["bindings_learned"] >= 1 and stats["payloads_judged"] >= 5   # watched flows
    assert_same([DATA / "realward.pcap"], "monitor", sampling=True, policy=NAMES_AND_CLINICAL)


def test_public_captures_same_on_both_paths() -> None:
    # One classifier over the whole corpus: IPv6, tunnels, fragments, PPPoE, MPLS, VLANs,
    # truncated and malformed packets between the plain IPv4 flows.
    assert assert_same(CORPUS, "monitor") > 0
    assert_same(CORPUS, "enforce", flow_capacity=32, sampling=True)
