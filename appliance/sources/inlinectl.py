"""The inline datapath out of process: the fail-open watchdog and maintenance commands.

    python -m appliance.sources.inlinectl watchdog --heartbeat-fd N ...   (started by the
                                                           NFQUEUE source, never by hand)
    python -m appliance.sources.inlinectl status|bypass|remove|install --bridge br0

The rules themselves are appliance.sources.netfilter's; this is what runs beside the daemon
(the watchdog, in its own process so it outlives a stopped classifier) and what a technician
or the image's bypass unit runs without a daemon.
"""

from __future__ import annotations

import argparse
import os
import select
import sys
import time
from typing import Any

from appliance.sources.netfilter import DEFAULT_MASK, InlineError, InlineRules


def watchdog(rules: InlineRules, heartbeat: int, stall: float = 0.5, interval: float = 0.05,
             log: Any = None) -> None:
    """Fail open while the classifier stops turning its packet loop.

    Runs in its own process, so it keeps running when the classifier is stopped (SIGSTOP),
    hung in a system call, or spinning in the GIL. The classifier writes a byte to the pipe
    `heartbeat` (this end: its read side) as its loop turns, every `stall`/5 (or 100 ms).
    Silence for `stall` seconds means nobody is taking the queue's packets, so the queue
    rule becomes ACCEPT ("failopen"); flows already decided stay decided. When the beats
    come back, the queue rule returns. Without this a quiet ward would wait for the queue
    to fill (max_len packets) before the kernel's own fail-open flag took over.
    A pipe, not the kernel's queue counters: /proc/net/netfilter/nfnetlink_queue is
    readable by root only, and the daemon runs as its own user.
    It exits when the pipe closes (the classifier is gone): --queue-bypass covers that.
    """
    say = log or (lambda msg: print(f"wardtap-watchdog: {msg}", file=sys.stderr, flush=True))
    failed_open = tried = False
    last_beat = time.monotonic()
    while True:
        ready, _, _ = select.select([heartbeat], [], [], interval)
        now = time.monotonic()
        if ready:
            if not os.read(heartbeat, 4096):
                return
            last_beat = now
        silent = now - last_beat
        if silent >= stall and not tried:
            # once per silence: not enforcing (bypass) or a failing iptables is not retried
            tried = True
            try:
                failed_open = rules.fail_open()
            except InlineError as exc:
                say(f"cannot fail open: {exc}")
            if failed_open:
                say(f"classifier silent for {silent:.2f} s: failing open (queue {rules.queue})")
        elif silent < stall:
            tried = False
        if silent < stall and failed_open:
            try:
                rules.resume()
                failed_open = False
                say(f"classifier turning again: enforcing (queue {rules.queue})")
            except InlineError as exc:
                say(f"cannot resume: {exc}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m appliance.sources.inlinectl",
                                     description="wardtap inline enforcement rules")
    parser.add_argument("command", choices=["install", "bypass", "remove", "status",
                                            "watchdog"])
    parser.add_argument("--bridge", default="br0")
    parser.add_argument("--queue", type=int, default=0)
    parser.add_argument("--mask", type=lambda s: int(s, 0), default=DEFAULT_MASK)
    parser.add_argument("--heartbeat-fd", type=int, default=-1,
                        help="watchdog: the read end of the classifier's heartbeat pipe")
    parser.add_argument("--stall-ms", type=float, default=500.0)
    args = parser.parse_args(argv)
    rules = InlineRules(args.bridge, args.queue, args.mask)
    try:
        if args.command == "install":
            print(f"enforcing on {args.bridge}, queue {args.queue}, epoch {rules.install()}")
        elif args.command == "bypass":
            rules.bypass()
        elif args.command == "remove":
            rules.remove()
        elif args.command == "status":
            import json

            print(json.dumps(rules.status(), indent=2))
        elif args.heartbeat_fd < 0:
            parser.error("watchdog needs --heartbeat-fd (the classifier starts it)")
        else:
            watchdog(rules, args.heartbeat_fd, args.stall_ms / 1000)
    except InlineError as exc:
        print(f"wardtap: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
