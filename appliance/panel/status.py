"""`wardtap status`: the daemon's answer as the stable document, printed as JSON or drawn.

Kept apart from the console's drawing (appliance.panel.console, rich, passed in as `draw`) so
that `wardtap status --json`, and the one line that says the daemon is not running, answer
without importing rich; only the drawn status pays for it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

from appliance.common.control import ANSWER_TIMEOUT, request

SCHEMA = 1                      # "v" of the --json document; bumped on incompatible changes
REQUEST_TIMEOUT = ANSWER_TIMEOUT + 1.0   # the daemon answers "busy" after ANSWER_TIMEOUT
BUSY = (f"the daemon is running but busy: its main loop did not answer within "
        f"{ANSWER_TIMEOUT:g} s (a hung datapath?); see its log")


# -- the stable document ---------------------------------------------------------------------

def view(answer: dict[str, Any]) -> dict[str, Any]:
    """The daemon's `status` answer as the console's stable document (docs/console.md).

    Every key is always present (null when it does not apply); `details` holds the rest of
    the answer and is not part of the stable contract."""
    c = answer.get("counters") or {}
    source = answer.get("source") or {}
    drops = source.get("kernel_drops", source.get("kernel_dropped"))
    health = answer.get("health") or {}
    integrity = answer.get("integrity")        # only with [integrity] manifests configured
    rate = answer.get("rate") or {}
    broker = answer.get("broker") or {}
    violations = answer.get("violations") or {}
    leds = answer.get("leds")
    return {
        "v": SCHEMA, "ok": True,
        "pid": answer.get("pid"), "mode": answer.get("mode"),
        "datapath": answer.get("datapath"), "uptime_s": answer.get("uptime_s"),
        "policy": answer.get("policy"),
        "policy_fault": answer.get("policy_fault"),
        "health": {"state": "ok", "healthy": True, "datapath_running": True,
                   "batch_failures": 0, **health,
                   "integrity_alarm": (bool(integrity.get("alarm"))
                                       if isinstance(integrity, dict) else None)},
        "counters": {"packets": int(c.get("packets", 0)), "bytes": int(c.get("bytes", 0)),
                     "allowed": int(c.get("allowed", 0)), "denied": int(c.get("denied", 0)),
                     "malformed": int(c.get("malformed", 0)),
                     "kernel_drops": None if drops is None else int(drops)},
        "rate": {"packets_per_s": rate.get("packets_per_s"),
                 "bytes_per_s": rate.get("bytes_per_s"), "window_s": rate.get("window_s"),
                 "history": list(rate.get("history") or [])},
        "flows": {"active": int(c.get("flows_active", 0)),
                  "created": int(c.get("flows_created", 0))},
        "devices": int(c.get("devices", 0)),
        "violations": {"seen": int(violations.get("seen", 0)),
                       "recent": list(violations.get("recent") or [])},
        "broker": {"configured": bool(broker.get("configured")),
                   "connected": bool(broker.get("connected")),
                   "url": broker.get("url"), "spool_depth": broker.get("spool_depth"),
                   "spool_overflow": broker.get("spool_overflow"),
                   "spool_dropped": broker.get("spool_dropped"),
                   "spool_disk_full": broker.get("disk_full"),
                   "spool_held_in_memory": broker.get("held_in_memory")},
        "leds": None if not leds else {
            "patterns": leds.get("patterns") or {}, "line": leds.get("line") or "",
            "colours": leds.get("colours") or {}, "backend": leds.get("backend")},
        "details": {k: answer[k] for k in ("batches", "last_batch_age_s", "reasons", "source",
                                           "memory_bytes", "dissect") if k in answer},
    }



def run_status(socket_path: str, as_json: bool,
               draw: Callable[[dict[str, Any]], None]) -> int:
    """`wardtap status`: 0 answered, 1 busy (or refused), 2 not running (WardtapError).
    `draw` shows the document to a person (appliance.panel.statustext.print_status)."""
    answer = request(socket_path, {"cmd": "status"}, timeout=REQUEST_TIMEOUT)
    if not answer.get("ok"):
        error = str(answer.get("error"))
        busy = error == "busy"
        if as_json:
            print(json.dumps({"v": SCHEMA, "ok": False, "busy": busy, "error": error}))
        print(f"wardtap: {BUSY if busy else 'the daemon answered: ' + error}", file=sys.stderr)
        return 1
    v = view(answer)
    if as_json:
        print(json.dumps(v, indent=2))
        return 0
    draw(v)
    return 0
