"""Deep dissection's cost to the fast path, and how much of the ward reaches pyshark.

    .venv/bin/python bench/bench_dissect.py [--packets 200000] [--rounds 7] [--out bench/out]

On the demo ward (demoward.ward.write_demo_ward; cached in --out while its generator is
unchanged), in one process, alternating off/on rounds so both see the same machine state:

1. **Fast path rate**: a fresh Classifier per round runs every batch of the capture;
   "off" calls classify() alone; "on" calls classify(..., samples) with the tuned budgets
   (appliance.inventory.dissector.SAMPLING) and Dissector.offer() (find the marked indices with
   bytearray.find, copy those packets out, queue full chunks), with the real worker process
   dissecting concurrently. The timed region is the classify/offer loop (the capture is
   mapped and its pages warm). Bar: on >= 95% of off (median rounds).
   Dissection on starts the worker before the timed loop (as the daemon does at start).
2. **Whole replay**: Replayer.run off, and on with the inventory fed from the events.
3. **Shares**: packets the fast path marked, and packets that reached pyshark after triage,
   as a share of the ward's packets; bar: pyshark <= 0.1%. The classifier's default budgets
   are shown beside the tuned ones.
4. **Identification**: every demo-ward device's class against DemoWard.device_class.

Writes OUT/dissect-results.json. Asserts nothing: a measurement.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from appliance.inventory.dissector import SAMPLING, DissectConfig  # noqa: E402
from appliance.inventory.identify import Identification  # noqa: E402
from appliance.replay.runner import Replayer  # noqa: E402
from appliance.sources.capture import CaptureFile  # noqa: E402
from demoward.ward import write_demo_ward  # noqa: E402
from fastpath import Classifier  # noqa: E402

BATCH = 4096
DEFAULT_SAMPLING = {"per_flow": 8, "device_budget": 64, "device_window_s": 60.0,
                    "global_budget": 256}


def ward(out: Path, packets: int) -> tuple[str, int, float]:
    """(path, packets, minutes) of the demo ward, regenerated when its generator changes."""
    digest = hashlib.sha256(b"".join((ROOT / f).read_bytes() for f in (
        "demoward/ward.py", "demoward/frames.py", "appliance/common/capwriter.py"))).hexdigest()
    path = out / f"demo-ward-{packets}.pcap"
    meta = out / f"demo-ward-{packets}.json"
    if path.exists() and meta.exists():
        cached = json.loads(meta.read_text())
        if cached.get("sha256") == digest:
            return str(path), cached["packets"], cached["minutes"]
    w = write_demo_ward(path, packets=packets)
    minutes = (w.end_ns - w.start_ns) / 60e9
    meta.write_text(json.dumps({"sha256": digest, "packets": w.packets, "minutes": minutes}))
    return str(path), w.packets, minutes


def fast_path_pass(path: str, ident: Identification | None) -> tuple[float, int]:
    """Seconds in the classify (+ offer) loop over the whole capture; packets."""
    clf = Classifier()
    verdicts = memoryview(bytearray(BATCH))
    reasons = memoryview(bytearray(BATCH))
    rules = memoryview(bytearray(2 * BATCH)).cast("H")
    samples = None
    if ident is not None:
        ident.start(clf, BATCH)
        samples = ident.samples_view
    spent = 0.0
    packets = 0
    with CaptureFile(path, BATCH) as cap:
        for batch in cap.batches():
            n = batch.count
            t = time.perf_counter()
            clf.classify(batch.buf, batch.offsets, batch.lengths, batch.timestamps,
                         batch.linktypes, verdicts, reasons, rules, samples)
            if ident is not None:
                ident.offer(batch, n)
            spent += time.perf_counter() - t
            packets += n
            if clf.pending_events > 4096:
                clf.drain(8192)
    return spent, packets


def replay_pass(path: str, dissect: bool) -> tuple[float, Identification | None, Any]:
    r = Replayer()
    ident = None
    if dissect:
        ident = Identification(DissectConfig())
        r.enable_identification(ident)
    t = time.perf_counter()
    summary = r.run([path])
    elapsed = time.perf_counter() - t
    return elapsed, ident, (r, summary)


def cg_child(path: str, mode: str, client: str) -> int:
    """Under callgrind: count the datapath thread's instructions for one pass.

    off: classify(); marking: classify(..., samples) with the tuned budgets; on: that plus
    Dissector.offer() (no worker: its process is not the datapath's).
    """
    import ctypes

    from appliance.inventory.dissector import Dissector

    lib = ctypes.CDLL(client)
    clf = Classifier()
    if mode != "off":
        clf.set_sampling(**SAMPLING)
    verdicts = memoryview(bytearray(BATCH))
    reasons = memoryview(bytearray(BATCH))
    rules = memoryview(bytearray(2 * BATCH)).cast("H")
    marks = bytearray(BATCH)
    samples = memoryview(marks) if mode != "off" else None
    dissector = Dissector(DissectConfig(queue_chunks=1 << 20))
    lib.cg_start()
    lib.cg_zero()
    with CaptureFile(path, BATCH) as cap:
        for batch in cap.batches():
            clf.classify(batch.buf, batch.offsets, batch.lengths, batch.timestamps,
                         batch.linktypes, verdicts, reasons, rules, samples)
            if mode == "on":
                dissector.offer(batch, marks, batch.count)
            if clf.pending_events > 4096:
                clf.drain(8192)
    lib.cg_dump(mode.encode())
    lib.cg_stop()
    return 0


def instructions(path: str, out: Path) -> dict[str, int]:
    """Instructions of one pass per mode, counted by callgrind (no timing noise)."""
    import shutil
    import subprocess

    client = out / "cgclient.so"
    if not client.exists():
        subprocess.run(["cc", "-O2", "-shared", "-fPIC", str(ROOT / "bench" / "cgclient.c"),
                        "-o", str(client)], check=True)
    counts = {}
    for mode in ("off", "marking", "on"):
        dump = out / f"dissect-callgrind.{mode}"
        subprocess.run([shutil.which("valgrind") or "valgrind", "--tool=callgrind",
                        "--instr-atstart=no", f"--callgrind-out-file={dump}", sys.executable,
                        __file__, "--cg-child", mode, "--cg-capture", path,
                        "--cg-client", str(client)], check=True, capture_output=True,
                       timeout=900)
        # the dump at cg_dump() (the measured pass alone) is part 1: FILE.1
        for line in Path(f"{dump}.1").read_text().splitlines():
            if line.startswith("totals:"):
                counts[mode] = int(line.split()[1])
    return counts


def marked_share(path: str, sampling: dict[str, Any]) -> tuple[int, int, int]:
    clf = Classifier()
    clf.set_sampling(**sampling)
    verdicts = memoryview(bytearray(BATCH))
    reasons = memoryview(bytearray(BATCH))
    rules = memoryview(bytearray(2 * BATCH)).cast("H")
    samples = bytearray(BATCH)
    with CaptureFile(path, BATCH) as cap:
        for batch in cap.batches():
            clf.classify(batch.buf, batch.offsets, batch.lengths, batch.timestamps,
                         batch.linktypes, verdicts, reasons, rules, memoryview(samples))
            clf.drain(1 << 16)
    st = clf.stats()
    return int(st["packets"]), int(st["samples"]), int(st["samples_over_budget"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--packets", type=int, default=200_000,
                    help="demo-ward packets (default 200,000: about 55 minutes of the ward)")
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--out", default=str(ROOT / "bench" / "out"))
    ap.add_argument("--callgrind", action="store_true",
                    help="also count the datapath's instructions per mode under callgrind")
    ap.add_argument("--cg-child", help=argparse.SUPPRESS)
    ap.add_argument("--cg-capture", help=argparse.SUPPRESS)
    ap.add_argument("--cg-client", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.cg_child:
        return cg_child(args.cg_capture, args.cg_child, args.cg_client)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path, n_packets, minutes = ward(out, args.packets)
    print(f"demo ward: {path}: {n_packets:,} packets, {minutes:.0f} minutes of ward time; "
          f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs")

    # 1. fast path off/on, interleaved (the order alternates, to cancel drift)
    fast_path_pass(path, None)                       # warm the page cache and the code
    off: list[float] = []
    on: list[float] = []
    pairs: list[float] = []
    on_stats: list[dict[str, Any]] = []
    for i in range(args.rounds):
        ident = Identification(DissectConfig())
        try:
            for mode in ((0, 1) if i % 2 == 0 else (1, 0)):
                spent, n = fast_path_pass(path, ident if mode else None)
                (on if mode else off).append(n / spent)
            pairs.append(on[-1] / off[-1])
            ident.dissector.flush(60)
            on_stats.append(ident.stats())
        finally:
            ident.close()
    fp = {"off_pps_median": statistics.median(off), "on_pps_median": statistics.median(on),
          "off_pps_best": max(off), "on_pps_best": max(on),
          "ratio_median_of_pairs": statistics.median(pairs),
          "ratio_best": max(on) / max(off), "rounds_off": off, "rounds_on": on,
          "chunks_dropped": sum(s["chunks_dropped"] for s in on_stats),
          "marked_per_pass": statistics.median(s["marked"] for s in on_stats)}
    met = fp["ratio_median_of_pairs"] >= 0.95
    print(f"\nfast path (classify loop), {args.rounds} off/on pairs:")
    print(f"  off  median {fp['off_pps_median'] / 1e6:6.2f} Mpps   best "
          f"{fp['off_pps_best'] / 1e6:6.2f} Mpps")
    print(f"  on   median {fp['on_pps_median'] / 1e6:6.2f} Mpps   best "
          f"{fp['on_pps_best'] / 1e6:6.2f} Mpps   ({fp['marked_per_pass']:.0f} packets "
          "marked and copied out per pass)")
    print(f"  on/off  median of pairs {fp['ratio_median_of_pairs']:.1%}   best/best "
          f"{fp['ratio_best']:.1%}   bar >= 95%: {'met' if met else 'NOT met'}")

    if args.callgrind:
        counts = instructions(path, out)
        fp["instructions"] = counts
        fp["instruction_ratio"] = counts["off"] / counts["on"]
        print(f"  instructions (callgrind, one pass): off {counts['off'] / 1e6:.1f} M, "
              f"marking {counts['marking'] / 1e6:.1f} M "
              f"(+{counts['marking'] / counts['off'] - 1:.1%}), on {counts['on'] / 1e6:.1f} M "
              f"(+{counts['on'] / counts['off'] - 1:.1%}): on/off {fp['instruction_ratio']:.1%}")

    # 2. whole replay off/on
    replay_off, replay_on = [], []
    last: tuple[Identification | None, Any] = (None, None)
    for _ in range(max(3, args.rounds // 4)):
        replay_off.append(replay_pass(path, False)[0])
        elapsed, ident, rs = replay_pass(path, True)
        replay_on.append(elapsed)
        if last[0] is not None:
            last[0].close()
        last = (ident, rs)
    ident, (replayer, summary) = last
    assert ident is not None
    t = time.perf_counter()
    ident.finish(replayer.devices(), timeout=120)
    finish_s = time.perf_counter() - t
    st = ident.stats()
    inv = {d["mac"]: d for d in ident.inventory.as_list()}
    ident.close()
    rp = {"off_s_median": statistics.median(replay_off),
          "on_s_median": statistics.median(replay_on),
          "ratio": statistics.median(replay_off) / statistics.median(replay_on),
          "finish_wait_s": finish_s}
    print("\nwhole replay (Replayer.run; on also feeds the inventory from events):")
    print(f"  off {rp['off_s_median']:.3f} s   on {rp['on_s_median']:.3f} s   rate on/off "
          f"{rp['ratio']:.1%}   then {finish_s:.2f} s waiting for the worker to finish")

    # 3. shares
    total = summary.packets
    pk, marked_default, over_default = marked_share(path, DEFAULT_SAMPLING)
    _, marked_tuned, over_tuned = marked_share(path, SAMPLING)
    shares = {
        "packets": total,
        "default_budgets": DEFAULT_SAMPLING, "tuned_budgets": SAMPLING,
        "marked_default": marked_default, "marked_default_share": marked_default / pk,
        "marked_tuned": marked_tuned, "marked_tuned_share": marked_tuned / pk,
        "over_budget_tuned": over_tuned,
        "to_pyshark": st["packets_to_pyshark"],
        "to_pyshark_share": st["packets_to_pyshark"] / total,
        "triage_kept": st["triage_kept"], "triage_dropped": st["triage_dropped"],
        "dropped_chunks": st["chunks_dropped"], "worker_runs": st["runs"],
    }
    print(f"\nshares of the ward's {total:,} packets:")
    print(f"  marked, classifier default budgets {DEFAULT_SAMPLING}: {marked_default:,} "
          f"({marked_default / pk:.2%})")
    print(f"  marked, tuned budgets {SAMPLING}: {marked_tuned:,} ({marked_tuned / pk:.2%})")
    print(f"  sent to pyshark after triage: {st['packets_to_pyshark']:,} "
          f"({shares['to_pyshark_share']:.3%})   bar <= 0.1%: "
          f"{'met' if shares['to_pyshark_share'] <= 0.001 else 'NOT met'}")
    print(f"  triage kept {st['triage_kept']}")
    print(f"  chunks dropped {st['chunks_dropped']}, worker runs {st['runs']}, "
          f"restarts {st['worker_timeouts'] + st['worker_rss_kills'] + st['worker_crashes']}")
    cpu_per_hour = st["worker_cpu_s"] / (minutes / 60)
    shares["worker_cpu_s"] = st["worker_cpu_s"]
    shares["worker_cpu_s_per_ward_hour"] = cpu_per_hour
    print(f"  worker CPU (pyshark + tshark, nice 19, another core): {st['worker_cpu_s']:.2f} s "
          f"for the ward's {minutes:.0f} minutes = {cpu_per_hour:.2f} s per hour of ward")

    # 4. identification
    from demoward.ward import DEVICES, UNKNOWN

    rows = []
    for d in list(DEVICES) + list(UNKNOWN):
        got = inv.get(d.mac, {})
        rows.append({"device": d.name, "expected": d.device_class, "class": got.get("class"),
                     "confidence": got.get("confidence")})
    right = sum(r["class"] == r["expected"] for r in rows)
    print(f"\nidentified with the right class: {right}/{len(rows)}")
    for r in rows:
        if r["class"] != r["expected"]:
            print(f"  WRONG {r['device']}: {r['class']} (expected {r['expected']})")
    results = {"ward": {"packets": n_packets, "minutes": minutes}, "fast_path": fp,
               "replay": rp, "shares": shares, "identification": rows,
               "load_average": os.getloadavg()[0], "cpus": os.cpu_count()}
    (out / "dissect-results.json").write_text(json.dumps(results, indent=2))
    print(f"\n{out / 'dissect-results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
