"""A synthetic event source driving a real MQTT reporter (soak tests and benchmarks).

    python -m demoward.loadgen --broker URL --site S --appliance A --spool FILE \\
        --events 100000 --rate 5000

Publishes `--events` distinct violation events through appliance.outputs.mqtt.MqttOutput
(spool, in-flight window, acknowledgements: the same code as the daemon), in batches of
`--batch` like the daemon's event drain. Killed and started again with the same spool, it
carries on from the number of events already committed there, so a run killed with
SIGKILL any number of times ends with exactly `--events` events spooled. It exits once all
of them are acknowledged. Progress goes to stdout as JSON lines.

`--appliances N` simulates N appliances in this one process (`APPLIANCE-0000` ...; spools
`SPOOL.0` ...), each with its own MQTT connection, spool and `--events` events, published in
turns (the fleet benchmarks: bench/bench_fleet.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from appliance.outputs.mqtt import MqttOutput, ReporterSettings


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m demoward.loadgen")
    p.add_argument("--broker", required=True)
    p.add_argument("--site", required=True)
    p.add_argument("--appliance", required=True)
    p.add_argument("--spool", required=True)
    p.add_argument("--events", type=int, required=True)
    p.add_argument("--rate", type=float, default=0.0, help="events/s (0: as fast as it goes)")
    p.add_argument("--batch", type=int, default=256, help="events per publish() call")
    p.add_argument("--inflight", type=int, default=100)
    p.add_argument("--per-message", type=int, default=100)
    p.add_argument("--ca")
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--reconnect-max", type=float, default=2.0)
    p.add_argument("--drain-timeout", type=float, default=120.0)
    p.add_argument("--appliances", type=int, default=1,
                   help="simulate this many appliances in this process")
    args = p.parse_args(argv)
    if args.appliances > 1:
        return _many(args)
    logging.basicConfig(level="WARNING", stream=sys.stderr,
                        format="%(asctime)s loadgen %(levelname)s %(message)s")
    settings = ReporterSettings.from_options({
        "url": args.broker, "site": args.site, "appliance": args.appliance,
        "spool": args.spool, "ca": args.ca, "cert": args.tls_cert, "key": args.tls_key,
        "inflight": args.inflight, "batch": args.per_message, "linger": 0.02,
        "min_interval": 0.02,
        "summary_window": 0, "stats_interval": 1e12, "reconnect_max": args.reconnect_max,
        "drain_timeout": 0.0})
    out = MqttOutput(settings, mode="monitor")
    done = out.spool.max_id()           # events committed by earlier runs of this spool
    start = time.monotonic()
    first = done
    print(json.dumps({"resumed_at": done, "depth": out.spool.depth()}), flush=True)
    last_report = 0.0
    while done < args.events:
        n = min(args.batch, args.events - done)
        now = time.time()
        out.publish([{"type": "violation", "ts": now, "n": done + k,
                      "src": f"10.{(done + k) >> 16 & 255}.{(done + k) >> 8 & 255}."
                             f"{(done + k) & 255}",
                      "dst": "10.20.0.40", "proto": 6, "dport": 443, "vlan": None,
                      "reason": "no_rule", "verdict": "deny"} for k in range(n)])
        done += n
        if args.rate:
            ahead = (done - first) / args.rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
        if time.monotonic() - last_report > 0.5:
            last_report = time.monotonic()
            print(json.dumps({"committed": done, "depth": out.spool.depth()}), flush=True)
    print(json.dumps({"committed": done, "depth": out.spool.depth()}), flush=True)
    deadline = time.monotonic() + args.drain_timeout
    while out.spool.depth() and time.monotonic() < deadline:
        time.sleep(0.05)
    depth = out.spool.depth()
    out.close()
    print(json.dumps({"drained": depth == 0, "depth": depth,
                      "elapsed_s": round(time.monotonic() - start, 3)}), flush=True)
    return 0 if depth == 0 else 1


def _event(n: int, now: float) -> dict[str, object]:
    return {"type": "violation", "ts": now, "n": n,
            "src": f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}", "dst": "10.20.0.40",
            "proto": 6, "dport": 443, "vlan": None, "reason": "no_rule", "verdict": "deny"}


def _many(args: argparse.Namespace) -> int:
    """N appliances, one process: each its own reporter, spool and connection."""
    outs = []
    for i in range(args.appliances):
        settings = ReporterSettings.from_options({
            "url": args.broker, "site": args.site, "appliance": f"{args.appliance}-{i:04d}",
            "spool": f"{args.spool}.{i}", "ca": args.ca, "cert": args.tls_cert,
            "key": args.tls_key, "inflight": args.inflight, "batch": args.per_message,
            "linger": 0.05, "min_interval": 0.05, "summary_window": 0,
            "stats_interval": 1e12, "reconnect_max": args.reconnect_max,
            "drain_timeout": 0.0})
        outs.append(MqttOutput(settings, mode="monitor"))
    start = time.monotonic()
    print(json.dumps({"appliances": len(outs), "connected_s":
                      round(time.monotonic() - start, 3)}), flush=True)
    done = [out.spool.max_id() for out in outs]
    total, sent = args.events * len(outs), sum(done)
    first = sent
    while sent < total:
        for k, out in enumerate(outs):
            n = min(args.batch, args.events - done[k])
            if n <= 0:
                continue
            now = time.time()
            out.publish([_event(done[k] + j, now) for j in range(n)])
            done[k] += n
            sent += n
            if args.rate:
                ahead = (sent - first) / args.rate - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)
    published = time.monotonic()
    print(json.dumps({"committed": sent, "publish_s": round(published - start, 3)}),
          flush=True)
    deadline = time.monotonic() + args.drain_timeout
    while any(out.spool.depth() for out in outs) and time.monotonic() < deadline:
        time.sleep(0.1)
    depth = sum(out.spool.depth() for out in outs)
    drained = time.monotonic()
    for out in outs:
        out.close()
    print(json.dumps({"drained": depth == 0, "depth": depth,
                      "elapsed_s": round(drained - start, 3)}), flush=True)
    return 0 if depth == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
