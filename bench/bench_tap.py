"""Tap datapath benchmark: offered load from the ward namespace, AfPacketSource on the
appliance side, packets per second captured (and classified) and kernel drops.

    sudo .venv/bin/python bench/bench_tap.py                       # 300 kpps, then flat out
    sudo .venv/bin/python bench/bench_tap.py --rates 300000,600000 --seconds 10 --json
    sudo .venv/bin/python bench/bench_tap.py --generator iperf3    # iperf3 -u -l 64 -b 0

Topology (tests/netns.py, plain veths): ward:eth0 --veth-- appliance:ward0, the tap on ward0.

Generators:
- raw (default): a small C program (below, built into bench/out/) that sends Ethernet/IPv4/UDP
  frames of --size bytes over --flows source ports with sendmmsg on a packet socket
  (PACKET_QDISC_BYPASS), paced to the stated rate. The frames are addressed to a MAC that is
  not the appliance's, as on a mirror port: the appliance's IP stack drops them at once, so
  the receive cost measured is the tap's.
- iperf3: `iperf3 -u -l 64 -b RATE` to an iperf3 server in the appliance namespace; the
  appliance's kernel then also delivers every datagram to the server (more CPU per packet).

On veths the receive side (the kernel's copy into the ring) runs in softirq on the sending
CPU; the generator is pinned to one CPU and the capture process to another when there are two.
Reported per rate: offered packets/s (what the generator sent), packets the kernel offered the
socket, packets captured, kernel drops (ring full), packets lost before the tap (softnet
backlog, /proc/net/softnet_stat), the capture process's CPU use.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from array import array
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT, ROOT / "tests"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from netns import Ward, wait_for  # noqa: E402

from appliance.sources.afpacket import AfPacketSource  # noqa: E402

OUT = ROOT / "bench" / "out"
SRC_MAC = "02:77:00:00:00:10"
DST_MAC = "02:77:00:00:00:99"

GENERATOR_C = r"""
/* tapgen IFACE SECONDS RATE_PPS FRAME_LEN FLOWS: Ethernet/IPv4/UDP frames with sendmmsg on a
   packet socket, paced per batch of 64; prints "sent elapsed_ns". RATE_PPS 0: flat out. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define BATCH 64

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static uint16_t ip_checksum(const uint8_t *p, int n) {
    uint32_t s = 0;
    for (int i = 0; i < n; i += 2) s += (uint32_t)(p[i] << 8 | p[i + 1]);
    while (s >> 16) s = (s & 0xffff) + (s >> 16);
    return (uint16_t)~s;
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: tapgen IFACE SECONDS RATE FRAME_LEN FLOWS\n");
        return 2;
    }
    double seconds = atof(argv[2]);
    uint64_t rate = strtoull(argv[3], 0, 10);
    int len = atoi(argv[4]), flows = atoi(argv[5]);
    if (len < 42 || len > 1514 || flows < 1) {
        fprintf(stderr, "bad frame length or flows\n");
        return 2;
    }
    int fd = socket(AF_PACKET, SOCK_RAW, 0);
    if (fd < 0) { perror("socket"); return 1; }
    int one = 1;
    setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof one);
    struct sockaddr_ll sll = {0};
    sll.sll_family = AF_PACKET;
    sll.sll_ifindex = (int)if_nametoindex(argv[1]);
    if (!sll.sll_ifindex || bind(fd, (struct sockaddr *)&sll, sizeof sll)) {
        perror("bind");
        return 1;
    }
    static uint8_t frames[BATCH][1514];
    struct iovec iov[BATCH];
    struct mmsghdr msgs[BATCH];
    const uint8_t dst[6] = {2, 0x77, 0, 0, 0, 0x99}, src[6] = {2, 0x77, 0, 0, 0, 0x10};
    for (int i = 0; i < BATCH; i++) {
        uint8_t *f = frames[i];
        memset(f, 0, sizeof frames[i]);
        memcpy(f, dst, 6); memcpy(f + 6, src, 6); f[12] = 0x08; f[13] = 0x00;
        uint8_t *ip = f + 14;
        int iplen = len - 14;
        ip[0] = 0x45; ip[2] = (uint8_t)(iplen >> 8); ip[3] = (uint8_t)iplen; ip[8] = 64; ip[9] = 17;
        ip[12] = 10; ip[13] = 77; ip[14] = 0; ip[15] = 10;
        ip[16] = 10; ip[17] = 77; ip[18] = 0; ip[19] = 99;
        uint16_t c = ip_checksum(ip, 20); ip[10] = (uint8_t)(c >> 8); ip[11] = (uint8_t)c;
        uint8_t *u = ip + 20;
        int ulen = iplen - 20;
        u[2] = 0x14; u[3] = 0x51;                      /* port 5201 */
        u[4] = (uint8_t)(ulen >> 8); u[5] = (uint8_t)ulen;
        iov[i].iov_base = f; iov[i].iov_len = (size_t)len;
        memset(&msgs[i], 0, sizeof msgs[i]);
        msgs[i].msg_hdr.msg_iov = &iov[i]; msgs[i].msg_hdr.msg_iovlen = 1;
    }
    uint64_t sent = 0, flow = 0, start = now_ns(), end = start + (uint64_t)(seconds * 1e9);
    for (;;) {
        uint64_t t = now_ns();
        if (t >= end) break;
        if (rate) {
            uint64_t due = start + sent * 1000000000ull / rate;
            if (t < due) {
                if (due - t > 200000) {
                    struct timespec d = {0, (long)(due - t - 100000)};
                    nanosleep(&d, 0);
                }
                continue;
            }
        }
        for (int i = 0; i < BATCH; i++) {
            uint16_t port = (uint16_t)(10000 + flow++ % (uint64_t)flows);
            frames[i][34] = (uint8_t)(port >> 8); frames[i][35] = (uint8_t)port;
        }
        int n = sendmmsg(fd, msgs, BATCH, 0);
        if (n < 0) {
            if (errno == ENOBUFS || errno == EAGAIN || errno == EINTR) continue;
            perror("sendmmsg"); return 1;
        }
        sent += (uint64_t)n;
    }
    printf("%llu %llu\n", (unsigned long long)sent, (unsigned long long)(now_ns() - start));
    return 0;
}
"""


# --- the capture process (runs in the appliance namespace) ------------------------------


def worker(args: argparse.Namespace) -> int:
    from fastpath import Classifier

    source = AfPacketSource(args.worker, block_size=args.block_size,
                            block_count=args.block_count, timeout_ms=args.timeout_ms,
                            snaplen=args.snaplen)
    source.open()
    lock = threading.Lock()
    stop = threading.Event()

    def emit(**event: Any) -> None:
        with lock:
            print(json.dumps(event), flush=True)

    def commands() -> None:
        for line in sys.stdin:
            if line.strip() == "stats":
                emit(event="stats", stats=source.stats())
            elif line.strip() == "stop":
                break
        stop.set()

    threading.Thread(target=commands, daemon=True).start()
    classifier = Classifier()
    cap = args.block_size // 48 + 1
    verdicts, reasons, rules = (memoryview(array(c, bytes(n * cap)))
                                for c, n in (("B", 1), ("B", 1), ("H", 2)))
    emit(event="ready")
    before = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    for batch in source.batches(stop):
        if batch.count and not args.no_classify:
            classifier.classify(batch.buf, batch.offsets, batch.lengths, batch.timestamps,
                                batch.linktypes, verdicts, reasons, rules)
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    stats = source.stats()
    source.close()
    emit(event="done", stats=stats, wall=wall, cpu=cpu,
         classified=0 if args.no_classify else classifier.stats()["packets"],
         flows=classifier.stats()["flows_created"])
    return 0


class Capture:
    """The worker process and its JSON lines."""

    def __init__(self, ward: Ward, args: argparse.Namespace, cpu: str | None) -> None:
        cmd = [sys.executable, __file__, "--worker", "ward0",
               "--block-size", str(args.block_size), "--block-count", str(args.block_count),
               "--timeout-ms", str(args.timeout_ms)]
        if args.snaplen:
            cmd += ["--snaplen", str(args.snaplen)]
        if args.no_classify:
            cmd.append("--no-classify")
        if cpu is not None:
            cmd = ["taskset", "-c", cpu, *cmd]
        self.proc = ward.popen(ward.appliance, cmd, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        self.lines: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()
        wait_for(lambda: self._last("ready"), timeout=30, what="the capture process")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(json.loads(line))

    def _last(self, kind: str) -> dict[str, Any] | None:
        for line in reversed(self.lines):
            if line["event"] == kind:
                return line
        return None

    def stats(self) -> dict[str, int]:
        seen = len(self.lines)
        self._send("stats")
        wait_for(lambda: len(self.lines) > seen, timeout=10, what="stats")
        last = self._last("stats")
        assert last is not None
        return last["stats"]  # type: ignore[no-any-return]

    def _send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def finish(self) -> dict[str, Any]:
        self._send("stop")
        self.proc.wait(timeout=60)
        done = self._last("done")
        assert done is not None, "the capture process did not report"
        return done


def softnet_dropped() -> int:
    """Packets dropped before any tap: the per-CPU backlog was full (all CPUs, all netns)."""
    total = 0
    with open("/proc/net/softnet_stat") as f:
        for line in f:
            total += int(line.split()[1], 16)
    return total


def build_generator() -> str:
    OUT.mkdir(parents=True, exist_ok=True)
    src, exe = OUT / "tapgen.c", OUT / "tapgen"
    if not (exe.exists() and src.exists() and src.read_text() == GENERATOR_C):
        src.write_text(GENERATOR_C)
        subprocess.run(["cc", "-O2", "-Wall", "-o", str(exe), str(src)], check=True)
    return str(exe)


def run_generator(ward: Ward, args: argparse.Namespace, rate: int,
                  cpu: str | None) -> tuple[int, float]:
    pin = ["taskset", "-c", cpu] if cpu is not None else []
    if args.generator == "raw":
        # --senders processes share the rate; sender i runs on CPU i (mod CPUs) when pinned.
        cpus = os.cpu_count() or 1
        procs = []
        for i in range(args.senders):
            pin_i = ["taskset", "-c", str(i % cpus)] if args.senders > 1 else pin
            procs.append(ward.popen(ward.ward, [*pin_i, build_generator(), "eth0",
                                                str(args.seconds), str(rate // args.senders),
                                                str(args.size), str(args.flows)],
                                    stdout=subprocess.PIPE))
        sent, elapsed = 0, 0.0
        for proc in procs:
            out, _ = proc.communicate(timeout=args.seconds + 60)
            if proc.returncode != 0:
                raise RuntimeError(f"tapgen failed ({proc.returncode})")
            n, ns = out.split()
            sent, elapsed = sent + int(n), max(elapsed, int(ns) / 1e9)
        return sent, elapsed
    # iperf3: -b is application bits per second; 0 means unlimited.
    bps = rate * args.iperf_length * 8
    cmd = [*pin, "iperf3", "-c", "10.77.0.1", "-u", "-l", str(args.iperf_length), "-b",
           str(bps), "-t", str(args.seconds), "--json"]
    result = json.loads(ward.exec(ward.ward, cmd, timeout=args.seconds + 60).stdout)
    summary = result["end"]["sum"]
    return int(summary["packets"]), float(summary["seconds"])


def measure(ward: Ward, args: argparse.Namespace, rate: int) -> dict[str, Any]:
    # Generator on CPU 0, capture on CPU 1; with several senders nothing is pinned but them.
    two = (os.cpu_count() or 1) >= 2 and args.senders == 1
    capture = Capture(ward, args, "1" if two else None)
    server = None
    if args.generator == "iperf3":
        server = ward.popen(ward.appliance, ["iperf3", "-s", "-1", "-B", "10.77.0.1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: "5201" in ward.exec(ward.appliance, "ss -ltn").stdout,
                 what="the iperf3 server")
    backlog0 = softnet_dropped()
    sent, seconds = run_generator(ward, args, rate, "0" if two else None)
    backlog = softnet_dropped() - backlog0

    def drained() -> dict[str, int] | None:
        s = capture.stats()
        return s if s["packets"] + s["kernel_drops"] >= s["kernel_packets"] else None

    wait_for(drained, timeout=30, interval=0.2, what="the capture to drain the ring")
    done = capture.finish()
    if server is not None:
        server.kill()
        server.wait()
    st = done["stats"]
    seen = st["kernel_packets"]
    return {
        "generator": args.generator, "offered_rate": rate, "seconds": round(seconds, 3),
        "frame_bytes": args.size if args.generator == "raw" else args.iperf_length + 42,
        "sent": sent, "offered_pps": round(sent / seconds),
        "kernel_packets": seen, "captured": st["packets"],
        "captured_pps": round(st["packets"] / seconds),
        "kernel_drops": st["kernel_drops"],
        "drop_percent": round(100 * st["kernel_drops"] / seen, 4) if seen else 0.0,
        "lost_before_tap": max(sent - seen, 0) if args.generator == "raw" else None,
        "softnet_backlog_drops": backlog,
        "classified": done["classified"], "blocks": st["batches"],
        "packets_per_block": round(st["packets"] / st["batches"]) if st["batches"] else 0,
        "capture_cpu_percent": round(100 * done["cpu"] / seconds),
        "capture_cpu_ns_per_packet": round(1e9 * done["cpu"] / st["packets"]) if st["packets"]
        else None,
        "ring_mib": st["ring_bytes"] >> 20,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generator", choices=("raw", "iperf3"), default="raw")
    parser.add_argument("--rates", default="300000,0",
                        help="offered packets/s, comma separated; 0 = as fast as it goes")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--size", type=int, default=60, help="raw: frame bytes (no FCS)")
    parser.add_argument("--flows", type=int, default=256, help="raw: UDP source ports")
    parser.add_argument("--senders", type=int, default=1,
                        help="raw: generator processes (one per CPU); the capture then "
                             "shares the CPUs with them")
    parser.add_argument("--iperf-length", type=int, default=64, help="iperf3 -l")
    parser.add_argument("--block-size", type=int, default=1 << 20)
    parser.add_argument("--block-count", type=int, default=64)
    parser.add_argument("--timeout-ms", type=int, default=50)
    parser.add_argument("--snaplen", type=int)
    parser.add_argument("--no-classify", action="store_true",
                        help="capture only; by default every batch is classified")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worker", metavar="IFACE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if os.geteuid() != 0:
        print("bench_tap: needs root (network namespaces, packet sockets)", file=sys.stderr)
        return 2
    if args.generator == "iperf3" and not shutil.which("iperf3"):
        print("bench_tap: iperf3 is not installed", file=sys.stderr)
        return 2
    results = []
    with Ward(bridge=False) as ward:
        ward.exec(ward.ward, "sysctl -qw net.ipv6.conf.eth0.disable_ipv6=1")
        ward.exec(ward.appliance, "sysctl -qw net.ipv6.conf.ward0.disable_ipv6=1")
        if args.generator == "iperf3":
            ward.exec(ward.appliance, "ip addr add 10.77.0.1/24 dev ward0")
        for rate in (int(r) for r in args.rates.split(",")):
            results.append(measure(ward, args, rate))
            if not args.json:
                r = results[-1]
                offered = f"{r['offered_rate']:,}" if r["offered_rate"] else "max"
                print(f"{r['generator']} {offered:>9} pps asked, {r['frame_bytes']} B frames: "
                      f"offered {r['offered_pps']:,}/s, captured {r['captured_pps']:,}/s "
                      f"({r['captured']:,} of {r['kernel_packets']:,} seen by the kernel), "
                      f"kernel drops {r['kernel_drops']:,} ({r['drop_percent']}%), "
                      f"lost before the tap {r['lost_before_tap']}, "
                      f"capture CPU {r['capture_cpu_percent']}% "
                      f"({r['capture_cpu_ns_per_packet']} ns/packet), "
                      f"{r['packets_per_block']} packets/block")
    if args.json:
        info = {"cpus": os.cpu_count(), "kernel": os.uname().release, "results": results}
        print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
