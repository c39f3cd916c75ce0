"""The inline datapath in real network namespaces, with real traffic through a real bridge.

    ward (10.77.0.10) --veth-- [ ward0 br0 uplink0 ] --veth-- uplink (10.77.0.20)
                                appliance: `wardtap run` (inline, NFQUEUE) + netfilter rules

Servers and clients are sockets of this test process created inside the ward and uplink
namespaces (a thread enters the namespace, makes the socket, leaves), so timings are taken
where the data arrives. The appliance is the real daemon (`wardtap run --config`), except
for the queue-full case, which needs the watchdog off and a short queue (source options the
daemon's config does not carry) and runs the source under a few lines of driver instead.
Every wait is bounded; namespaces and processes are removed even when a test fails.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT
from inlinekit import InlineAppliance, ns_socket, ward_policy
from netns import UPLINK_IP, UPLINK_IP6, WARD_IP, Ward, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")

TCP_OK, TCP_DENIED, UDP_OK, UDP_DENIED = 8080, 9090, 5005, 5006


def policy(ward: Ward) -> str:
    return ward_policy(ward.mac(ward.ward), "inline-test", tcp=[TCP_OK], udp=[UDP_OK],
                       ping=True, ping6=True)


# The source under a minimal driver: for options the daemon's config does not carry.
DRIVER = """
import json, signal, sys, threading
from appliance.policy.model import compile_policy, parse_policy
from appliance.sources import make_source
from fastpath import Classifier
options = json.loads(sys.argv[1])
policy = parse_policy(open(sys.argv[2]).read())
clf = Classifier()
clf.set_policy(compile_policy(policy))
clf.set_mode("enforce")
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
v, r, u = bytearray(1 << 16), bytearray(1 << 16), memoryview(bytearray(1 << 17)).cast("H")
with make_source("inline", **options) as source:
    print("ready", flush=True)
    for batch in source.batches(stop):
        if batch.count:
            clf.classify(batch.buf, batch.offsets, batch.lengths, batch.timestamps,
                         batch.linktypes, v, r, u)
            source.verdict(batch, memoryview(v)[:batch.count], "enforce")
"""


# -- servers in the uplink ------------------------------------------------------------------

class Uplink:
    """Echo servers in the uplink namespace (TCP and UDP, IPv4 and IPv6); every TCP
    connection's arrivals are logged as (monotonic time, bytes)."""

    def __init__(self, ns: str) -> None:
        self.socks: list[socket.socket] = []
        self.arrivals: dict[tuple[str, int], list[tuple[float, int]]] = {}
        self.udp_seen: dict[int, set[int]] = {}
        for port in (TCP_OK, TCP_DENIED):
            s = ns_socket(ns, socket.AF_INET6)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("::", port))
            s.listen(64)
            self._spawn(self._accept, s)
        for port in (UDP_OK, UDP_DENIED):
            s = ns_socket(ns, socket.AF_INET6, socket.SOCK_DGRAM)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            s.bind(("::", port))
            self._spawn(self._udp, s, port)

    def _spawn(self, fn: Callable[..., None], sock: socket.socket, *args: Any) -> None:
        self.socks.append(sock)
        threading.Thread(target=fn, args=(sock, *args), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, peer = listener.accept()
            except OSError:
                return
            host = peer[0].removeprefix("::ffff:")      # IPv4 on the dual-stack socket
            self._spawn(self._echo, conn, (host, peer[1]))

    def _echo(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        log = self.arrivals.setdefault(peer, [])
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                return
            log.append((time.monotonic(), len(data)))
            if data.endswith(b"\n"):     # lines are echoed; bulk data is only counted
                try:
                    conn.sendall(data)
                except OSError:
                    return

    def _udp(self, sock: socket.socket, port: int) -> None:
        seen = self.udp_seen.setdefault(port, set())
        while True:
            try:
                data, peer = sock.recvfrom(2048)
            except OSError:
                return
            if data.startswith(b"seq "):
                seen.add(int(data[4:]))
            else:
                sock.sendto(data, peer)

    def close(self) -> None:
        for s in self.socks:
            s.close()


def tcp_exchange(ns: str, host: str, port: int, timeout: float = 0.6) -> bool:
    """Connect, send a line, read the echo: True when the whole conversation worked."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with ns_socket(ns, family) as s:
        s.settimeout(timeout)
        try:
            s.connect((host, port))
            s.sendall(b"hello\n")
            return s.recv(64) == b"hello\n"
        except OSError:
            return False


def udp_exchange(ns: str, host: str, port: int, timeout: float = 0.4) -> bool:
    with ns_socket(ns, socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(b"ping", (host, port))
        try:
            return s.recvfrom(64)[0] == b"ping"
        except OSError:
            return False


def ping(ward: Ward, host: str) -> bool:
    return ward.exec(ward.ward, f"ping -c1 -W1 {host}", check=False).returncode == 0


def time_until(condition: Callable[[], bool], timeout: float) -> float:
    """Seconds until condition() is true; fails after `timeout`."""
    start = time.monotonic()
    wait_for(condition, timeout=timeout, interval=0.01, what="traffic to flow")
    return time.monotonic() - start


class Stream:
    """An allowed TCP flow sending 1 KiB every 2 ms, and an allowed UDP flow of numbered
    datagrams every 2 ms, from the ward; the uplink logs what arrives."""

    def __init__(self, ward: Ward, uplink: Uplink) -> None:
        self.tcp = ns_socket(ward.ward)
        self.tcp.connect((UPLINK_IP, TCP_OK))
        self.peer = self.tcp.getsockname()[:2]
        self.udp = ns_socket(ward.ward, socket.AF_INET, socket.SOCK_DGRAM)
        self.uplink = uplink
        self.sent = 0
        self.seq = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        chunk = b"x" * 1024
        while not self.stop.wait(0.002):
            self.tcp.sendall(chunk)
            self.sent += len(chunk)
            self.udp.sendto(b"seq %d" % self.seq, (UPLINK_IP, UDP_OK))
            self.seq += 1

    def finish(self) -> tuple[float, int, int, int]:
        """(largest gap in ms between TCP arrivals, TCP bytes missing, UDP datagrams lost,
        TCP segments the sender retransmitted)."""
        self.stop.set()
        self.thread.join(5)
        log = self.uplink.arrivals[self.peer]
        wait_for(lambda: sum(n for _, n in log) >= self.sent, timeout=5,
                 what="the stream's last bytes")
        times = [t for t, _ in log]
        gap = max(b - a for a, b in zip(times, times[1:], strict=False)) * 1000
        time.sleep(0.05)
        lost = self.seq - len(self.uplink.udp_seen.get(UDP_OK, set()))
        # struct tcp_info: 8 bytes of u8 fields, then u32s; tcpi_total_retrans is the 24th
        info = self.tcp.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
        retransmits = struct.unpack_from("=I", info, 8 + 23 * 4)[0]
        self.tcp.close()
        self.udp.close()
        return gap, self.sent - sum(n for _, n in log), lost, retransmits


# -- the appliance -------------------------------------------------------------------------

@pytest.fixture
def ward() -> Iterator[Ward]:
    with Ward() as w:
        yield w


@pytest.fixture
def uplink(ward: Ward) -> Iterator[Uplink]:
    servers = Uplink(ward.uplink)
    yield servers
    servers.close()


@pytest.fixture
def appliances(ward: Ward, tmp_path: Path) -> Iterator[Callable[..., InlineAppliance]]:
    made: list[InlineAppliance] = []

    def make(mode: str = "enforce") -> InlineAppliance:
        appliance = InlineAppliance(ward, tmp_path, policy(ward), mode)
        made.append(appliance)
        return appliance.start()

    yield make
    for appliance in made:
        appliance.kill()


# -- the tests -------------------------------------------------------------------------------

def test_rules_are_idempotent_and_leave_other_marks_alone(ward: Ward) -> None:
    run = lambda *a: ward.exec(ward.appliance, [sys.executable, "-m",  # noqa: E731
                                                "appliance.sources.inlinectl", *a], check=False)
    installs = [run("install") for _ in range(2)]
    assert [r.returncode for r in installs] == [0, 0]
    # The first epoch depends on what a namespace of the same id left in /run/wardtap (ids
    # are reused); installing again must keep it.
    first = int(installs[0].stdout.rsplit("epoch", 1)[1])
    assert int(installs[1].stdout.rsplit("epoch", 1)[1]) == first
    for tool in ("iptables", "ip6tables"):
        forward = ward.exec(ward.appliance, f"{tool} -S FORWARD").stdout
        assert forward.count("-j WARDTAP_FWD") == 1
        assert "--physdev-is-bridged" in forward and "-i br0 -o br0" in forward
        chain = ward.exec(ward.appliance, f"{tool} -S WARDTAP_FWD").stdout
        assert "--queue-num 0 --queue-bypass" in chain
        assert "--nfmask 0xff000000 --ctmask 0xff000000" in chain   # other bits untouched
        assert chain.count("0xff000000") == 11
        # The classifier's hint: this conversation was known to the kernel before.
        assert "--ctstatus CONFIRMED -m comment --comment \"wardtap:known-conversation\" " \
               "-j MARK --set-xmark 0x3000000/0xff000000" in chain
    status = json.loads(run("status").stdout)
    assert status["state"] == "enforce" and status["epoch"] == first   # installing again: same
    assert status["bridge_nf_call"] == {"iptables": 1, "ip6tables": 1}

    assert run("bypass").returncode == 0
    chain = ward.exec(ward.appliance, "iptables -S WARDTAP_FWD").stdout
    assert "NFQUEUE" not in chain and "DROP" not in chain and chain.count("-A") == 2
    assert json.loads(run("status").stdout)["state"] == "bypass"
    assert run("remove").returncode == 0 and run("remove").returncode == 0
    for tool in ("iptables", "ip6tables"):
        assert "WARDTAP" not in ward.exec(ward.appliance, f"{tool} -S").stdout
    assert json.loads(run("status").stdout)["state"] == "unhooked"


def test_open_fails_with_one_clear_line(ward: Ward, tmp_path: Path) -> None:
    def open_source(options: str, *wrap: str) -> subprocess.CompletedProcess[str]:
        code = ("from appliance.sources import make_source, SourceError\n"
                f"s = make_source('inline', **{options})\n"
                "try:\n    s.open()\nexcept SourceError as e:\n    print(e); raise SystemExit(2)\n"
                "print('opened')\ns.close()\n")
        return ward.exec(ward.appliance, [*wrap, sys.executable, "-c", code], check=False)

    result = open_source("{'bridge': 'br9'}")
    assert result.returncode == 2
    assert result.stdout.strip().startswith("bridge 'br9' does not exist")
    result = open_source("{'bridge': 'ward0'}")
    assert "'ward0' is an interface but not a bridge" in result.stdout
    result = open_source("{'bridge': 'br0'}", "setpriv", "--inh-caps=-net_admin",
                         "--bounding-set=-net_admin")      # root, without CAP_NET_ADMIN
    assert result.returncode == 2 and len(result.stdout.strip().splitlines()) == 1
    assert "needs CAP_NET_ADMIN" in result.stdout

    holder = ward.popen(ward.appliance, [sys.executable, "-c", (
        "import sys, time; from appliance.sources import make_source\n"
        "s = make_source('inline', bridge='br0', queue=7, watchdog=False); s.open()\n"
        "print('ready', flush=True); time.sleep(30)")], stdout=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        result = open_source("{'bridge': 'br0', 'queue': 7}")
        assert result.returncode == 2 and "NFQUEUE 7 is already bound" in result.stdout
    finally:
        holder.kill()
        holder.wait(10)


def test_enforce_allows_the_allowed_and_drops_the_rest(
        ward: Ward, uplink: Uplink, appliances: Callable[..., InlineAppliance]) -> None:
    # Namespace-wide bridge netfilter off: the per-bridge switches the rules set suffice.
    ward.exec(ward.appliance, "sysctl -qw net.bridge.bridge-nf-call-iptables=0 "
                              "net.bridge.bridge-nf-call-ip6tables=0")
    # Someone else's marks: bit 0 of every connection's mark, bit 4 of every packet's.
    ward.exec(ward.appliance, "iptables -t mangle -A PREROUTING -j CONNMARK --or-mark 0x1")
    ward.exec(ward.appliance, "iptables -t mangle -A PREROUTING -j MARK --or-mark 0x10")
    app = appliances("enforce")
    # Allowed conversations: TCP (IPv4 and IPv6), UDP request/response, ping.
    assert tcp_exchange(ward.ward, UPLINK_IP, TCP_OK)
    assert tcp_exchange(ward.ward, UPLINK_IP6, TCP_OK)      # needs neighbour discovery too
    assert udp_exchange(ward.ward, UPLINK_IP, UDP_OK)
    assert ping(ward, UPLINK_IP) and ping(ward, UPLINK_IP6)
    # Denied: wrong port (TCP: the SYN is dropped, so the connect times out), wrong
    # protocol port (UDP), wrong initiator (the uplink may not start anything).
    assert not tcp_exchange(ward.ward, UPLINK_IP, TCP_DENIED)
    assert not tcp_exchange(ward.ward, UPLINK_IP6, TCP_DENIED)
    assert not udp_exchange(ward.ward, UPLINK_IP, UDP_DENIED)
    assert ward.exec(ward.uplink, f"ping -c1 -W1 {WARD_IP}", check=False).returncode != 0

    wait_for(lambda: len(app.events("violation")) >= 4, timeout=5, what="violation events")
    violations = app.events("violation")
    assert {(v["dport"], v["reason"]) for v in violations if v["proto"] == 6} == {
        (TCP_DENIED, "port_not_allowed")}
    assert {v["reason"] for v in violations if v["proto"] == 17} == {"port_not_allowed"}
    assert any(v["proto"] == 1 and v["src"] == UPLINK_IP for v in violations)
    allowed = [e for e in app.events("new_flow") if e["verdict"] == "allow"]
    assert {e["rule"] for e in allowed} >= {"ward-tcp", "ward-udp", "ward-ping", "ward-ping6"}
    assert all(e["smac"] == ward.mac(ward.ward) for e in allowed)   # MAC group, initiator

    # After its first packet a flow never leaves the kernel: 4 MiB, a handful in userspace.
    before = app.status()["source"]["packets"]
    with ns_socket(ward.ward) as s:
        s.connect((UPLINK_IP, TCP_OK))
        peer = s.getsockname()[:2]
        s.sendall(b"y" * (4 << 20))
        wait_for(lambda: sum(n for _, n in uplink.arrivals.get(peer, [])) == 4 << 20,
                 timeout=10, what="the bulk transfer")
    assert app.status()["source"]["packets"] - before <= 3
    conntrack = ward.exec(ward.appliance, f"conntrack -L -p tcp --sport {peer[1]}").stdout
    rules = app.rules()
    assert f"mark={int(rules['allow_mark'], 16) | 1}" in conntrack   # bit 0 kept
    assert rules["families"]["ipv4"]["packets"]["allowed-flow"] > 50   # GSO: 64 KiB each

    # A new policy (SIGHUP) applies to live flows too: the epoch rotates, so a conversation
    # the new policy denies is cut at its next packet.
    with ns_socket(ward.ward) as s:
        s.settimeout(0.6)
        s.connect((UPLINK_IP, TCP_OK))
        s.sendall(b"before\n")
        assert s.recv(64) == b"before\n"
        policy = app.dir / "policy.toml"
        policy.write_text(policy.read_text().replace("ports = [8080]", "ports = [8081]")
                          .replace("version = 1", "version = 2"))
        assert app.proc is not None
        app.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: app.events("policy_loaded"), timeout=5, what="the reload")
        s.sendall(b"after\n")
        with pytest.raises(TimeoutError):
            s.recv(64)
    assert not tcp_exchange(ward.ward, UPLINK_IP, TCP_OK)

    # A watchdog that dies is started again.
    first = app.watchdog_pid()
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: app.status()["source"]["watchdog_restarts"] == 1, timeout=10,
             what="the watchdog's restart")
    assert app.watchdog_pid() != first


def test_monitor_passes_everything_and_mode_changes_redecide_live_flows(
        ward: Ward, uplink: Uplink, appliances: Callable[..., InlineAppliance]) -> None:
    app = appliances("monitor")
    assert tcp_exchange(ward.ward, UPLINK_IP, TCP_OK)
    assert tcp_exchange(ward.ward, UPLINK_IP, TCP_DENIED)
    assert udp_exchange(ward.ward, UPLINK_IP, UDP_DENIED)
    wait_for(lambda: len(app.events("violation")) >= 2, timeout=5, what="violations")

    # A violating conversation that started under monitor is cut when enforcing starts:
    # the epoch rotates, the flow's next packet is decided again, and dropped.
    with ns_socket(ward.ward) as s:
        s.settimeout(0.6)
        s.connect((UPLINK_IP, TCP_DENIED))
        s.sendall(b"one\n")
        assert s.recv(64) == b"one\n"
        assert app.command(cmd="mode", mode="enforce")["ok"]
        s.sendall(b"two\n")
        with pytest.raises(TimeoutError):
            s.recv(64)
    assert not tcp_exchange(ward.ward, UPLINK_IP, TCP_DENIED)
    assert tcp_exchange(ward.ward, UPLINK_IP, TCP_OK)

    # Bypass: the kernel forwards everything, nothing is queued.
    assert app.command(cmd="mode", mode="bypass")["ok"]
    assert app.rules()["state"] == "bypass"
    assert tcp_exchange(ward.ward, UPLINK_IP, TCP_DENIED)
    assert app.command(cmd="mode", mode="enforce")["ok"]
    assert app.rules()["state"] == "enforce"
    assert not tcp_exchange(ward.ward, UPLINK_IP, TCP_DENIED)


def test_kill_9_fails_open_and_enforcement_resumes_after_restart(
        ward: Ward, uplink: Uplink, appliances: Callable[..., InlineAppliance],
        record_property: Callable[[str, object], None]) -> None:
    app = appliances("enforce")
    stream = Stream(ward, uplink)
    time.sleep(0.3)
    watchdog = app.watchdog_pid()
    app.kill(signal.SIGKILL)
    killed = time.monotonic()
    # No listener: --queue-bypass forwards new flows, allowed or not (fail-open).
    first_new = time_until(lambda: tcp_exchange(ward.ward, UPLINK_IP, TCP_OK, 0.3), 2.0)
    assert first_new < 1.0
    assert tcp_exchange(ward.ward, UPLINK_IP, TCP_DENIED)
    # A denied conversation that starts while nobody classifies ...
    late = ns_socket(ward.ward)
    late.settimeout(0.6)
    late.connect((UPLINK_IP, TCP_DENIED))
    # (it sees the heartbeat pipe close at once; a loaded machine may keep it in an
    # iptables-restore for a while first)
    wait_for(lambda: not os.path.exists(f"/proc/{watchdog}"), timeout=10,
             what="the watchdog to follow its parent")
    time.sleep(max(0.0, killed + 0.6 - time.monotonic()))
    gap_ms, missing, lost, retransmits = stream.finish()
    record_property("kill9_gap_ms", round(gap_ms, 2))
    record_property("kill9_first_new_flow_ms", round(first_new * 1000, 1))
    print(f"kill -9: largest gap in the allowed stream {gap_ms:.1f} ms, {lost} datagrams "
          f"lost, first new flow after {first_new * 1000:.0f} ms")
    # nothing lost, and nothing had to be sent again (the gap is printed: it is a time, and
    # a loaded machine stretches it without any packet being lost)
    assert missing == 0 and lost == 0 and retransmits == 0

    app.start()
    # ... is decided on its next packet once the classifier is back, and dropped.
    late.sendall(b"after\n")
    with pytest.raises(TimeoutError):
        late.recv(64)
    late.close()
    assert not tcp_exchange(ward.ward, UPLINK_IP, TCP_DENIED)
    assert tcp_exchange(ward.ward, UPLINK_IP, TCP_OK)


def test_stopped_classifier_fails_open_through_the_watchdog(
        ward: Ward, uplink: Uplink, appliances: Callable[..., InlineAppliance],
        record_property: Callable[[str, object], None]) -> None:
    app = appliances("enforce")
    assert app.proc is not None
    stream = Stream(ward, uplink)
    time.sleep(0.2)
    os.kill(app.proc.pid, signal.SIGSTOP)
    try:
        # New flows: one datagram every 10 ms, each from a new socket (a new flow).
        socks = []

        def new_flow_passes() -> bool:
            s = ns_socket(ward.ward, socket.AF_INET, socket.SOCK_DGRAM)
            socks.append(s)
            s.settimeout(0.01)
            s.sendto(b"new", (UPLINK_IP, UDP_OK))
            try:
                return s.recv(16) == b"new"
            except OSError:
                return False

        first_new = time_until(new_flow_passes, 3.0)
        assert app.rules()["state"] == "failopen"
        assert tcp_exchange(ward.ward, UPLINK_IP, TCP_OK, 1.5)
        gap_ms, missing, lost, retransmits = stream.finish()
        for s in socks:
            s.close()
    finally:
        os.kill(app.proc.pid, signal.SIGCONT)
    record_property("sigstop_first_new_flow_ms", round(first_new * 1000, 1))
    print(f"SIGSTOP: new flows pass after {first_new * 1000:.0f} ms; allowed stream gap "
          f"{gap_ms:.1f} ms, {lost} datagrams lost")
    assert first_new < 1.0 and missing == 0 and lost == 0 and retransmits == 0
    wait_for(lambda: app.rules()["state"] == "enforce", timeout=3, what="enforcement to resume")
    assert not tcp_exchange(ward.ward, UPLINK_IP, TCP_DENIED)
    assert tcp_exchange(ward.ward, UPLINK_IP, TCP_OK)


def test_full_queue_fails_open_without_the_watchdog(
        ward: Ward, uplink: Uplink, tmp_path: Path,
        record_property: Callable[[str, object], None]) -> None:
    (tmp_path / "policy.toml").write_text(policy(ward))
    options = json.dumps({"bridge": "br0", "queue": 3, "max_len": 32, "watchdog": False})
    driver = ward.popen(ward.appliance, [sys.executable, "-c", DRIVER, options,
                                         str(tmp_path / "policy.toml")],
                        stdout=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    socks: list[socket.socket] = []
    try:
        assert driver.stdout is not None and driver.stdout.readline().strip() == "ready"
        assert udp_exchange(ward.ward, UPLINK_IP, UDP_OK)
        assert not udp_exchange(ward.ward, UPLINK_IP, UDP_DENIED)
        os.kill(driver.pid, signal.SIGSTOP)
        # 64 new flows, 2 ms apart: the first 32 wait in the queue, the rest pass.
        for _ in range(64):
            s = ns_socket(ward.ward, socket.AF_INET, socket.SOCK_DGRAM)
            s.setblocking(False)
            s.sendto(b"flow", (UPLINK_IP, UDP_OK))
            socks.append(s)
            time.sleep(0.002)
        time.sleep(0.2)
        answered = []
        for i, s in enumerate(socks):
            try:
                answered.append((i, s.recv(16)))
            except BlockingIOError:
                pass
        record_property("queue_full_first_passed", answered[0][0] if answered else None)
        print(f"queue of 32, classifier stopped: {len(answered)} of 64 new flows passed, "
              f"the first at #{answered[0][0] if answered else None}")
        assert len(answered) == 32 and answered[0][0] == 32
        os.kill(driver.pid, signal.SIGCONT)
        # The 32 waiting ones are answered once it runs again.
        wait_for(lambda: any(_recv(s) for s in socks[:32]), timeout=3, what="late verdicts")
    finally:
        os.kill(driver.pid, signal.SIGCONT)
        driver.terminate()
        driver.wait(10)
        for s in socks:
            s.close()


def _recv(s: socket.socket) -> bool:
    try:
        return bool(s.recv(16))
    except BlockingIOError:
        return False


def test_clean_stop_removes_the_rules_and_wardtap_inline_says_so(
        ward: Ward, appliances: Callable[..., InlineAppliance]) -> None:
    """SIGTERM: the WARDTAP chains go (a stopped appliance blocks nothing); `wardtap
    inline status` says what the kernel holds, `remove` clears what a crash left."""
    def inline(*args: str) -> subprocess.CompletedProcess[str]:
        return ward.exec(ward.appliance, [sys.executable, "-m", "appliance.cli", "inline",
                                          *args], check=False)

    app = appliances("enforce")
    status = inline("status")
    assert status.returncode == 0 and status.stdout.startswith("br0: enforcing")
    assert "a classifier is listening" in status.stdout
    app.kill(signal.SIGTERM)
    assert app.proc is not None and app.proc.returncode == 0
    for tool in ("iptables", "ip6tables"):
        assert "WARDTAP" not in ward.exec(ward.appliance, f"{tool} -S").stdout
    assert inline("status").stdout.startswith("br0: no wardtap rules")
    # a crash (kill -9) leaves them; `wardtap inline remove` takes them away
    app = appliances("enforce")
    app.kill(signal.SIGKILL)
    assert inline("status").stdout.startswith("br0: enforcing")
    removed = inline("remove")
    assert removed.returncode == 0 and "forwards plainly" in removed.stdout
    assert json.loads(inline("status", "--json").stdout)["families"]["ipv4"]["hooked"] is False
