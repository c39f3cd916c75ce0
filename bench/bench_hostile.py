"""Faults and floods: the figures behind "hostile input and faults never stop the appliance".

    .venv/bin/python bench/bench_hostile.py                 # every part
    .venv/bin/python bench/bench_hostile.py --only stall,flood --json

Parts (each prints its figures; --json prints them all as one object at the end):

stall    the main loop's longest pause while the largest policy a push can carry (about
         1,800 rules in 256 KiB) is reloaded, against the time loading and compiling it takes
         (what the loop paused for when that ran on it), and the inline datapath's stall
         budget (`stall_ms`, 500 ms). The daemon runs in this process, idle batches every
         0.1 s; the pause is the longest gap between two batches.
flood    a real `wardtap run` replays --flows denied flows (a violation and a flow end each)
         with the MQTT spool, the audit log and the store in one SQLite file, while a
         thread floods it with fleet commands (signed, unsigned, garbage) through a real
         mosquitto that is killed (-9) and restarted --broker-kills times meanwhile (commands
         sent to a dead broker are lost with it). Then every violation and flow end in the
         event log must be in the store:
         "store batches lost" counts the missing ones; "database is locked" and tracebacks
         in the daemon's log are counted too.
disk     the spool on a real loop-mounted ext4 filesystem of --disk-mb MiB, filled, the
         broker away; the broker comes back: how many alerts were taken, delivered and lost,
         the drain time.
hostile  the hostile MQTT messages and files of tests/fleet/test_fleet_hostile.py and
         tests/appliance/test_hostile_files.py, --rounds times over, with mutations of a
         valid signed command: every one rejected and audited, the daemon alive, no
         traceback in any log.

It asserts nothing: it measures. Timing depends on the machine and its load (printed).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "fleet"), str(ROOT / "bench")]

from brokerkit import (  # noqa: E402
    ApplianceProcess,
    Broker,
    fleet_settings,
    quiet_port,
    wait_for,
)

from appliance.common.control import request  # noqa: E402
from appliance.contract.broker import topic  # noqa: E402
from demoward.ward import DEMO_POLICY, write_demo_ward  # noqa: E402

SITE, NAME = "st-marys", "ward4b-01"
STALL_BUDGET_S = 0.5


def big_policy(rules: int = 1800) -> str:
    """`rules` rules between 250 groups, 254 KB: more than a push can carry."""
    parts = ['[policy]\nname = "largest-push"\nversion = 2\n']
    for g in range(250):
        parts.append(f'[groups.g{g}]\nip = ["10.{g}.0.0/16"]\n')
    for i in range(rules):
        parts.append(f'[[rules]]\nname = "rule-{i}"\nfrom = "g{i % 250}"\n'
                     f'to = "g{(i * 7 + 1) % 250}"\nproto = "tcp"\nports = [{1 + i}]\n'
                     f'description = "one of the rules of the largest push"\n')
    return "\n".join(parts)


# -- stall -----------------------------------------------------------------------------------

def bench_stall(work: Path) -> dict[str, Any]:
    from appliance.daemon.policyload import prepare_file
    from appliance.daemon.service import Daemon
    from appliance.system.config import load_config

    write_demo_ward(str(work / "ward.pcap"), packets=2000)
    (work / "policy.toml").write_text(DEMO_POLICY)
    (work / "wardtap.toml").write_text(
        '[appliance]\nmode = "enforce"\n[datapath]\ntype = "replay"\nfiles = ["ward.pcap"]\n'
        'stay = true\n[policy]\nfile = "policy.toml"\n[control]\nsocket = "control.sock"\n'
        '[panel]\nenabled = false\n')
    text = big_policy()
    (work / "big.toml").write_text(text)
    t0 = time.perf_counter()
    prepare_file(str(work / "big.toml"), classes=None, mode="enforce", generation=2)
    on_loop = time.perf_counter() - t0

    daemon = Daemon(load_config(str(work / "wardtap.toml")))
    ticks: list[float] = []
    tick = daemon.notify.tick

    def record(now: float, status: Any) -> None:
        ticks.append(now)
        tick(now, status)

    daemon.notify.tick = record  # type: ignore[method-assign]
    result: dict[str, Any] = {}

    def drive() -> None:
        sock = str(work / "control.sock")
        wait_for(lambda: os.path.exists(sock), timeout=20, what="the control socket")
        time.sleep(1.0)                               # a quiet baseline first
        (work / "policy.toml").write_text(text)
        start = time.monotonic()
        answer = request(sock, {"cmd": "reload"}, timeout=120)
        result.update(answer=answer, window=(start, time.monotonic()))
        time.sleep(0.5)
        daemon.stop.set()

    thread = threading.Thread(target=drive)
    thread.start()
    daemon.run()
    thread.join()
    start, end = result["window"]
    gaps = [b - a for a, b in zip(ticks, ticks[1:], strict=False) if b >= start and a <= end]
    base = [b - a for a, b in zip(ticks, ticks[1:], strict=False) if b < start]
    longest = max(gaps, default=0.0)
    return {"rules": 1800, "bytes": len(text.encode()), "reload_ok": result["answer"]["ok"],
            "reload_s": round(end - start, 3), "load_and_compile_s": round(on_loop, 3),
            "longest_loop_pause_during_reload_s": round(longest, 3),
            "longest_loop_pause_idle_s": round(max(base, default=0.0), 3),
            "stall_budget_s": STALL_BUDGET_S,
            "within_budget": longest < STALL_BUDGET_S,
            "pause_vs_on_loop_ratio": round(on_loop / longest, 1) if longest else None}


# -- flood -----------------------------------------------------------------------------------

def _appliance(work: Path, broker: Broker, files: str, fleet_pub: str, extra: str = ""
               ) -> ApplianceProcess:
    from brokerkit import write_appliance

    d = write_appliance(work / "ap", broker, NAME, packets=3000, fleet_pub=fleet_pub,
                        mode="monitor", extra=extra)
    text = (d / "wardtap.toml").read_text().replace('files = ["ward.pcap"]', f"files = {files}")
    (d / "wardtap.toml").write_text(text)
    return ApplianceProcess(d)


def bench_flood(work: Path, flows: int, rate: int, kills: int) -> dict[str, Any]:
    from bench_mqtt import write_denied_flows

    from appliance.contract.signing import generate_keypair, load_private_key
    from appliance.fleet.client import (
        FleetClient,
        SequenceCounter,
        signed_request,
        unsigned_request,
    )

    broker = Broker(work / "broker")
    broker.start()
    generate_keypair(str(work / "fleet.key"), str(work / "fleet.pub"))
    (work / "ap").mkdir(parents=True, exist_ok=True)
    write_denied_flows(str(work / "ap" / "flows.pcap"), flows)
    app = _appliance(work, broker, '["flows.pcap"]', str(work / "fleet.pub"))
    key = load_private_key(str(work / "fleet.key"))
    counter = SequenceCounter(str(work / "fleet.key.seq"))
    sent = 0
    stop = threading.Event()
    try:
        fc = FleetClient(fleet_settings(broker))
        fc.__enter__()
        app.start()
        wait_for(lambda: fc.appliances(SITE, NAME).get((SITE, NAME), {}).get("state", {})
                 .get("status") == "online", timeout=60, what="the appliance online")

        def flood() -> None:
            nonlocal sent
            kinds = [lambda: unsigned_request("status", {}),
                     lambda: signed_request(key, counter, SITE, NAME, "mode",
                                            {"mode": "monitor"}),
                     lambda: b"{garbage " + os.urandom(8).hex().encode(),
                     lambda: unsigned_request("identify", {"seconds": 3600})]
            while not stop.is_set():
                if fc.client.is_connected():
                    fc.client.publish(topic(SITE, NAME, "cmd"), random.choice(kinds)(), qos=1)
                    sent += 1
                time.sleep(1.0 / rate)

        def faults() -> None:
            for _ in range(kills):
                if stop.wait(3.0):
                    return
                broker.stop(kill=True)                  # the broker dies under the flood
                time.sleep(1.0)
                broker.start()

        flooder = threading.Thread(target=flood)
        flooder.start()
        killer = threading.Thread(target=faults)
        killer.start()
        sock = str(work / "ap" / "control.sock")
        t0 = time.monotonic()
        wait_for(lambda: os.path.exists(sock) and request(sock, {"cmd": "status"})
                 .get("counters", {}).get("packets", 0) >= flows, timeout=600,
                 what="the replay")
        stop.set()
        flooder.join()
        killer.join()
        replay_s = time.monotonic() - t0

        def audited() -> int:
            conn = sqlite3.connect(work / "ap" / "wardtap.db", timeout=30)
            try:
                return int(conn.execute("SELECT count(*) FROM audit WHERE source = 'mqtt'")
                           .fetchone()[0])
            finally:
                conn.close()

        try:                                   # every command is audited: wait for the last
            wait_for(lambda: audited() >= sent, timeout=60, what="every command audited")
        except AssertionError:
            pass                               # reported below as audited < sent
        app.terminate()
        fc.close()
    finally:
        stop.set()
        app.close()
        broker.stop(kill=True)
    events = [json.loads(line) for line in (work / "ap" / "events.jsonl").read_text()
              .splitlines() if line.strip()]
    logged = {"violation": 0, "flow_end": 0}
    for e in events:
        if e["type"] in logged:
            logged[e["type"]] += 1
    conn = sqlite3.connect(work / "ap" / "wardtap.db")
    stored = {"violation": conn.execute("SELECT count(*) FROM violations").fetchone()[0],
              "flow_end": conn.execute("SELECT count(*) FROM flows").fetchone()[0]}
    audited = conn.execute("SELECT count(*) FROM audit WHERE source = 'mqtt'").fetchone()[0]
    conn.close()
    log = app.log()
    return {"flows": flows, "broker_kills": kills, "commands_sent": sent,
            "commands_audited": audited,
            "violations_logged": logged["violation"], "violations_stored": stored["violation"],
            "flow_ends_logged": logged["flow_end"], "flow_ends_stored": stored["flow_end"],
            "store_rows_lost": (logged["violation"] - stored["violation"])
            + (logged["flow_end"] - stored["flow_end"]),
            "database_is_locked_in_log": log.count("database is locked"),
            "tracebacks_in_log": log.count("Traceback"), "seconds": round(replay_s, 1)}


# -- disk ------------------------------------------------------------------------------------

def bench_disk(work: Path, size_mb: int) -> dict[str, Any]:
    from brokerkit import Watcher

    from appliance.contract.broker import BrokerSettings
    from appliance.outputs.mqtt import MqttOutput, ReporterSettings

    image, mnt = work / "disk.img", work / "disk"
    mnt.mkdir()
    subprocess.run(["truncate", "-s", f"{size_mb}M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
    broker = Broker(work / "broker", tls=False, plain_port=quiet_port())
    out = watcher = None
    try:
        settings = ReporterSettings.from_options({
            "url": broker.url, "site": "s1", "appliance": "a1", "spool": str(mnt / "s.db"),
            "linger": 0.01, "min_interval": 0.05, "stats_interval": 3600,
            "reconnect_max": 1, "min_free_bytes": 256 << 10})
        out = MqttOutput(settings, mode="monitor")
        st = os.statvfs(mnt)
        (mnt / "filler").write_bytes(b"\0" * max(0, st.f_bavail * st.f_frsize - (4 << 20)))
        sent = 0
        while not (out.spool.status()["disk_full"]
                   and out.spool.status()["held_in_memory"] >= 2000) and sent < 9000 * 50:
            out.publish([{"type": "new_device", "ts": 1.0, "mac": f"02:00:{sent + i:08x}",
                          "n": sent + i, "pad": "x" * 400} for i in range(200)])
            sent += 200
        full = out.spool.status()
        broker.start()
        watcher = Watcher(BrokerSettings.from_options(broker.url), [topic("s1", "a1", "events")])
        seen: set[int] = set()
        t0 = time.monotonic()

        def drained() -> bool:
            for msg in watcher.poll():
                seen.update(e["n"] for e in json.loads(msg.payload).get("events", [])
                            if "n" in e)
            watcher.seen.clear()
            s = out.spool.status()
            return s["depth"] == 0 and s["held_in_memory"] == 0 and len(seen) >= sent

        wait_for(drained, timeout=600, what="the spool to drain")
        return {"filesystem": f"ext4 on a {size_mb} MiB loop device", "alerts_taken": sent,
                "spooled_when_full": full["depth"], "held_in_memory_when_full":
                full["held_in_memory"], "delivered": len(seen), "lost": sent - len(seen),
                "spool_depth_after": out.spool.status()["depth"],
                "dropped": out.spool.status()["dropped"],
                "drain_s": round(time.monotonic() - t0, 1)}
    finally:
        if watcher is not None:
            watcher.close()
        if out is not None:
            out.close()
        broker.stop(kill=True)
        subprocess.run(["umount", "-l", str(mnt)], check=False)


# -- hostile ---------------------------------------------------------------------------------

def _mutations(payload: bytes, n: int, rng: random.Random) -> list[bytes]:
    out = []
    for _ in range(n):
        b = bytearray(payload)
        for _ in range(rng.randint(1, 8)):
            op = rng.randrange(4)
            pos = rng.randrange(len(b)) if b else 0
            if op == 0 and b:
                b[pos] = rng.randrange(256)
            elif op == 1:
                b[pos:pos] = rng.choice([b"[", b"{", b"NaN", b"1e999", b'"', b"\\", b"\0"]) * \
                    rng.choice([1, 50, 5000])
            elif op == 2 and b:
                del b[pos:pos + rng.randint(1, 16)]
            else:
                b += rng.randbytes(rng.randint(1, 64))
        out.append(bytes(b))
    return out


def bench_hostile(work: Path, rounds: int) -> dict[str, Any]:
    import test_fleet_hostile as h  # the test's payloads

    from appliance.contract.signing import generate_keypair, load_private_key
    from appliance.fleet.client import FleetClient, SequenceCounter, signed_request

    sys.path.insert(0, str(ROOT / "tests"))
    sys.path.insert(0, str(ROOT / "tests" / "appliance"))
    import test_hostile_files as hf

    broker = Broker(work / "broker")
    broker.start()
    generate_keypair(str(work / "fleet.key"), str(work / "fleet.pub"))
    (work / "ap").mkdir(parents=True, exist_ok=True)
    write_demo_ward(str(work / "ap" / "ward.pcap"), packets=3000)
    app = _appliance(work, broker, '["ward.pcap"]', str(work / "fleet.pub"))
    key = load_private_key(str(work / "fleet.key"))
    counter = SequenceCounter(str(work / "fleet.key.seq"))
    rng = random.Random(1)
    answered = unanswered = sent = 0
    try:
        fc = FleetClient(fleet_settings(broker))
        fc.__enter__()
        app.start()
        wait_for(lambda: fc.appliances(SITE, NAME).get((SITE, NAME), {}).get("state", {})
                 .get("status") == "online", timeout=60, what="the appliance online")
        for _ in range(rounds):
            valid = signed_request(key, counter, SITE, NAME, "mode", {"mode": "monitor"})
            payloads = list(h.HOSTILE_PAYLOADS.values()) + _mutations(valid, 40, rng) + [
                signed_request(key, counter, SITE, NAME, "policy", {"policy": h.DEEP})]
            for payload in payloads:
                answer = fc.request([(SITE, NAME)], lambda s, a, p=payload: p, 20)
                sent += 1
                if answer[(SITE, NAME)] is None:
                    unanswered += 1
                else:
                    answered += 1
        alive = app.alive()
        conn = sqlite3.connect(work / "ap" / "wardtap.db")
        audited = conn.execute("SELECT count(*) FROM audit WHERE source = 'mqtt'").fetchone()[0]
        applied_deep = conn.execute("SELECT count(*) FROM audit WHERE command = 'policy' AND "
                                    "outcome = 'applied'").fetchone()[0]
        conn.close()
        app.terminate()
        fc.close()
    finally:
        app.close()
        broker.stop(kill=True)
    # the hostile files, through the command line
    files_run = file_tracebacks = 0
    for case, (text, _) in hf.POLICY_CASES.items():
        path = work / f"{case}.toml"
        path.write_text(text)
        r = subprocess.run([sys.executable, "-m", "appliance.cli", "policy", "check", str(path)],
                           capture_output=True, text=True, cwd=ROOT,
                           env=dict(os.environ, PYTHONPATH=str(ROOT)))
        files_run += 1
        file_tracebacks += "Traceback" in r.stderr
    log = app.log()
    return {"mqtt_messages": sent, "answered": answered, "unanswered": unanswered,
            "audited": audited, "deep_policy_applied": applied_deep, "daemon_alive": alive,
            "tracebacks_in_daemon_log": log.count("Traceback"),
            "hostile_files": files_run, "tracebacks_for_files": file_tracebacks}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="stall,flood,disk,hostile")
    p.add_argument("--flows", type=int, default=100_000)
    p.add_argument("--rate", type=int, default=200, help="flood commands per second")
    p.add_argument("--broker-kills", type=int, default=2,
                   help="kill -9 and restart the broker this often during the flood")
    p.add_argument("--disk-mb", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    results: dict[str, Any] = {"load_average": os.getloadavg()}
    parts = {"stall": lambda w: bench_stall(w), "flood": lambda w: bench_flood(
        w, args.flows, args.rate, args.broker_kills), "disk": lambda w: bench_disk(w, args.disk_mb),
        "hostile": lambda w: bench_hostile(w, args.rounds)}
    for name in args.only.split(","):
        with tempfile.TemporaryDirectory(prefix=f"wardtap-bench-{name}-") as tmp:
            t0 = time.monotonic()
            results[name] = parts[name](Path(tmp))
            results[name]["bench_s"] = round(time.monotonic() - t0, 1)
        print(f"{name}: {json.dumps(results[name])}", flush=True)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
