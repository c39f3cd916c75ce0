"""MQTT reporting benchmarks against a real mosquitto on loopback.

    .venv/bin/python bench/bench_mqtt.py [--events 50000] [--loss-events 100000] [--json]

1. throughput: events/s from the classifier's event ring (a capture of distinct denied
   flows replayed through the fast path) through the SQLite spool to the broker's PUBACK
   and the deletion from the spool. Bar: >= 5,000 events/s persisted and acknowledged.
2. messages per packet on the demo ward (demoward.ward.write_demo_ward): every message
   the broker received on the appliance's topics, divided by packets. Measured twice: a
   replay at full speed, and a paced replay at `--speed` times ward time with every interval
   (stats, summary window, linger) divided by the same factor, which is the ward's own
   message rate compressed. Bar: < 1/1000.
3. loss and duplication: `--loss-events` events from demoward.loadgen at `--rate`
   across 10 broker restarts and 3 kill -9 of the appliance; the consumer is the real
   collector (de-duplicates by event id). Bar: zero lost, zero duplicated after de-dup.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "fleet")]

from brokerkit import Broker, spool_facts, wait_for  # noqa: E402

from appliance.common.capwriter import PcapWriter  # noqa: E402
from appliance.contract.broker import BrokerSettings, topic  # noqa: E402
from appliance.fleet.collector import Collector  # noqa: E402
from appliance.outputs.mqtt import MqttOutput, ReporterSettings  # noqa: E402
from appliance.policy.model import parse_policy  # noqa: E402
from appliance.replay.runner import Replayer  # noqa: E402
from demoward.ward import DEMO_POLICY, write_demo_ward  # noqa: E402


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    return ~(s + (s >> 16)) & 0xFFFF


def write_denied_flows(path: str, flows: int) -> None:
    """`flows` TCP SYNs, each a new flow the demo policy denies (distinct src/dst pairs)."""
    router = bytes.fromhex("0026cb4a1001")
    t0 = 1_700_000_000 * 10**9
    with open(path, "wb") as fh:
        w = PcapWriter(fh)
        for i in range(flows):
            mac = bytes.fromhex("02a0") + struct.pack("!I", i % 200)
            src = socket.inet_aton(f"10.40.{1 + (i >> 16) % 200}.{(i >> 8) & 255}")
            src = src[:3] + bytes([i & 255])
            dst = socket.inet_aton(f"10.20.{(i >> 8) & 255}.{i & 255}")
            tcp = struct.pack("!HHIIBBHHH", 40000 + i % 20000, 4444, i, 0, 5 << 4, 0x02,
                              64240, 0, 0)
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, i & 0xFFFF, 0, 64, 6, 0, src, dst)
            ip = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:]
            w.write(router + mac + b"\x08\x00" + ip + tcp, t0 + i * 1000)


class Counter:
    """Counts every message the broker delivers on one appliance's topics."""

    def __init__(self, broker: Broker, site: str, appliance: str) -> None:
        from appliance.fleet.client import FleetClient

        self.fc = FleetClient(BrokerSettings.from_options(broker.url))
        self.fc.__enter__()
        self.fc.subscribe([topic(site, appliance, "#")])

    def count(self) -> dict[str, int]:
        import queue

        out: dict[str, int] = getattr(self, "_counts", {})
        while True:
            try:
                msg = self.fc.messages.get_nowait()
            except queue.Empty:
                break
            leaf = msg.topic.rsplit("/", 1)[1]
            out[leaf] = out.get(leaf, 0) + 1
        self._counts = out
        return dict(out)

    def close(self) -> None:
        self.fc.close()


def _settings(broker: Broker, spool: str, **extra: Any) -> ReporterSettings:
    return ReporterSettings.from_options({"url": broker.url, "site": "bench", "appliance":
                                          "ward-1", "spool": spool, **extra})


def bench_throughput(broker: Broker, work: Path, flows: int) -> dict[str, Any]:
    capture = str(work / "denied.pcap")
    write_denied_flows(capture, flows)
    counter = Counter(broker, "bench", "ward-1")     # a subscriber, so events are delivered
    out = MqttOutput(_settings(broker, str(work / "tp.db")), mode="monitor")
    wait_for(out.connected.is_set, what="the connection")
    replayer = Replayer(parse_policy(DEMO_POLICY), "monitor", flow_capacity=1 << 17)
    replayer.on_events = out.publish
    t0 = time.perf_counter()
    summary = replayer.run([capture])
    t_spooled = time.perf_counter() - t0
    spooled = out.counters["events_spooled"]
    wait_for(lambda: out.spool.depth() == 0, timeout=300, interval=0.005, what="all acks")
    elapsed = time.perf_counter() - t0
    acked = out.counters["acknowledged"]
    result = {"packets": summary.packets, "violations": summary.violations,
              "events_spooled": spooled, "events_acknowledged": acked,
              "messages": out.counters["messages"], "spool_s": round(t_spooled, 3),
              "elapsed_s": round(elapsed, 3),
              "events_per_s": round(acked / elapsed), "bar": 5000,
              "pass": acked == spooled and acked / elapsed >= 5000}
    out.close()
    counter.close()
    return result


def bench_messages_full_speed(broker: Broker, work: Path, packets: int) -> dict[str, Any]:
    capture = str(work / "ward.pcap")
    write_demo_ward(capture, packets=packets)
    counter = Counter(broker, "bench", "ward-2")
    out = MqttOutput(ReporterSettings.from_options({
        "url": broker.url, "site": "bench", "appliance": "ward-2",
        "spool": str(work / "ms.db")}), mode="monitor")
    wait_for(out.connected.is_set, what="the connection")
    replayer = Replayer(parse_policy(DEMO_POLICY), "monitor")
    replayer.on_events = out.publish
    out.publish([{"type": "started", "mode": "monitor", "ts": time.time()}])
    replayer.run([capture])
    out.snapshot(replayer.classifier.stats(), replayer.devices())
    out.send_stats(replayer.classifier.stats(), replayer.devices())
    out.close()
    wait_for(lambda: counter.count().get("state", 0) >= 2, what="the offline message")
    counts = counter.count()
    counter.close()
    total = sum(counts.values())
    return {"packets": packets, "messages": total, "by_topic": counts,
            "messages_per_packet": total / packets, "pass": total / packets < 1 / 1000}


_DEFAULTS = ReporterSettings.__dataclass_fields__
WARD_INTERVALS = {k: float(_DEFAULTS[k].default)  # type: ignore[arg-type]
                  for k in ("stats_interval", "inventory_interval", "summary_window", "linger",
                            "min_interval")}


def bench_messages_ward_time(broker: Broker, work: Path, packets: int,
                             speed: float) -> dict[str, Any]:
    """The demo ward paced at `speed` x ward time, every interval divided by `speed`."""
    from array import array

    from appliance.common.records import device_dict, event_dict
    from appliance.policy.model import compile_policy
    from appliance.sources.capture import CaptureFile
    from fastpath import Classifier

    capture = str(work / "ward.pcap")
    if not os.path.exists(capture):
        write_demo_ward(capture, packets=packets)
    counter = Counter(broker, "bench", "ward-3")
    out = MqttOutput(ReporterSettings.from_options({
        "url": broker.url, "site": "bench", "appliance": "ward-3",
        "spool": str(work / "wt.db"), **{k: v / speed for k, v in WARD_INTERVALS.items()}}),
        mode="monitor")
    wait_for(out.connected.is_set, what="the connection")
    policy = parse_policy(DEMO_POLICY)
    clf = Classifier()
    clf.set_mode("monitor")
    clf.set_policy(compile_policy(policy))
    batch_size = 32
    verdicts = memoryview(array("B", bytes(batch_size)))
    reasons = memoryview(array("B", bytes(batch_size)))
    rules = memoryview(array("H", bytes(2 * batch_size)))
    out.publish([{"type": "started", "mode": "monitor", "ts": time.time()}])
    wall0 = time.monotonic()
    ward0 = None
    next_snapshot = wall0 + 10 / speed            # the daemon's SNAPSHOT_INTERVAL, scaled
    with CaptureFile(capture, batch_size) as cap:
        for batch in cap.batches():
            first_ts = int(batch.timestamps[0])
            ward0 = first_ts if ward0 is None else ward0
            delay = wall0 + (first_ts - ward0) / 1e9 / speed - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            clf.classify(batch.buf, batch.offsets, batch.lengths, batch.timestamps,
                         batch.linktypes, verdicts, reasons, rules)
            records = clf.drain(8192)
            if records:
                out.publish([event_dict(r, policy.rule_name) for r in records])
            if time.monotonic() >= next_snapshot:
                out.snapshot(clf.stats(), [device_dict(r) for r in clf.device_list()])
                next_snapshot += 10 / speed
    ward_s = (int(batch.timestamps[batch.count - 1]) - (ward0 or 0)) / 1e9
    out.snapshot(clf.stats(), [device_dict(r) for r in clf.device_list()])
    out.close()
    wait_for(lambda: counter.count().get("state", 0) >= 2, what="the offline message")
    counts = counter.count()
    counter.close()
    total = sum(counts.values())
    return {"packets": packets, "ward_time_s": round(ward_s, 1), "speed": speed,
            "messages": total, "by_topic": counts, "messages_per_packet": total / packets,
            "pass": total / packets < 1 / 1000}


def bench_loss(broker: Broker, work: Path, events: int, rate: float, restarts: int = 10,
               kills: int = 3) -> dict[str, Any]:
    spool = work / "loss.db"
    settings = BrokerSettings.from_options(broker.url)
    settings.reconnect_max = 1
    collector = Collector(str(work / "fleet.db"), settings, collector_id="bench-collector")
    collector.start()
    wait_for(collector.subscribed.is_set, what="the collector")
    args = [sys.executable, "-m", "demoward.loadgen", "--broker", broker.url,
            "--site", "bench", "--appliance", "gen-1", "--spool", str(spool), "--events",
            str(events), "--rate", str(rate), "--reconnect-max", "1"]
    procs: list[subprocess.Popen[bytes]] = []

    def launch() -> None:
        procs.append(subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL))

    def committed() -> int:
        return spool_facts(spool)[1]

    plan = sorted([("restart", events * (k + 0.5) / (restarts + 1)) for k in range(restarts)]
                  + [("kill", events * (k + 1) / (kills + 1) + events / 50)
                     for k in range(kills)], key=lambda x: x[1])
    t0 = time.perf_counter()
    launch()
    done_restarts = done_kills = 0
    for action, at in plan:
        wait_for(lambda at=at: committed() >= at, timeout=120, what=f"{at:.0f} events")
        if action == "restart":
            broker.restart()
            done_restarts += 1
        else:
            procs[-1].kill()
            procs[-1].wait()
            done_kills += 1
            launch()
    rc = procs[-1].wait(timeout=300)
    epoch, last, depth = spool_facts(spool)
    wait_for(lambda: collector.counts["events_new"] >= events, timeout=120,
             what="the collector to catch up")
    elapsed = time.perf_counter() - t0
    import sqlite3

    conn = sqlite3.connect(work / "fleet.db")
    ids = {i for (i,) in conn.execute("SELECT id FROM events")}
    ns = [json.loads(p)["n"] for (p,) in conn.execute("SELECT payload FROM events")]
    conn.close()
    collector.close()
    expected = {f"{epoch}-{i}" for i in range(1, last + 1)}
    lost = len(expected - ids)
    invented = len(ids - expected)
    unique_n = len(set(ns))
    return {"events": events, "broker_restarts": done_restarts, "appliance_kill9": done_kills,
            "loadgen_exit": rc, "spooled": last, "left_in_spool": depth,
            "received_unique": len(ids), "lost": lost, "invented": invented,
            "duplicates_received_and_dropped": collector.counts["events_duplicate"],
            "duplicated_after_dedup": len(ns) - unique_n,
            "elapsed_s": round(elapsed, 1),
            "pass": (lost == 0 and invented == 0 and len(ns) == unique_n == events
                     and last == events)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=50_000, help="throughput: denied flows")
    p.add_argument("--packets", type=int, default=20_000, help="demo ward packets")
    p.add_argument("--speed", type=float, default=20.0, help="ward-time run: speed-up")
    p.add_argument("--loss-events", type=int, default=100_000)
    p.add_argument("--rate", type=float, default=5000.0, help="loss run: events/s")
    p.add_argument("--only", choices=["throughput", "messages", "ward-time", "loss"])
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    results: dict[str, Any] = {"machine": f"{os.cpu_count()} CPUs, {sys.platform}",
                               "mosquitto": "loopback, plain listener"}
    with tempfile.TemporaryDirectory(prefix="wardtap-bench-mqtt-") as tmp:
        work = Path(tmp)
        broker = Broker(work / "broker", tls=False)
        broker.start()
        try:
            if args.only in (None, "throughput"):
                results["throughput"] = bench_throughput(broker, work, args.events)
            if args.only in (None, "messages"):
                results["messages_full_speed"] = bench_messages_full_speed(broker, work,
                                                                           args.packets)
            if args.only in (None, "ward-time"):
                results["messages_ward_time"] = bench_messages_ward_time(
                    broker, work, args.packets, args.speed)
            if args.only in (None, "loss"):
                results["loss"] = bench_loss(broker, work, args.loss_events, args.rate)
        finally:
            broker.stop(kill=True)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for name, r in results.items():
            print(f"{name}: {json.dumps(r)}")
    ok = all(r.get("pass", True) for r in results.values() if isinstance(r, dict))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
