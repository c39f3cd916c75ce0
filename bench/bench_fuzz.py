"""Run every fuzz target for a stated time; report executions, crashes and hangs.

    .venv/bin/python bench/bench_fuzz.py --seconds 600            # each target 10 minutes
    .venv/bin/python bench/bench_fuzz.py --seconds 60 --only policy,command --jobs 2
    .venv/bin/python bench/bench_fuzz.py --total 10000000 --jobs 2 --nice 10

A target is `tests/fuzz/fuzz_<name>.py` with its seed corpus in `tests/fuzz/corpus/<name>/`
(tests/fuzz/fuzzkit.py); each is run under libFuzzer (atheris) with `-timeout=1`, so an
input that takes more than a second counts as a hang, a failure like a crash. New inputs go
to `--out`/corpus-<name> (kept between runs, so a later run starts where this one stopped);
crash, timeout and out-of-memory inputs to `--out` as `<name>-crash-*` etc. With `--total`,
rounds of `--seconds` are run until the executions over all targets reach it.

Prints one line per target and round, then the totals; writes `--out`/fuzz.json. Exit 1 when
any target crashed or hung. It is a measurement, not a test (the suite runs each target
briefly in tests/fuzz/test_fuzz_targets.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "fuzz"))

import fuzzkit  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=60.0, help="per target and round")
    p.add_argument("--total", type=int, default=0,
                   help="keep running rounds until this many executions over all targets")
    p.add_argument("--only", default="", help="comma-separated target names (default: all)")
    p.add_argument("--jobs", type=int, default=1, help="targets run at once")
    p.add_argument("--nice", type=int, default=0, help="run the targets at this niceness")
    p.add_argument("--out", default=str(ROOT / "bench" / "out" / "fuzz"))
    args = p.parse_args()
    names = [n for n in fuzzkit.targets() if not args.only or n in args.only.split(",")]
    if not names:
        print(f"no such target; targets: {', '.join(fuzzkit.targets())}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    totals = {n: {"executions": 0, "seconds": 0.0, "rounds": 0, "crashes": [],
                  "returncodes": []} for n in names}
    started = time.time()
    round_no = 0
    while True:
        round_no += 1

        def one(name: str, round_no: int = round_no) -> fuzzkit.Run:
            return fuzzkit.run(name, seconds=args.seconds, workdir=out, seed=round_no,
                               nice=args.nice)

        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            runs = list(pool.map(one, names))
        for r in runs:
            t = totals[r.name]
            t["executions"] += r.executions
            t["seconds"] += r.seconds
            t["rounds"] += 1
            t["crashes"] = sorted(set(t["crashes"]) | set(r.crashes))
            t["returncodes"].append(r.returncode)
            rate = r.executions / r.seconds if r.seconds else 0.0
            print(f"round {round_no}  {r.name:10} {r.executions:>12,} executions in "
                  f"{r.seconds:6.0f} s ({rate:,.0f}/s)  crashes+hangs {len(r.crashes)}  "
                  f"exit {r.returncode}", flush=True)
            if not r.clean:
                print(r.tail, flush=True)
        done = sum(t["executions"] for t in totals.values())
        failed = any(not r.clean for r in runs)
        if failed or not args.total or done >= args.total:
            break
    total = sum(t["executions"] for t in totals.values())
    bad = sum(len(t["crashes"]) for t in totals.values())
    bad_exit = sum(1 for t in totals.values() for rc in t["returncodes"] if rc)
    print(f"total {total:,} executions over {len(names)} targets in "
          f"{time.time() - started:,.0f} s wall; crashes and hangs (over {fuzzkit.HANG_S} s): "
          f"{bad}; failed runs: {bad_exit}")
    report = {"targets": totals, "total_executions": total, "crashes_and_hangs": bad,
              "failed_runs": bad_exit, "hang_s": fuzzkit.HANG_S, "seconds_per_round":
              args.seconds, "wall_s": round(time.time() - started, 1),
              "load_average": os.getloadavg(), "finished": time.time()}
    (out / "fuzz.json").write_text(json.dumps(report, indent=2) + "\n")
    return 1 if bad or bad_exit else 0


if __name__ == "__main__":
    sys.exit(main())
