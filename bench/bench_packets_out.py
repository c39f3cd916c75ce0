"""`wardtap replay --packets-out` side by side with a plain `wardtap replay`, in one run.

    .venv/bin/python bench/bench_packets_out.py [--packets 1000000] [--repeat 5] [--out bench/out]

Both replay the same IMIX capture of the demo ward (demoward.ward.write_imix) under the
demo policy, alternately, `--repeat` times each after one untimed warm-up of each. Two
figures per run: the whole process by wall clock (what a user waits for, start-up
included) and the replay loop alone (the `elapsed_s` of `--json`). The ratio is
plain time / time with --packets-out: 1.0 means writing every packet's line is free; the
bar is 0.5. The lines go to a file in --out (a real file system, not /dev/null), and the
script checks the file has one line per packet. It asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
WARDTAP = str(Path(sys.executable).with_name("wardtap"))


def _run(args: list[str]) -> tuple[float, float]:
    started = time.perf_counter()
    done = subprocess.run([WARDTAP, *args, "--json"], capture_output=True, text=True,
                          check=True, cwd=ROOT)
    wall = time.perf_counter() - started
    return wall, float(json.loads(done.stdout)["elapsed_s"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", default=str(BENCH / "out"))
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from demoward.ward import write_demo_policy, write_imix

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    capture = out / f"packets-out-imix-{args.packets}.pcap"
    policy = out / "packets-out-policy.toml"
    if not capture.exists():
        write_imix(str(capture), args.packets)
    write_demo_policy(str(policy))
    lines = out / "packets-out.jsonl"
    plain_cmd = ["replay", str(capture), "--policy", str(policy)]
    lines_cmd = [*plain_cmd, "--packets-out", str(lines)]
    _run(plain_cmd)
    _run(lines_cmd)
    plain, with_lines = [], []
    for _ in range(args.repeat):           # alternately, so load changes hit both alike
        plain.append(_run(plain_cmd))
        with_lines.append(_run(lines_cmd))
    with lines.open("rb") as fh:
        count = sum(1 for _ in fh)
    results = {"packets": args.packets, "repeat": args.repeat, "lines_written": count,
               "load_average": os.getloadavg()}
    print(f"{args.packets:,} packets, {args.repeat} runs each, alternating; load average "
          f"{os.getloadavg()[0]:.2f}; {count:,} lines written")
    print(f"{'':28}{'plain':>14}{'--packets-out':>16}{'ratio':>8}")
    for label, index in (("whole process (wall)", 0), ("replay loop (elapsed_s)", 1)):
        for stat, fn in (("best", min), ("median", statistics.median)):
            a = fn(r[index] for r in plain)
            b = fn(r[index] for r in with_lines)
            ratio = a / b if b else 0.0
            results[f"{label.split()[0]}_{stat}"] = {"plain_s": a, "packets_out_s": b,
                                                     "ratio": ratio}
            print(f"{label + ' ' + stat:28}{args.packets / a:>10,.0f} p/s"
                  f"{args.packets / b:>12,.0f} p/s{ratio:>8.2f}")
    ratio = results["whole_median"]["ratio"]
    print(f"bar: --packets-out at >= 50% of plain replay speed (whole process, median): "
          f"{ratio:.0%} -> {'met' if ratio >= 0.5 else 'NOT met'}")
    (out / "packets-out-results.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
