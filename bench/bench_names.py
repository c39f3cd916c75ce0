"""Name and clinical rules against address rules alone, side by side, on the same traffic.

    .venv/bin/python bench/bench_names.py [--packets 1000000] [--flows 2000] [--repeat 7]
                                          [--new-flows 200000] [--out bench/out]

Two measurements, each with the demo ward's allow-list (demoward.ward.DEMO_POLICY) as the
baseline ("address rules") and the same list plus what issue 19 adds ("name and clinical
rules"): a group of 256 DNS names (exact and `*.suffix`) with a rule to it, an HL7
condition on the monitors' rule and a DICOM condition on the ultrasound rule.

1. Throughput: the IMIX capture of bench_replay.py (long-lived flows, IMIX sizes) through
   Classifier.classify (the calls timed; events drained between them, untimed), in batches
   of 4096, passes of A and B interleaved; best and median
   packets/s of each and the ratio. The bar: within 5%.
2. Cost per new flow: a capture of only TCP SYNs, each a new flow, to addresses of which half
   are bound to a listed name (bound from DNS answers classified first) and half are not;
   ns per packet (= per new flow) with A and with B, and the difference.

Prints a table and writes OUT/names.json. A script, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import struct
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))

import fastpath  # noqa: E402
from appliance.policy.model import compile_policy, parse_policy  # noqa: E402
from appliance.sources.capture import CaptureFile  # noqa: E402
from demoward import frames as P  # noqa: E402
from demoward import ward as demo  # noqa: E402

BATCH = 4096
NAMES = 256


def name_policy() -> str:
    text = demo.DEMO_POLICY
    names = [f"h{i}.cloud{i % 8}.example" for i in range(NAMES - 8)]
    names += [f"*.cdn{i}.example" for i in range(8)]
    text = re.sub(r'(name = "monitors-hl7"\n(?:.*\n)*?ports = \[2575\]\n)',
                  r'\1hl7 = { message_types = ["ORU^R01", "ADT^*"], sending = ["MX800"] }\n',
                  text, count=1)
    text = re.sub(r'(name = "ultrasound-dicom"\n(?:.*\n)*?ports = \[104\]\n)',
                  r'\1dicom = { calling = ["US1"], services = ["C-STORE", "C-ECHO"] }\n',
                  text, count=1)
    assert "hl7 =" in text and "dicom =" in text
    return text + ("\n[groups.vendor-cloud]\nnames = [" + ", ".join(f'"{n}"' for n in names)
                   + ']\n\n[[rules]]\nname = "ward-cloud"\nfrom = "ward"\nto = "vendor-cloud"\n'
                   'proto = "tcp"\nports = [443]\n')


def batches(path: str) -> list[tuple[Any, ...]]:
    out = []
    with CaptureFile(path, BATCH) as cap:
        for b in cap.batches():
            n = b.count
            offsets = np.array(b.offsets[:n], np.int64)
            lengths = np.array(b.lengths[:n], np.uint32)
            lo, hi = int(offsets.min()), int((offsets + lengths).max())
            out.append((bytes(b.buf[lo:hi]), offsets - lo, lengths,    # this batch's bytes
                        np.array(b.timestamps[:n], np.uint64),
                        np.array(b.linktypes[:n], np.uint16)))
    return out


def run(policy: Any, data: list[tuple[Any, ...]], *warm: list[tuple[Any, ...]]) -> float:
    """Packets/s of `data` through a fresh classifier, after the `warm` traffic (untimed:
    DNS answers that bind, new flows that touch the flow table's pages once)."""
    clf = fastpath.Classifier(1 << 18, 4096, 1 << 20, seed=3, timeouts=(1, 1, 1, 1, 1))
    clf.set_policy(policy)
    clf.set_mode("enforce")
    v, r, u = np.zeros(BATCH, np.uint8), np.zeros(BATCH, np.uint8), np.zeros(BATCH, np.uint16)
    for traffic in warm:
        for buf, off, ln, ts, lt in traffic:
            n = len(off)
            clf.classify(buf, off, ln, ts, lt, v[:n], r[:n], u[:n])
        clf.drain(1 << 20)
    packets = 0
    spent = 0.0
    for buf, off, ln, ts, lt in data:
        n = len(off)
        start = time.perf_counter()
        clf.classify(buf, off, ln, ts, lt, v[:n], r[:n], u[:n])
        spent += time.perf_counter() - start
        packets += n
        clf.drain(1 << 20)            # between batches, as a datapath does; not timed
    return packets / spent


def frames_batches(frames: list[bytes], t0: int) -> list[tuple[Any, ...]]:
    """Batches of `frames`, a microsecond apart from `t0` (ns)."""
    out = []
    for i in range(0, len(frames), BATCH):
        chunk = frames[i:i + BATCH]
        lengths = np.array([len(f) for f in chunk], np.uint32)
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        stamps = t0 + (np.arange(len(chunk), dtype=np.uint64) + i) * 1000
        out.append((b"".join(chunk), offsets, lengths, stamps,
                    np.ones(len(chunk), np.uint16)))
    return out


def new_flow_traffic(count: int) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]],
                                          list[tuple[Any, ...]]]:
    """(DNS answers binding count/2 addresses, `count` SYNs from a ward device to 443 that
    touch the flow table once, the same SYNs from other ports 10 s later: the timed ones).
    The binding table holds 4096: addresses bound beyond that push out older ones."""
    pump, pmac = "10.40.104.11", "00:12:21:5e:a0:11"
    dns, dmac = "10.20.0.53", demo.ROUTER_MAC
    answers, syns, later = [], [], []
    for i in range(count):
        addr = f"100.{64 + (i >> 16) % 64}.{(i >> 8) & 255}.{i & 255}"
        if i % 2 == 0:
            name = f"h{i % (NAMES - 8)}.cloud{i % (NAMES - 8) % 8}.example"
            qname = b"".join(bytes([len(x)]) + x.encode() for x in name.split(".")) + b"\0"
            body = (struct.pack("!HHHHHH", i & 0xFFFF, 0x8180, 1, 1, 0, 0) + qname
                    + b"\0\1\0\1" + b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 3600, 4)
                    + bytes(int(x) for x in addr.split(".")))
            answers.append(P.ether(pmac, dmac, 0x0800, P.ipv4(dns, pump, 17,
                                                              P.udp(53, 20000 + i % 40000, body))))
        for out, base in ((syns, 30000), (later, 1024)):
            out.append(P.ether(dmac, pmac, 0x0800, P.ipv4(pump, addr, 6,
                                                          P.tcp(base + i % 28000, 443, "S"))))
    second = 1_000_000_000
    return (frames_batches(answers, second), frames_batches(syns, 2 * second),
            frames_batches(later, 12 * second))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--flows", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--new-flows", type=int, default=200_000)
    ap.add_argument("--out", default=str(BENCH / "out"))
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(BENCH))
    from bench_replay import ensure_capture

    meta = ensure_capture(out, args.packets, args.flows, 1)
    data = batches(meta["path"])
    address = compile_policy(parse_policy(demo.DEMO_POLICY))
    named = compile_policy(parse_policy(name_policy()))
    rates: dict[str, list[float]] = {"address": [], "names": []}
    for _ in range(args.repeat):
        rates["address"].append(run(address, data))
        rates["names"].append(run(named, data))
    answers, touch, syns = new_flow_traffic(args.new_flows)
    per_flow: dict[str, list[float]] = {"address": [], "names": []}
    for _ in range(args.repeat):
        per_flow["address"].append(1e9 / run(address, syns, answers, touch))
        per_flow["names"].append(1e9 / run(named, syns, answers, touch))
    best = {k: max(v) for k, v in rates.items()}
    cheapest = {k: min(v) for k, v in per_flow.items()}
    result = {
        "capture": meta["path"], "packets": args.packets, "repeat": args.repeat,
        "throughput_pps": {k: {"best": max(v), "median": statistics.median(v)}
                           for k, v in rates.items()},
        "throughput_ratio_best": best["names"] / best["address"],
        "throughput_ratio_median": (statistics.median(rates["names"])
                                    / statistics.median(rates["address"])),
        "new_flow_ns": {k: {"best": min(v), "median": statistics.median(v)}
                        for k, v in per_flow.items()},
        "new_flow_extra_ns_best": cheapest["names"] - cheapest["address"],
        "bindings_table_bytes": fastpath.BINDING_SLOTS * fastpath.BINDING_BYTES,
        "binding_slots": fastpath.BINDING_SLOTS,
        "names_in_policy": NAMES,
    }
    (out / "names.json").write_text(json.dumps(result, indent=2))
    print(f"IMIX {args.packets:,} packets, best of {args.repeat} interleaved passes")
    for k in ("address", "names"):
        print(f"  {k + ' rules':<16} {best[k] / 1e6:8.2f} Mpps best, "
              f"{statistics.median(rates[k]) / 1e6:8.2f} median")
    print(f"  ratio (names / address): {result['throughput_ratio_best']:.3f} best, "
          f"{result['throughput_ratio_median']:.3f} median (bar: >= 0.95)")
    print(f"new flows only ({args.new_flows:,} SYNs, half to bound addresses)")
    for k in ("address", "names"):
        print(f"  {k + ' rules':<16} {cheapest[k]:8.1f} ns per new flow (best)")
    print(f"  extra per new flow: {result['new_flow_extra_ns_best']:.1f} ns")
    print(f"bindings table: {fastpath.BINDING_SLOTS} slots x {fastpath.BINDING_BYTES} B = "
          f"{result['bindings_table_bytes'] / 1024:.0f} KiB (fixed, per classifier)")
    print(f"-> {out / 'names.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
