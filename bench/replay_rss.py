"""Run `wardtap` in this process and record its memory from /proc (bench_replay.py uses it).

    .venv/bin/python bench/replay_rss.py OUT.json replay CAPTURE --policy POLICY --json

Writes OUT.json with two snapshots of /proc/self/status (VmHWM, VmRSS, RssAnon, RssFile,
RssShmem, in KiB): "before_unmap", taken when the first capture is about to be unmapped
(CaptureFile.close), with "capture_mapping_rss", the resident pages of that mapping alone
(from /proc/self/smaps); and "exit", after appliance.cli.main returns. The mapped capture's
pages are file-backed: they count towards RSS, but the kernel can drop them at will.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import appliance.cli  # first: it sets OPENBLAS_NUM_THREADS before numpy is imported
from appliance.sources import capture

FIELDS = ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem")
snapshots: dict[str, dict[str, Any]] = {}


def status() -> dict[str, Any]:
    out: dict[str, Any] = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in FIELDS:
                out[key] = int(value.split()[0])
    return out


def mapping_rss(path: str) -> int:
    """Resident KiB of the mappings of `path` (the capture), from /proc/self/smaps."""
    total, inside = 0, False
    with open("/proc/self/smaps") as fh:
        for line in fh:
            first = line.split(None, 1)[0]
            if "-" in first and not first.endswith(":"):       # a mapping's header line
                inside = line.rstrip("\n").endswith(path)
            elif inside and first == "Rss:":
                total += int(line.split()[1])
    return total


_close = capture.CaptureFile.close


def close(self: capture.CaptureFile) -> None:
    if getattr(self, "_map", None) is not None and "before_unmap" not in snapshots:
        snap = status()
        snap["capture_mapping_rss"] = mapping_rss(self.path)
        snapshots["before_unmap"] = snap
    _close(self)


capture.CaptureFile.close = close  # type: ignore[method-assign]


def main() -> int:
    out = sys.argv[1]
    rc = appliance.cli.main(sys.argv[2:])
    snapshots["exit"] = status()
    with open(out, "w") as fh:
        json.dump(snapshots, fh, indent=2)
    return rc


if __name__ == "__main__":
    sys.exit(main())
