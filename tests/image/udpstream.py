"""Numbered UDP datagrams across the ward link, to see whether traffic kept flowing.

    python udpstream.py send HOST PORT RATE [new-flows]   # until SIGTERM; {"sent", "errors"}
    python udpstream.py recv PORT                         # until SIGTERM

`send` stamps each datagram with its number and this machine's monotonic clock (the
namespaces share it). With `new-flows` every datagram leaves from a new socket, so each is
the first packet of a new flow (the classifier must decide it); without, they are one flow.
On SIGTERM `recv` prints a JSON summary: datagrams received, the highest number, the count
missing below it, the longest silence between arrivals (ms), and `arrivals`: for each
datagram received, [number, sent, arrived] (monotonic seconds).
"""

from __future__ import annotations

import json
import signal
import socket
import struct
import sys
import time

HEADER = struct.Struct("!Qd")


def _stop(signum: int, frame: object) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):       # once: the summary is being written
        signal.signal(sig, signal.SIG_IGN)
    raise KeyboardInterrupt


# Explicit: a process started from a background job inherits SIGINT ignored
signal.signal(signal.SIGTERM, _stop)
signal.signal(signal.SIGINT, _stop)


def send(host: str, port: int, rate: float, new_flows: bool) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    seq, interval, next_at = 0, 1.0 / rate, time.monotonic()
    errors: dict[str, int] = {}
    try:
        while True:
            time.sleep(max(0.0, next_at - time.monotonic()))
            try:
                if new_flows:
                    sock.close()
                    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.sendto(HEADER.pack(seq, time.monotonic()) + b"w" * 48, (host, port))
            except OSError as exc:       # counted as sent: the datagram is lost either way
                errors[exc.strerror or str(exc)] = errors.get(exc.strerror or str(exc), 0) + 1
            seq += 1
            next_at += interval
    except KeyboardInterrupt:
        print(json.dumps({"sent": seq, "errors": errors}), flush=True)


def recv(port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", port))
    arrivals: dict[int, tuple[float, float]] = {}
    last = gap = 0.0
    print("listening", flush=True)
    try:
        while True:
            data = sock.recv(2048)
            now = time.monotonic()
            if len(data) >= HEADER.size:
                seq, sent = HEADER.unpack_from(data)
                arrivals.setdefault(seq, (sent, now))
                if last:
                    gap = max(gap, now - last)
                last = now
    except KeyboardInterrupt:
        top = max(arrivals) if arrivals else -1
        print(json.dumps({"received": len(arrivals), "highest": top,
                          "missing": top + 1 - len(arrivals),
                          "longest_gap_ms": round(gap * 1000, 1),
                          "arrivals": [[s, *arrivals[s]] for s in sorted(arrivals)]}),
              flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "send":
        send(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), "new-flows" in sys.argv[5:])
    else:
        recv(int(sys.argv[2]))
