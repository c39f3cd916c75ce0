"""The ward the image tests provision and the stall they measure.

What goes on the boot partition (a provisioning file in enforce mode, a policy allowing the
ward host's UDP and ping to the uplink host), and `stall_and_restart`: the daemon hung
with SIGSTOP while a stream and new flows cross the bridge, systemd's watchdog killing and
restarting it. Used by test_image_boot.py and bench/bench_watchdog.py.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import certs
from vm import UPLINK_IP, WARD_IP, ApplianceVM, wait_for

SITE, APPLIANCE = "st-marys", "ward4b-01"
STREAM_PORT, PROBE_PORT, DENIED_PORT = 5000, 5001, 7000
UDPSTREAM = str(Path(__file__).resolve().with_name("udpstream.py"))
POLICY = f"""\
[policy]
name = "vm-ward"
version = 1

[groups.ward-host]
ip = ["{WARD_IP}"]

[groups.uplink-host]
ip = ["{UPLINK_IP}"]

[[rules]]
name = "ward-udp"
from = "ward-host"
to = "uplink-host"
proto = "udp"
ports = [{STREAM_PORT}, {PROBE_PORT}]

[[rules]]
name = "ward-ping"
from = "ward-host"
to = "uplink-host"
proto = "icmp"
"""


def provisioning(broker_url: str, ssh_key: str, *, client: tuple[bytes, bytes, bytes] | None
                 = None, expired: bool = False) -> dict[str, bytes]:
    """The files a technician puts on the boot partition: wardtap-provision.toml (enforce,
    POLICY) and what it names. `client` is (CA, certificate, key) in PEM; without it a
    throw-away CA issues one, expired if asked."""
    if client is None:
        ca_key, ca_cert = certs.ca()
        k, c = certs.client(ca_key, ca_cert, APPLIANCE, start=certs.NOW - 400 * certs.DAY,
                            end=certs.NOW - 30 * certs.DAY if expired else certs.NOW + certs.DAY)
        client = certs.pem_cert(ca_cert), certs.pem_cert(c), certs.pem_key(k)
    text = f"""\
[appliance]
site = "{SITE}"
id = "{APPLIANCE}"
mode = "enforce"

[broker]
url = "{broker_url}"
ca = "ca.pem"
cert = "client.pem"
key = "client.key"
fleet_key = "fleet.pub"

[policy]
file = "ward.policy.toml"

[ssh]
authorized_keys = ["{ssh_key}"]
"""
    ca, cert, key = client
    return {"wardtap-provision.toml": text.encode(), "ca.pem": ca, "client.pem": cert,
            "client.key": key, "fleet.pub": certs.fleet_pub(),
            "ward.policy.toml": POLICY.encode()}


def wait_active(vm: ApplianceVM, key: Path, timeout: float,
                not_pid: str | None = None) -> dict[str, str]:
    """wardtap.service active (READY=1 sent), with a main process other than `not_pid`."""
    found: list[dict[str, str]] = []

    def active() -> bool:
        unit = vm.unit(key, "wardtap.service")
        found.append(unit)
        if unit["ActiveState"] == "failed":
            raise AssertionError(vm.ssh("journalctl -b -u wardtap.service --no-pager | "
                                        "tail -40", key).stdout)
        return unit["ActiveState"] == "active" and unit["MainPID"] != not_pid
    wait_for(active, timeout=timeout, interval=1, what="wardtap.service active")
    return found[-1]


def _blackout(arrivals: list[list[float]], sent: int, prompt: float = 0.25) -> float:
    """The longest time (s) new flows did not get through: from the sending of a probe that
    did not arrive within `prompt` s (late or lost) to the sending of the next one that did
    (or the last one sent, if none did)."""
    by_seq = {int(seq): (t_sent, t_got) for seq, t_sent, t_got in arrivals}
    if len(by_seq) < 2:
        return float("inf")
    # sending times of the lost ones, from their neighbours' (the rate is steady)
    first, last = min(by_seq), max(by_seq)
    interval = (by_seq[last][0] - by_seq[first][0]) / (last - first)
    t0 = by_seq[first][0] - first * interval
    longest, bad_since = 0.0, None
    for seq in range(sent):
        t_sent = by_seq[seq][0] if seq in by_seq else t0 + seq * interval
        ok = seq in by_seq and by_seq[seq][1] - by_seq[seq][0] <= prompt
        if not ok and bad_since is None:
            bad_since = t_sent
        elif ok and bad_since is not None:
            longest, bad_since = max(longest, t_sent - bad_since), None
    if bad_since is not None:                     # still not getting through at the end
        longest = max(longest, t0 + sent * interval - bad_since)
    return longest


def _finish(procs: list[subprocess.Popen[str]]) -> list[dict[str, Any]]:
    """SIGTERM each, then its JSON summary (killed if it does not answer)."""
    out: list[dict[str, Any]] = []
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            text, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            text, err = proc.communicate()
        try:
            out.append(json.loads(text.strip().splitlines()[-1]))
        except (IndexError, ValueError):
            raise AssertionError(f"{proc.args}: no summary (exit {proc.returncode}): "
                                 f"{text[-500:]!r} {err[-2000:]!r}") from None
    return out


def _seconds(value: str) -> float:
    """systemd's "15s" / "1min 30s" / "500ms" as seconds."""
    units = {"min": 60.0, "ms": 0.001, "s": 1.0, "us": 1e-6}
    total = 0.0
    for number, unit in re.findall(r"([0-9.]+)(min|ms|us|s)", value):
        total += float(number) * units[unit]
    return total


def stall_and_restart(vm: ApplianceVM, key: Path, rate: float = 200,
                      probe_rate: float = 20) -> dict[str, Any]:
    """Hang the daemon (SIGSTOP) while a ward stream (one flow) and new-flow probes run;
    wait for systemd's watchdog to kill it and start it again. The figures: seconds from
    the stall to the kill and to the new start (the VM's clock, from its journal), the
    stream's losses and longest gap, new flows lost and their longest blackout."""
    first = wait_active(vm, key, timeout=240)
    py = sys.executable
    receivers = [vm.popen_in("uplink", [py, UDPSTREAM, "recv", str(port)])
                 for port in (STREAM_PORT, PROBE_PORT)]
    senders: list[subprocess.Popen[str]] = []
    try:
        for rx in receivers:
            assert rx.stdout is not None and rx.stdout.readline().strip() == "listening"
        senders.append(vm.popen_in("ward", [py, UDPSTREAM, "send", UPLINK_IP, str(STREAM_PORT),
                                            str(rate)]))
        senders.append(vm.popen_in("ward", [py, UDPSTREAM, "send", UPLINK_IP, str(PROBE_PORT),
                                            str(probe_rate), "new-flows"]))
        time.sleep(2)     # both flowing before the stall
        # the VM's clock right after the signal (sudo is slow under emulation)
        stalled_at = float(vm.ssh(f"sudo sh -c 'kill -STOP {first['MainPID']}; "
                                  "cat /proc/uptime'", key).stdout.split()[0])
        second = wait_active(vm, key, timeout=120, not_pid=first["MainPID"])
        time.sleep(3)     # and after the restart
    finally:
        sent = _finish(senders)
        time.sleep(0.5)   # the last datagrams still on their way
        got = _finish(receivers)
    journal = vm.ssh("journalctl -b -o short-monotonic --no-pager _PID=1", key).stdout

    def after_stall(event: str) -> list[float]:
        return [float(m.group(1)) for m in re.finditer(
            rf"\[\s*([0-9.]+)\] \S+ systemd\[1\]: {event}", journal)
            if float(m.group(1)) > stalled_at]
    kills = after_stall("wardtap.service: Watchdog timeout")
    starts = [t for t in after_stall("Started wardtap.service") if kills and t > kills[0]]
    if not kills or not starts:
        raise AssertionError(f"no watchdog kill and restart in the journal:\n{journal[-3000:]}")
    stream, probes = got
    return {
        "watchdog_sec": _seconds(first["WatchdogUSec"]),
        "stall_to_kill_s": round(kills[0] - stalled_at, 2),
        "stall_to_started_s": round(starts[0] - stalled_at, 2),
        "restarts": int(second["NRestarts"]) - int(first["NRestarts"]),
        "stream_sent": sent[0].get("sent", 0),
        "stream_lost": sent[0].get("sent", 0) - stream.get("received", 0),
        "stream_longest_gap_ms": stream.get("longest_gap_ms"),
        "send_errors": {**sent[0].get("errors", {}), **sent[1].get("errors", {})},
        "new_flows_sent": sent[1].get("sent", 0),
        "new_flows_lost": sent[1].get("sent", 0) - probes.get("received", 0),
        "new_flow_blackout_ms": _ms(_blackout(probes.get("arrivals", []),
                                              sent[1].get("sent", 0))),
    }


def _ms(seconds: float) -> float:
    return seconds if seconds == float("inf") else round(seconds * 1000)
