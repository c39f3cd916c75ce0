"""A live flood of a million new flows on the tap: the allowed conversations keep their
verdicts and counters.

    sudo .venv/bin/python bench/bench_flood_live.py                    # 1M flows, 100k/s
    sudo .venv/bin/python bench/bench_flood_live.py --flows 200000 --rate 50000 --json

Topology (tests/netns.py): ward -- appliance (br0 bridging ward0 and uplink0) -- uplink.
`wardtap run` watches ward0 (the tap, AF_PACKET) in monitor mode with the daemon's default
flow table (65,536 slots), a store, and UDP flows ending after --udp-timeout idle seconds.
From the ward namespace, the kernel's own UDP stack sends:
- CONVERSATIONS allowed conversations (ward -> uplink udp/53, each from its own port), one
  datagram each per round, ROUNDS rounds;
- between the rounds, --flows datagrams each opening a new flow (16 source ports x up to
  62,500 destination ports, which the policy does not allow), paced to --rate a second.
The uplink answers the flood with ICMP port unreachable (rate-limited by its kernel), which
the classifier attributes to the flows they are about.

Then the conversations go idle and end; the daemon is stopped and its store read. Reported:
the daemon's counters (flows created, evicted, evicted while allowed, kernel drops), its
CPU time and peak RSS, and for each allowed conversation how many flows it became (1: never
evicted and started again), their verdict, rule and end, and the packets counted in them
against the datagrams sent. Nothing is asserted: this is a measurement (bench/README.md).
tests/datapath/test_flood_live.py is the same shape at 20,000 flows, asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT, ROOT / "tests"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from netns import UPLINK_IP, WARD_IP, Ward, wait_for  # noqa: E402
from policies import ward_dns  # noqa: E402

from appliance.common.control import request  # noqa: E402

CONVERSATIONS = 20
ROUNDS = 10
SOURCES = 16           # flood source ports: SOURCES x (flows / SOURCES) destination ports

# argv: destination, conversations, rounds, flood flows, flood rate (datagrams/s), sources.
SEND = """
import socket, sys, time
dst, conv, rounds, flood, rate, nsrc = sys.argv[1], *map(int, sys.argv[2:7])
def bound(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("", port))
    return s
convs = [bound(41000 + i) for i in range(conv)]
sources = [bound(30000 + i) for i in range(nsrc)]
start, sent = time.monotonic(), 0
for r in range(rounds):
    for s in convs:
        s.sendto(b"allowed", (dst, 53))
    stop = flood * (r + 1) // (rounds - 1) if r < rounds - 1 else flood
    while sent < stop:
        try:
            sources[sent % nsrc].sendto(b"flood", (dst, 1024 + sent // nsrc))
        except (BlockingIOError, ConnectionRefusedError):
            pass
        sent += 1
        if sent % 500 == 0:
            ahead = start + sent / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
print(sent, time.monotonic() - start)
"""


def _rss_kib(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
            out[key] = int(value.split()[0])
    return out


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(work: Path, flows: int, rate: int, udp_timeout: float) -> dict[str, Any]:
    if flows > SOURCES * (65535 - 1024):
        raise SystemExit(f"--flows at most {SOURCES * (65535 - 1024):,}")
    (work / "policy.toml").write_text(ward_dns("flood-live", WARD_IP, UPLINK_IP))
    (work / "wardtap.toml").write_text(
        '[appliance]\nmode = "monitor"\n[datapath]\ntype = "tap"\ninterface = "ward0"\n'
        '[policy]\nfile = "policy.toml"\n[store]\npath = "wardtap.db"\n'
        f'[control]\nsocket = "control.sock"\n[tables]\nudp_timeout = {udp_timeout}\n')
    sock = str(work / "control.sock")
    expected = CONVERSATIONS * ROUNDS + flows
    res: dict[str, Any] = {"flows_offered": flows, "rate_offered": rate,
                           "conversations": CONVERSATIONS, "rounds": ROUNDS}
    with Ward() as ward:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        with open(work / "daemon.log", "w") as log_file:
            daemon = ward.popen(ward.appliance, [sys.executable, "-m", "appliance.cli", "run",
                                                 "--config", str(work / "wardtap.toml")],
                                cwd=work, env=env, stdout=log_file, stderr=log_file)
        try:
            wait_for(lambda: os.path.exists(sock) and request(sock, {"cmd": "status"}),
                     timeout=30, what="the daemon to start")
            cpu0 = _cpu_s(daemon.pid)
            sent = ward.exec(ward.ward, [sys.executable, "-c", SEND, UPLINK_IP,
                                         str(CONVERSATIONS), str(ROUNDS), str(flows),
                                         str(rate), str(SOURCES)],
                               timeout=flows / rate * 3 + 60)
            count, seconds = sent.stdout.split()
            res["flood_sent"], res["flood_seconds"] = int(count), float(seconds)
            last = [-1]

            def settled() -> dict[str, Any]:
                status = request(sock, {"cmd": "status"})
                seen = status["counters"]["packets"] + status["source"].get("kernel_drops", 0)
                done = seen >= expected and seen == last[0] \
                    and status["counters"]["pending_events"] == 0
                last[0] = seen
                return status if done else {}

            status = wait_for(settled, timeout=flows / 20_000 + 120, interval=1.0,
                              what="the daemon to take the flood")
            res["cpu_s"] = _cpu_s(daemon.pid) - cpu0
            res["rss_kib"] = _rss_kib(daemon.pid)
            res["counters"] = {k: status["counters"][k] for k in (
                "packets", "flows_created", "flows_ended", "flows_evicted",
                "flows_evicted_allowed")}
            res["kernel_drops"] = status["source"].get("kernel_drops", 0)

            def conversations_ended() -> bool:
                with sqlite3.connect(work / "wardtap.db") as db:
                    return db.execute("SELECT count(*) FROM flows WHERE dport = 53 AND "
                                      "\"end\" = 'idle'").fetchone()[0] >= CONVERSATIONS
            wait_for(conversations_ended, timeout=udp_timeout * 4 + 60, interval=1.0,
                     what="the allowed conversations to end idle")
        finally:
            daemon.terminate()
            daemon.wait(timeout=60)
    with sqlite3.connect(work / "wardtap.db") as db:
        rows = db.execute("SELECT sport, verdict, rule, \"end\", packets FROM flows "
                          "WHERE dport = 53 AND src = ? ORDER BY sport", (WARD_IP,)).fetchall()
        res["stored_flows"] = db.execute("SELECT count(*) FROM flows").fetchone()[0]
        res["stored_violations"] = db.execute("SELECT count(*) FROM violations").fetchone()[0]
    per_port: dict[int, list[tuple[Any, ...]]] = {}
    for row in rows:
        per_port.setdefault(row[0], []).append(row)
    res["allowed"] = {
        "conversations_seen": len(per_port),
        "flows_per_conversation": sorted({len(v) for v in per_port.values()}),
        "verdicts": sorted({(r[1], r[2], r[3]) for v in per_port.values() for r in v}),
        "packets_per_conversation": sorted({sum(r[4] for r in v) for v in per_port.values()}),
        "datagrams_sent_per_conversation": ROUNDS,
    }
    a = res["allowed"]
    res["kept"] = (a["conversations_seen"] == CONVERSATIONS
                   and a["flows_per_conversation"] == [1]
                   and a["verdicts"] == [("allow", "ward-dns", "idle")]
                   and a["packets_per_conversation"] == [ROUNDS]
                   and res["counters"]["flows_evicted_allowed"] == 0)
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--flows", type=int, default=1_000_000)
    p.add_argument("--rate", type=int, default=100_000, help="flood datagrams a second")
    p.add_argument("--udp-timeout", type=float, default=10.0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench_flood_live needs root (network namespaces)")
    with tempfile.TemporaryDirectory(prefix="wardtap-flood-") as tmp:
        res = run(Path(tmp), args.flows, args.rate, args.udp_timeout)
    if args.json:
        print(json.dumps(res, indent=2, default=str))
        return
    c, a = res["counters"], res["allowed"]
    print(f"flood: {res['flood_sent']:,} new flows sent in {res['flood_seconds']:.1f} s "
          f"({res['flood_sent'] / res['flood_seconds']:,.0f}/s)")
    print(f"daemon: {c['packets']:,} packets, {c['flows_created']:,} flows created, "
          f"{c['flows_evicted']:,} evicted ({c['flows_evicted_allowed']} of them allowed), "
          f"{res['kernel_drops']:,} kernel drops; {res['cpu_s']:.1f} s CPU; RSS "
          f"{res['rss_kib'].get('VmRSS', 0) / 1024:.0f} MiB (peak "
          f"{res['rss_kib'].get('VmHWM', 0) / 1024:.0f} MiB; anonymous "
          f"{res['rss_kib'].get('RssAnon', 0) / 1024:.0f} MiB, file "
          f"{res['rss_kib'].get('RssFile', 0) / 1024:.0f} MiB, shared "
          f"{res['rss_kib'].get('RssShmem', 0) / 1024:.0f} MiB)")
    print(f"store: {res['stored_flows']:,} flows, {res['stored_violations']:,} violations")
    print(f"allowed conversations: {a['conversations_seen']} of {CONVERSATIONS}; flows each "
          f"{a['flows_per_conversation']}; {a['verdicts']}; packets each "
          f"{a['packets_per_conversation']} of {ROUNDS} sent")
    print("kept their verdicts and counters" if res["kept"] else "NOT kept")


if __name__ == "__main__":
    main()
