"""Inline datapath benchmark: a plain kernel bridge against the appliance enforcing on it.

    sudo .venv/bin/python bench/bench_inline.py [--seconds 5] [--repeat 3] [--connects 1000]
                                                [--echoes 2000] [--json]

Topology (tests/netns.py), twice side by side: ward (10.77.0.10) --veth-- [ward0 br0
uplink0] --veth-- uplink (10.77.0.20). Only traffic between these namespaces.

- plain:  br0 with no netfilter at all (no rules; bridge-nf-call-ip{,6}tables off), what
          a user has without wardtap.
- inline: `wardtap run` in the appliance namespace, datapath inline, mode enforce, with an
          allow-list that allows every conversation measured (so enforcement is on the
          path, and every new flow's first packet goes through the classifier).

Both exist at once and every measurement alternates between them (iperf3 run by run, latency
sample by sample), so load from other work on the machine falls on both alike.

Measured in each: TCP bulk throughput (iperf3, server in the uplink, client in the ward), UDP
small packets per second received (iperf3 -u -l 64 -b 0), first-packet latency (TCP connect
time: the SYN is each flow's first packet, so inline it crosses into userspace), later-packet
latency (UDP echo round trips on one established flow). Then, inline only, the fail-open
figures: kill -9 of the daemon while an allowed TCP flow and an allowed UDP flow (numbered
datagrams, 1 kHz) stream: the largest gap in arrivals, datagrams lost, time until a new flow
passes, and TCP throughput of a flow started while nobody classifies; and SIGSTOP of the
daemon: time until new flows pass (the watchdog) and until enforcement is back after SIGCONT.

Prints a table with ratios and the bars, writes bench/out/inline.json. A script, not a test:
it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT, ROOT / "tests"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from inlinekit import InlineAppliance, ns_socket, rules_state, ward_policy  # noqa: E402
from netns import UPLINK_IP, Ward, wait_for  # noqa: E402

OUT = ROOT / "bench" / "out"
TCP_PORT, UDP_PORT, SEQ_PORT = 8080, 5005, 5007



def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Uplink:
    """A TCP server that accepts and logs arrivals, a UDP echo, a UDP sequence sink."""

    def __init__(self, ns: str) -> None:
        self.socks: list[socket.socket] = []
        self.arrivals: list[float] = []
        self.tcp_bytes = 0
        self.seqs: set[int] = set()
        self.seq_times: list[float] = []
        listener = ns_socket(ns)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("0.0.0.0", TCP_PORT))
        listener.listen(512)
        echo = ns_socket(ns, socket.AF_INET, socket.SOCK_DGRAM)
        echo.bind(("0.0.0.0", UDP_PORT))
        sink = ns_socket(ns, socket.AF_INET, socket.SOCK_DGRAM)
        sink.bind(("0.0.0.0", SEQ_PORT))
        for fn, sock in ((self._accept, listener), (self._echo, echo), (self._sink, sink)):
            self.socks.append(sock)
            threading.Thread(target=fn, args=(sock,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                self.arrivals.append(time.monotonic())
                self.tcp_bytes += len(data)

    def _echo(self, sock: socket.socket) -> None:
        while True:
            try:
                data, peer = sock.recvfrom(2048)
                sock.sendto(data, peer)
            except OSError:
                return

    def _sink(self, sock: socket.socket) -> None:
        while True:
            try:
                data = sock.recv(2048)
            except OSError:
                return
            self.seq_times.append(time.monotonic())
            self.seqs.add(int(data))

    def close(self) -> None:
        for s in self.socks:
            s.close()


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        base = f"{os.getpid() % 10000}"
        self.wards = {"plain": Ward(suffix=f"{base}p"), "inline": Ward(suffix=f"{base}i")}
        self.ward = self.wards["inline"]
        self.tmp = Path(tempfile.mkdtemp(prefix="wardtap-bench-inline-"))
        self.daemon: InlineAppliance | None = None
        self.procs: list[subprocess.Popen[str]] = []
        self.uplinks: dict[str, Uplink] = {}

    # -- set-up --------------------------------------------------------------------------

    def no_netfilter(self, w: Ward) -> None:
        """plain: the bridge never enters netfilter."""
        w.exec(w.appliance, "sysctl -qw net.bridge.bridge-nf-call-iptables=0 "
                            "net.bridge.bridge-nf-call-ip6tables=0")
        w.exec(w.appliance, "ip link set br0 type bridge nf_call_iptables 0 "
                            "nf_call_ip6tables 0")

    def start_daemon(self) -> None:
        w = self.ward
        nice = ["nice", "-n", str(self.args.daemon_nice)] if self.args.daemon_nice else []
        policy = ward_policy(w.mac(w.ward), "bench-inline", tcp=[5201, TCP_PORT],
                             udp=[5201, UDP_PORT, SEQ_PORT])
        if self.args.names:
            policy = names_policy(policy)
        self.daemon = InlineAppliance(w, self.tmp, policy, prefix=nice).start(timeout=20)

    def daemon_status(self) -> dict[str, Any]:
        assert self.daemon is not None
        return self.daemon.status()

    def stop_daemon(self, sig: int = signal.SIGTERM) -> None:
        if self.daemon is not None:
            self.daemon.kill(sig)

    def rules_state(self) -> str:
        return str(rules_state(self.ward)["state"])

    # -- measurements, alternating between the two bridges ----------------------------------

    def iperf3(self, w: Ward, *extra: str, seconds: float | None = None) -> dict[str, Any]:
        secs = str(seconds or self.args.seconds)
        out = w.exec(w.ward, ["iperf3", "-c", UPLINK_IP, "-J", "-t", secs, *extra],
                     timeout=float(secs) + 30)
        return json.loads(out.stdout)  # type: ignore[no-any-return]

    def alternate(self, fn: Callable[[Ward], Any], rounds: int) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {name: [] for name in self.wards}
        names = list(self.wards)
        for r in range(rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                out[name].append(fn(self.wards[name]))
        return out

    def tcp_gbps(self, w: Ward) -> float:
        return float(self.iperf3(w)["end"]["sum_received"]["bits_per_second"]) / 1e9

    def udp_pps(self, w: Ward) -> tuple[float, float]:
        """(received, sent) packets per second of 64-byte datagrams, iperf3 flat out."""
        s = self.iperf3(w, "-u", "-l", "64", "-b", "0")["end"]["sum"]
        return ((s["packets"] - s["lost_packets"]) / s["seconds"], s["packets"] / s["seconds"])

    @staticmethod
    def connect_ms(w: Ward) -> float:
        s = ns_socket(w.ward)
        s.settimeout(2)
        start = time.perf_counter()
        s.connect((UPLINK_IP, TCP_PORT))
        elapsed = (time.perf_counter() - start) * 1000
        s.close()
        return elapsed

    def measure(self) -> dict[str, Any]:
        a = self.args
        tcp = self.alternate(self.tcp_gbps, a.repeat)
        udp = self.alternate(self.udp_pps, a.repeat)
        connects = self.alternate(self.connect_ms, a.connects)
        echo_socks = {}
        for w in self.wards.values():
            s = ns_socket(w.ward, socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(2)
            s.connect((UPLINK_IP, UDP_PORT))
            s.send(b"warm")
            s.recv(64)        # the flow's first packet, decided; the rest are later packets
            echo_socks[id(w)] = s

        def echo(w: Ward) -> float:
            s = echo_socks[id(w)]
            start = time.perf_counter()
            s.send(b"echo")
            s.recv(64)
            return (time.perf_counter() - start) * 1000

        echoes = self.alternate(echo, a.echoes)
        for s in echo_socks.values():
            s.close()
        out: dict[str, Any] = {}
        for name in self.wards:
            out[name] = {
                "tcp_gbps": tcp[name],
                "udp64_pps": [r for r, _ in udp[name]],
                "udp64_sent_pps": [s for _, s in udp[name]],
                "connect_ms": {"p50": pct(connects[name], 0.5),
                               "p99": pct(connects[name], 0.99), "n": len(connects[name])},
                "echo_ms": {"p50": pct(echoes[name], 0.5), "p99": pct(echoes[name], 0.99),
                            "n": len(echoes[name])},
            }
        return out

    def fail_open(self) -> dict[str, Any]:
        """kill -9 and SIGSTOP of the daemon under traffic (the inline bridge only)."""
        w = self.ward
        uplink = self.uplinks["inline"]
        out: dict[str, Any] = {}
        self.start_daemon()
        tcp = ns_socket(w.ward)
        tcp.connect((UPLINK_IP, TCP_PORT))
        udp = ns_socket(w.ward, socket.AF_INET, socket.SOCK_DGRAM)
        udp.connect((UPLINK_IP, SEQ_PORT))
        stop = threading.Event()
        sent = [0, 0]

        def stream() -> None:
            chunk = b"x" * 1024
            while not stop.wait(0.001):
                tcp.sendall(chunk)
                udp.send(b"%d" % sent[1])
                sent[0] += len(chunk)
                sent[1] += 1

        time.sleep(0.2)
        uplink.arrivals.clear()
        uplink.seq_times.clear()
        uplink.seqs.clear()
        base_bytes = uplink.tcp_bytes
        thread = threading.Thread(target=stream, daemon=True)
        thread.start()
        time.sleep(1.0)
        assert self.daemon is not None
        killed = time.monotonic()
        self.daemon.kill()

        def new_flow() -> bool:
            s = ns_socket(w.ward)
            s.settimeout(0.2)
            try:
                s.connect((UPLINK_IP, TCP_PORT))
                return True
            except OSError:
                return False
            finally:
                s.close()

        wait_for(new_flow, timeout=5, interval=0.005, what="a new flow after kill -9")
        out["kill9_new_flow_ms"] = (time.monotonic() - killed) * 1000
        time.sleep(1.0)
        stop.set()
        thread.join(5)
        wait_for(lambda: uplink.tcp_bytes - base_bytes >= sent[0], timeout=5,
                 what="the last bytes")
        time.sleep(0.1)
        window = [t for t in uplink.arrivals if killed - 0.5 <= t <= killed + 1.0]
        seq_window = [t for t in uplink.seq_times if killed - 0.5 <= t <= killed + 1.0]
        out["kill9_tcp_gap_ms"] = max(b - a for a, b in zip(window, window[1:],
                                                              strict=False)) * 1000
        out["kill9_udp_gap_ms"] = max(b - a for a, b in zip(seq_window, seq_window[1:],
                                                              strict=False)) * 1000
        out["kill9_udp_lost"] = sent[1] - len(uplink.seqs)
        out["kill9_udp_sent"] = sent[1]
        out["kill9_tcp_bytes_missing"] = sent[0] - (uplink.tcp_bytes - base_bytes)
        tcp.close()
        udp.close()
        # A new flow while nobody classifies: every packet meets the NFQUEUE rule, which
        # has no listener and bypasses (no mark, so no conntrack shortcut).
        out["failopen_tcp_gbps"] = self.iperf3(w, seconds=3)["end"]["sum_received"][
            "bits_per_second"] / 1e9

        self.start_daemon()
        assert self.daemon is not None and self.daemon.proc is not None
        os.kill(self.daemon.proc.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        wait_for(new_flow, timeout=5, interval=0.005, what="a new flow after SIGSTOP")
        out["sigstop_new_flow_ms"] = (time.monotonic() - stopped) * 1000
        os.kill(self.daemon.proc.pid, signal.SIGCONT)
        resumed = time.monotonic()
        wait_for(lambda: self.rules_state() == "enforce", timeout=5, interval=0.01,
                 what="enforcement after SIGCONT")
        out["sigcont_enforcing_ms"] = (time.monotonic() - resumed) * 1000
        self.stop_daemon()
        return out

    # -- the run -------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        try:
            for name, w in self.wards.items():
                w.create()
                self.uplinks[name] = Uplink(w.uplink)
                self.procs.append(w.popen(w.uplink, ["iperf3", "-s"],
                                          stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
            self.no_netfilter(self.wards["plain"])
            time.sleep(0.3)
            results: dict[str, Any] = {
                "machine": {"kernel": platform.release(), "cpus": os.cpu_count(),
                            "python": platform.python_version(),
                            "loadavg": os.getloadavg()},
                "args": vars(self.args)}
            self.start_daemon()
            before = self.daemon_status()["source"]
            results.update(self.measure())
            after = self.daemon_status()["source"]
            results["inline"]["userspace_packets"] = after["packets"] - before["packets"]
            self.stop_daemon()
            results["fail_open"] = self.fail_open()
            return results
        finally:
            self.stop_daemon(signal.SIGKILL)
            for proc in self.procs:
                proc.kill()
                proc.wait(10)
            for uplink in self.uplinks.values():
                uplink.close()
            for w in self.wards.values():
                w.close()


def report(r: dict[str, Any]) -> str:
    p, i, f = r["plain"], r["inline"], r["fail_open"]
    med = statistics.median
    # Median of the per-round ratios: each round measured both bridges back to back.
    tcp_ratio = med(b / a for a, b in zip(p["tcp_gbps"], i["tcp_gbps"], strict=True))
    udp_ratio = med(b / a for a, b in zip(p["udp64_pps"], i["udp64_pps"], strict=True))
    sent_ratio = med(b / a for a, b in zip(p["udp64_sent_pps"], i["udp64_sent_pps"],
                                           strict=True))
    first = {q: i["connect_ms"][q] - p["connect_ms"][q] for q in ("p50", "p99")}
    later = {q: i["echo_ms"][q] - p["echo_ms"][q] for q in ("p50", "p99")}
    ok = lambda good: "ok" if good else "MISSED"  # noqa: E731
    lines = [
        f"{'':34}{'plain bridge':>16}{'inline enforce':>16}{'ratio':>8}   (ratio: median of "
        "the rounds' ratios)",
        f"{'TCP bulk, Gbit/s (median)':34}{med(p['tcp_gbps']):16.2f}"
        f"{med(i['tcp_gbps']):16.2f}{tcp_ratio:8.2f}",
        f"{'UDP 64 B, kpkt/s received':34}{med(p['udp64_pps']) / 1e3:16.1f}"
        f"{med(i['udp64_pps']) / 1e3:16.1f}{udp_ratio:8.2f}",
        f"{'UDP 64 B, kpkt/s sent':34}{med(p['udp64_sent_pps']) / 1e3:16.1f}"
        f"{med(i['udp64_sent_pps']) / 1e3:16.1f}{sent_ratio:8.2f}",
        f"{'first packet (connect) p50, ms':34}{p['connect_ms']['p50']:16.3f}"
        f"{i['connect_ms']['p50']:16.3f}",
        f"{'first packet (connect) p99, ms':34}{p['connect_ms']['p99']:16.3f}"
        f"{i['connect_ms']['p99']:16.3f}",
        f"{'later packets (UDP echo) p50, ms':34}{p['echo_ms']['p50']:16.3f}"
        f"{i['echo_ms']['p50']:16.3f}",
        f"{'later packets (UDP echo) p99, ms':34}{p['echo_ms']['p99']:16.3f}"
        f"{i['echo_ms']['p99']:16.3f}",
        f"packets the classifier saw during the inline runs: {i['userspace_packets']:,}; "
        f"load average at the start {r['machine']['loadavg'][0]:.2f}",
        "",
        f"bar: inline TCP >= 80% of plain (goal 95%): {tcp_ratio:.0%}  {ok(tcp_ratio >= 0.8)}",
        f"bar: added first-packet latency p99 <= 1 ms: {first['p99']:+.3f} ms "
        f"(p50 {first['p50']:+.3f})  {ok(first['p99'] <= 1)}",
        f"bar: added later-packet latency p99 <= 0.1 ms: {later['p99']:+.3f} ms "
        f"(p50 {later['p50']:+.3f})  {ok(later['p99'] <= 0.1)}",
        f"bar: kill -9, established flows lose nothing: {f['kill9_udp_lost']} of "
        f"{f['kill9_udp_sent']} datagrams lost, {f['kill9_tcp_bytes_missing']} TCP bytes "
        f"missing; largest gap TCP {f['kill9_tcp_gap_ms']:.1f} ms, UDP "
        f"{f['kill9_udp_gap_ms']:.1f} ms  "
        f"{ok(f['kill9_udp_lost'] == 0 and f['kill9_tcp_bytes_missing'] == 0)}",
        f"bar: kill -9, new flows within 1 s: {f['kill9_new_flow_ms']:.0f} ms  "
        f"{ok(f['kill9_new_flow_ms'] <= 1000)}",
        f"fail-open TCP (new flow, nobody classifying): {f['failopen_tcp_gbps']:.2f} Gbit/s",
        f"SIGSTOP: new flows pass after {f['sigstop_new_flow_ms']:.0f} ms (watchdog); "
        f"enforcing {f['sigcont_enforcing_ms']:.0f} ms after SIGCONT",
    ]
    return "\n".join(lines)


def names_policy(policy: str) -> str:
    """--names: the same allow-list plus 256 DNS names and an HL7 rule (docs/policy.md), none
    of which the measured traffic uses: what they cost every flow is what is measured."""
    names = ", ".join(f'"h{i}.cloud{i % 8}.example"' for i in range(248))
    names += ", " + ", ".join(f'"*.cdn{i}.example"' for i in range(8))
    return policy.replace("[policy]\n", "[policy]\nname_ttl_min = 30\n", 1) + (
        f'\n[groups.cloud]\nnames = [{names}]\n\n[[rules]]\nname = "ward-cloud"\n'
        'from = "ward"\nto = "cloud"\nproto = "tcp"\nports = [443]\n\n[[rules]]\n'
        'name = "ward-hl7"\nfrom = "ward"\nto = "uplink"\nproto = "tcp"\nports = [2575]\n'
        'hl7 = { message_types = ["ORU^R01"] }\n')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per iperf3 run")
    parser.add_argument("--repeat", type=int, default=3, help="iperf3 runs per measurement")
    parser.add_argument("--connects", type=int, default=1000)
    parser.add_argument("--echoes", type=int, default=2000)
    parser.add_argument("--daemon-nice", type=int, default=0,
                        help="run the daemon at this nice value (e.g. -10, as a unit's Nice=)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--names", action="store_true",
                        help="add 256 DNS names and an HL7 rule to the allow-list (issue 19: "
                             "compare with a run without)")
    parser.add_argument("--out", default=str(OUT / "inline.json"))
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_inline: needs root (network namespaces)", file=sys.stderr)
        return 2
    results = Bench(args).run()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2) if args.json else report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
