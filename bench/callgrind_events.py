"""Instructions an event costs the fast path: a new-flow storm classified with every event
queued, and with none (only counted), under callgrind; the difference over the events.

    valgrind --tool=callgrind .venv/bin/python bench/callgrind_events.py CAPTURE --flows N [--none]

bench_scale.py runs it (section `events`); the capture is one of its own (round 0 of a
scale capture: one new flow per packet).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.append(str(Path(__file__).resolve().parent.parent / "tests"))   # shared allow-lists

import numpy as np  # noqa: E402
from policies import clients_tls  # noqa: E402

import fastpath  # noqa: E402
from appliance.policy.model import compile_policy, parse_policy  # noqa: E402
from appliance.sources.capture import CaptureFile  # noqa: E402

POLICY = clients_tls("events")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("capture")
    ap.add_argument("--flows", type=int, default=100_000)
    ap.add_argument("--none", action="store_true", help="queue no event (count them only)")
    args = ap.parse_args()
    clf = fastpath.Classifier(flow_capacity=1 << 21, device_capacity=4096,
                              event_capacity=1 << 16, seed=1)
    clf.set_policy(compile_policy(parse_policy(POLICY)))
    clf.set_mode("monitor")
    clf.set_events([] if args.none else None)
    v, r, ru = (np.zeros(4096, t) for t in (np.uint8, np.uint8, np.uint16))
    out = bytearray(fastpath.EVENT_BYTES * (1 << 16))
    seen = queued = 0
    with CaptureFile(args.capture, 4096) as cap:
        for b in cap.batches():
            n = min(b.count, args.flows - seen)
            clf.classify(b.buf, b.offsets[:n], b.lengths[:n], b.timestamps[:n],
                         b.linktypes[:n], v, r, ru)
            queued += clf.drain_events(out)
            seen += n
            if seen >= args.flows:
                break
    st = clf.stats()
    print(json.dumps({"packets": seen, "queued": queued,
                      "counted_only": int(st["events_counted_only"])}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
