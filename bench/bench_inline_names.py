"""Inline: name and clinical rules against address rules alone, A/B in one run.

    sudo .venv/bin/python bench/bench_inline_names.py [--rounds 12] [--seconds 3]
                                                      [--connects 2000] [--json]

Two inline bridges side by side (tests/netns.py), each with `wardtap run` enforcing:
- address: the allow-list of bench/bench_inline.py (the ward may reach the uplink on the
           measured ports);
- names:   the same allow-list plus 256 DNS names (248 exact, 8 `*.suffix`) and an HL7 rule
           (bench_inline.names_policy), none of which the measured traffic uses: what they
           cost every flow is what is measured.

Every measurement alternates between the two, round by round, A B B A A B ... (the order
flips each round), with the same traffic: TCP bulk (iperf3), UDP 64-byte datagrams received
per second (iperf3 -u -l 64 -b 0), and TCP connect time (each connection's SYN is a new
flow's first packet, the one packet of a flow the classifier decides). A round's ratio is
names / address of that round; the report gives the median ratio and its spread (the
quartiles and the extremes of the rounds' ratios), so load from other work on a shared
machine shows as spread instead of as a difference. A script, not a test: it asserts
nothing; writes bench/out/inline_names.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inline import (  # noqa: E402
    OUT,
    TCP_PORT,
    UDP_PORT,
    Bench,
    InlineAppliance,
    Uplink,
    Ward,
    names_policy,
    ward_policy,
)


def cpu_seconds(daemon: InlineAppliance) -> float:
    """User + system CPU time of the daemon process (its threads included) so far."""
    assert daemon.proc is not None
    fields = Path(f"/proc/{daemon.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def spread(ratios: list[float]) -> dict[str, float]:
    q = (statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1
         else [ratios[0]] * 3)
    return {"median": statistics.median(ratios), "q1": q[0], "q3": q[2], "min": min(ratios),
            "max": max(ratios), "rounds": len(ratios)}


class NamesBench(Bench):
    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        base = f"{os.getpid() % 10000}"
        self.wards = {"address": Ward(suffix=f"{base}a"), "names": Ward(suffix=f"{base}n")}
        self.daemons: list[InlineAppliance] = []

    def start_daemons(self) -> None:
        for name, w in self.wards.items():
            policy = ward_policy(w.mac(w.ward), f"bench-{name}", tcp=[5201, TCP_PORT],
                                 udp=[5201, UDP_PORT])
            if name == "names":
                policy = names_policy(policy)
            workdir = self.tmp / name
            workdir.mkdir()
            self.daemons.append(InlineAppliance(w, workdir, policy).start(timeout=30))

    def run(self) -> dict[str, Any]:
        a = self.args
        try:
            for name, w in self.wards.items():
                w.create()
                self.uplinks[name] = Uplink(w.uplink)
                self.procs.append(w.popen(w.uplink, ["iperf3", "-s"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            time.sleep(0.3)
            self.start_daemons()
            results: dict[str, Any] = {
                "machine": {"kernel": platform.release(), "cpus": os.cpu_count(),
                            "python": platform.python_version(), "loadavg": os.getloadavg()},
                "args": vars(a)}
            before = [d.status()["source"]["packets"] for d in self.daemons]
            cpu_before = [cpu_seconds(d) for d in self.daemons]
            tcp = self.alternate(self.tcp_gbps, a.rounds)
            udp = self.alternate(self.udp_pps, a.rounds)
            connects = self.alternate(self.connect_ms, a.connects)
            after = [d.status()["source"]["packets"] for d in self.daemons]
            results["daemon_cpu_s"] = dict(zip(self.wards, (
                y - x for x, y in zip(cpu_before, (cpu_seconds(d) for d in self.daemons),
                                      strict=True)), strict=True))
            per_round = max(1, a.connects // a.rounds)    # connect medians in blocks
            conn_blocks = {n: [statistics.median(v[i:i + per_round])
                               for i in range(0, len(v), per_round)]
                           for n, v in connects.items()}
            results["raw"] = {"tcp_gbps": tcp, "udp64_pps": {n: [r for r, _ in v]
                                                              for n, v in udp.items()},
                              "connect_ms_block_medians": conn_blocks}
            results["classifier_packets"] = dict(zip(self.wards, (y - x for x, y in
                                                                  zip(before, after,
                                                                      strict=True)),
                                                     strict=True))
            results["ratios"] = {
                "tcp_bulk": spread([n / b for b, n in zip(tcp["address"], tcp["names"],
                                                          strict=True)]),
                "udp64_pps": spread([n[0] / b[0] for b, n in zip(udp["address"],
                                                                udp["names"], strict=True)]),
                # latency: names / address of the connect time (above 1 is slower)
                "connect_p50": spread([n / b for b, n in zip(conn_blocks["address"],
                                                             conn_blocks["names"],
                                                             strict=True)]),
            }
            return results
        finally:
            for d in self.daemons:
                d.kill(signal.SIGKILL)
            for proc in self.procs:
                proc.kill()
                proc.wait(10)
            for uplink in self.uplinks.values():
                uplink.close()
            for w in self.wards.values():
                w.close()


def report(r: dict[str, Any]) -> str:
    raw = r["raw"]
    med = statistics.median
    lines = [f"{'':30}{'address':>10}{'names':>10}{'ratio':>8}{'q1-q3':>14}{'min-max':>14}"
             "   (ratio: median of the rounds' names/address)"]
    for key, label, a, b in (
            ("tcp_bulk", "TCP bulk, Gbit/s", raw["tcp_gbps"]["address"],
             raw["tcp_gbps"]["names"]),
            ("udp64_pps", "UDP 64 B, kpkt/s received",
             [x / 1e3 for x in raw["udp64_pps"]["address"]],
             [x / 1e3 for x in raw["udp64_pps"]["names"]]),
            ("connect_p50", "connect p50, ms (lower=better)",
             raw["connect_ms_block_medians"]["address"],
             raw["connect_ms_block_medians"]["names"])):
        s = r["ratios"][key]
        lines.append(f"{label:30}{med(a):10.3f}{med(b):10.3f}{s['median']:8.3f}"
                     f"{s['q1']:7.3f}-{s['q3']:.3f}{s['min']:7.3f}-{s['max']:.3f}")
    tcp = r["ratios"]["tcp_bulk"]["median"]
    udp = r["ratios"]["udp64_pps"]["median"]
    cpu = r["daemon_cpu_s"]
    lines += [f"rounds: {r['ratios']['tcp_bulk']['rounds']}; packets the classifier saw: "
              f"address {r['classifier_packets']['address']:,}, names "
              f"{r['classifier_packets']['names']:,}; daemon CPU during the runs: address "
              f"{cpu['address']:.2f} s, names {cpu['names']:.2f} s; load average at the "
              f"start {r['machine']['loadavg'][0]:.2f}",
              f"bar: throughput with name and clinical rules within 5% of address rules "
              f"alone: TCP {tcp:.3f}, UDP {udp:.3f}  "
              f"{'ok' if min(tcp, udp) >= 0.95 else 'MISSED'}"]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=12, help="A/B rounds per measurement")
    parser.add_argument("--seconds", type=float, default=3.0, help="per iperf3 run")
    parser.add_argument("--connects", type=int, default=2000)
    parser.add_argument("--daemon-nice", type=int, default=0)
    parser.add_argument("--names", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--out", default=str(OUT / "inline_names.json"))
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_inline_names: needs root (network namespaces)", file=sys.stderr)
        return 2
    results = NamesBench(args).run()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2) if args.json else report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
