"""`wardtap` in this process with time marks, for bench_replay.py's wall-time breakdown.

    .venv/bin/python bench/replay_timeline.py MARKS.json replay CAPTURE --policy POLICY --json

Does what the `wardtap` console script does (import appliance.cli, call main) and writes
time.perf_counter() marks to MARKS.json: entering this script (interpreter start-up and
site done), after `import appliance.cli`, and before and after main(). On Linux perf_counter
is CLOCK_MONOTONIC, shared by all processes, so the marks line up with the parent's clock
around spawning and reaping this process.
"""

import time

T_ENTER = time.perf_counter()

import sys  # noqa: E402

from appliance.cli import main  # noqa: E402  (the console script's one import)

T_IMPORTED = time.perf_counter()


def run() -> int:
    t_main = time.perf_counter()
    rc = main(sys.argv[2:])
    t_done = time.perf_counter()
    import json

    with open(sys.argv[1], "w") as fh:
        json.dump({"enter": T_ENTER, "imported": T_IMPORTED, "main_start": t_main,
                   "main_end": t_done, "marks_written": time.perf_counter()}, fh)
    return rc


if __name__ == "__main__":
    sys.exit(run())
