"""The classifier over a preloaded batch of packets, for instruction counts under callgrind.

    valgrind --tool=callgrind [--instr-atstart=no] .venv/bin/python \
        bench/callgrind_classifier.py CAPTURE POLICY [--packets 100000] [--passes 2] \
        [--client OUT/cgclient.so] [--general]

Loads the first --packets packets of CAPTURE into memory, runs one warm-up pass (it creates
the flows), then --passes measured passes over the same packets in batches of 4096: every
packet is a flow-table hit. With --client (bench/cgclient.c built as a shared library) it
starts instrumentation and zeroes callgrind's counters just before the measured passes and
dumps them right after (callgrind.out.N.1), so the dump holds the measured passes only.
Prints one JSON line: packets, passes, flows created in the warm-up and after it.
bench_replay.py --callgrind runs it; see bench/README.md.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys

# Before numpy: idle OpenBLAS threads spin, and callgrind counts their instructions too.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

import fastpath  # noqa: E402
from appliance.policy.model import compile_policy, load_policy  # noqa: E402
from appliance.sources.capture import CaptureFile  # noqa: E402

BATCH = 4096


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("capture")
    ap.add_argument("policy")
    ap.add_argument("--packets", type=int, default=100_000)
    ap.add_argument("--passes", type=int, default=2, help="measured passes after the warm-up")
    ap.add_argument("--client", help="cgclient.so: callgrind client requests via ctypes")
    ap.add_argument("--general", action="store_true",
                    help="every packet through the general path (no compact path)")
    args = ap.parse_args()

    with CaptureFile(args.capture, args.packets) as cap:
        batch = next(cap.batches())
        n = batch.count
        offsets, lengths, stamps, links = (np.array(a[:n]) for a in (
            batch.offsets, batch.lengths, batch.timestamps, batch.linktypes))
    with open(args.capture, "rb") as fh:
        buf = fh.read(int(offsets[-1]) + int(lengths[-1]))
    chunks = [(offsets[i:i + BATCH], lengths[i:i + BATCH], stamps[i:i + BATCH],
               links[i:i + BATCH]) for i in range(0, n, BATCH)]

    clf = fastpath.Classifier(flow_capacity=65536, device_capacity=4096, seed=1,
                              compact=not args.general)
    clf.set_mode("monitor")
    clf.set_policy(compile_policy(load_policy(args.policy)))
    verdicts = np.empty(BATCH, np.uint8)
    reasons = np.empty(BATCH, np.uint8)
    rules = np.empty(BATCH, np.uint16)
    events = np.empty(8192 * fastpath.EVENT_BYTES, np.uint8)
    classify, drain = clf.classify, clf.drain_events

    def one_pass() -> None:
        for o, ln, ts, lt in chunks:
            classify(buf, o, ln, ts, lt, verdicts, reasons, rules)
            while drain(events):
                pass

    one_pass()                                   # warm-up: creates the flows
    warm = clf.stats()
    lib = ctypes.CDLL(args.client) if args.client else None
    if lib is not None:
        lib.cg_start()
        lib.cg_zero()
    for _ in range(args.passes):
        one_pass()
    if lib is not None:
        lib.cg_dump(b"measured passes")
        lib.cg_stop()
    st = clf.stats()
    print(json.dumps({"packets": n, "passes": args.passes,
                      "on_valgrind": bool(lib.cg_running()) if lib is not None else None,
                      "flows_created_warmup": int(warm["flows_created"]),
                      "flows_created_measured": int(st["flows_created"] - warm["flows_created"]),
                      "allowed_per_pass": int(warm["allowed"]),
                      "packets_classified": int(st["packets"])}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
