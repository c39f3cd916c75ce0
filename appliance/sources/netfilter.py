"""Netfilter rules for inline enforcement on a bridge, installed and removed idempotently.

The bridge forwards in the kernel. br_netfilter hands its bridged IPv4 and IPv6 packets to
the FORWARD hook, where one rule per family jumps to our own chain:

    FORWARD  -i br0 -o br0 -m physdev --physdev-is-bridged -j WARDTAP_FWD

    WARDTAP_FWD (state "enforce"):
      1  conntrack mark == ALLOW(epoch)  -> ACCEPT     an allowed flow: never leaves the kernel
      2  conntrack mark == DENY(epoch)   -> DROP       a denied flow: never leaves the kernel
      3  packet mark == ALLOW(epoch)     -> CONNMARK --save-mark   (the classifier's verdict,
      4  packet mark == ALLOW(epoch)     -> ACCEPT                  remembered by the flow)
      5  packet mark == DENY(epoch)      -> CONNMARK --save-mark
      6  packet mark == DENY(epoch)      -> DROP
      7  conntrack status CONFIRMED      -> MARK KNOWN   (a hint for the classifier, below)
      8  everything else                 -> NFQUEUE --queue-num N --queue-bypass
    (IPv6 only, before 7: neighbour discovery and MLD accepted, as ARP is never queued)
      9  (no target, never reached: the state in its comment, "wardtap state=enforce epoch=3")

Why per-flow verdicts: the classifier decides a flow on its first packet, so only that
packet needs to cross into userspace. Its verdict comes back as a packet mark with
NF_REPEAT; rules 3-6 copy the mark into the flow's conntrack mark and accept or drop it;
every later packet of the flow, in both directions, is matched by rule 1 or 2 and never
leaves the kernel. The cost of inline enforcement is then one userspace round trip per
flow, not per packet (docs/datapaths.md has the measured figures).

Rule 7 tells the classifier whether the kernel tracked the queued packet's conversation
before it (its conntrack entry is confirmed: earlier packets of it went through, decided or
not, e.g. while the classifier restarted) or whether this packet is the first the kernel has
seen of it. A packet that looks like an answer is taken for one only in the first case: an
"answer" whose conversation the kernel has never seen answers nothing (docs/fastpath.md, "Who
started a flow"). The hint is verdict value 3 of epoch 0 in the same mask, a value no verdict
takes; the verdict the classifier gives replaces it.

Marks live under one contiguous mask (default 0xff000000), so other users of the packet
and conntrack marks keep their bits: the two lowest bits of the field are the verdict
(1 allow, 2 deny), the others an epoch. Rotating the epoch (a new policy, a mode change, a
restarted classifier) makes every existing mark stale at once, so each flow's next packet
is queued and decided again under the new policy; nothing has to walk the conntrack table.

Other states of the same chain:
  failopen: rules 1-6 kept, rule 7 replaced by ACCEPT. Set by the watchdog when the
            classifier stops taking packets off the queue (hung, stopped, stuck in I/O).
  bypass:   one rule, ACCEPT: the bridge forwards everything plainly (commanded bypass,
            maintenance). The jump stays, so a FORWARD policy of DROP cannot cut the ward.

Every change to the chain is one iptables-restore transaction per family (atomic in
iptables-nft) under a lock, so the daemon and the watchdog never interleave.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from appliance.errors import WardtapError

CHAIN = "WARDTAP_FWD"
DEFAULT_MASK = 0xFF000000
VERDICT_ALLOW, VERDICT_DENY = 1, 2
HINT_KNOWN = 3                # verdict bits no verdict uses: a hint on a queued packet
FAMILIES = ("ipv4", "ipv6")
log = logging.getLogger("wardtap.inline")
EPOCH_DIR = "/run/wardtap"
_TOOLS = {"ipv4": ("iptables", "iptables-restore"), "ipv6": ("ip6tables", "ip6tables-restore")}
STATES = ("enforce", "failopen", "bypass")
QUEUE_PROC = "/proc/net/netfilter/nfnetlink_queue"
# IPv6's ARP: router/neighbour solicitation and advertisement (hop limit 255, so they cannot
# come from off the link, RFC 4861) and MLD (hop limit 1). Like ARP, which never enters
# iptables, they are forwarded without classification; without them IPv6 stops working.
_LINK_PLUMBING = ((133, 255), (134, 255), (135, 255), (136, 255),
                  (130, 1), (131, 1), (132, 1), (143, 1))
_STATE_RE = re.compile(r'wardtap state=(\w+) epoch=(\d+) queue=(\d+)(?: tracking=(\d+))?')
_COUNTER_RE = re.compile(r'--comment "?wardtap:([\w-]+)"? -c (\d+) (\d+)')


class InlineError(WardtapError):
    """The enforcement rules cannot be read or changed."""


@dataclass(frozen=True)
class Marks:
    """Verdict and epoch bits inside one contiguous mask of the 32-bit mark."""

    mask: int = DEFAULT_MASK

    def __post_init__(self) -> None:
        mask = self.mask
        if not 0 < mask <= 0xFFFFFFFF:
            raise InlineError(f"mark mask {mask:#x} is not a 32-bit mask")
        shift = (mask & -mask).bit_length() - 1
        field = mask >> shift
        if field & (field + 1) or field < 0b111:
            raise InlineError(f"mark mask {mask:#x} must be at least 3 contiguous bits")

    @property
    def shift(self) -> int:
        return (self.mask & -self.mask).bit_length() - 1

    @property
    def epochs(self) -> int:
        return (self.mask >> self.shift) + 1 >> 2

    def value(self, verdict: int, epoch: int) -> int:
        return ((epoch % self.epochs) << 2 | verdict) << self.shift

    def allow(self, epoch: int) -> int:
        return self.value(VERDICT_ALLOW, epoch)

    def deny(self, epoch: int) -> int:
        return self.value(VERDICT_DENY, epoch)

    @property
    def known(self) -> int:
        """The hint "the kernel tracked this conversation before this packet" (rule 7)."""
        return self.value(HINT_KNOWN, 0)

    def next_epoch(self, epoch: int) -> int:
        return (epoch + 1) % self.epochs


@dataclass
class QueueStats:
    """One line of /proc/net/netfilter/nfnetlink_queue (the kernel's view of a queue)."""

    queue: int
    portid: int          # netlink port of the listener
    queued: int          # packets waiting for a verdict now
    copy_mode: int
    copy_range: int
    dropped: int         # queue full without fail-open
    user_dropped: int    # netlink socket full without fail-open
    id_sequence: int     # packets handed to the listener so far

    @property
    def done(self) -> int:
        """Packets handed out and already answered (or flushed)."""
        return self.id_sequence - self.queued


def queue_stats(queue: int) -> QueueStats | None:
    """The kernel's counters of `queue` in this network namespace; None if nobody listens."""
    try:
        with open(QUEUE_PROC) as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) >= 8 and int(fields[0]) == queue:
            return QueueStats(*(int(f) for f in fields[:8]))
    return None


def _netns_id() -> int:
    try:
        return os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return 0


class InlineRules:
    """The enforcement rules of one bridge, for IPv4 and IPv6."""

    def __init__(self, bridge: str = "br0", queue: int = 0, mask: int = DEFAULT_MASK,
                 chain: str = CHAIN, neighbour_discovery: bool = True) -> None:
        self.bridge = bridge
        self.neighbour_discovery = neighbour_discovery
        self.queue = queue
        self.marks = Marks(mask)
        self.chain = chain
        lock_dir = "/run/lock" if os.path.isdir("/run/lock") else "/tmp"
        self.lock_path = os.path.join(lock_dir, f"wardtap-inline-{_netns_id()}-{chain}.lock")
        # The epoch of rules removed by a clean stop: conntrack keeps the flows' marks after
        # the rules are gone, so the next install must not reuse an epoch they carry. Kept
        # in /run, which is emptied at boot as conntrack is.
        self.epoch_path = os.path.join(EPOCH_DIR, f"inline-{_netns_id()}-{chain}.epoch")

    # -- commands ------------------------------------------------------------------------

    def check_tools(self) -> None:
        for family in FAMILIES:
            for tool in _TOOLS[family]:
                if shutil.which(tool) is None:
                    raise InlineError(f"{tool} not found: install iptables (apt install "
                                      "iptables) for inline enforcement")

    def _run(self, args: list[str], stdin: str | None = None,
             check: bool = True) -> subprocess.CompletedProcess[str]:
        try:
            result = subprocess.run(args, input=stdin, capture_output=True, text=True,
                                    timeout=30)
        except FileNotFoundError:
            raise InlineError(f"{args[0]} not found: install iptables") from None
        except subprocess.TimeoutExpired:
            raise InlineError(f"{args[0]} did not finish within 30 s") from None
        if check and result.returncode != 0:
            message = " ".join((result.stderr or result.stdout).split()) or "failed"
            raise InlineError(f"{' '.join(args[:2])}: {message}")
        return result

    def _jump(self) -> list[str]:
        return ["FORWARD", "-i", self.bridge, "-o", self.bridge, "-m", "physdev",
                "--physdev-is-bridged", "-m", "comment", "--comment",
                f"wardtap: bridged traffic of {self.bridge}", "-j", self.chain]

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # Opened read-only and created only when missing: the unprivileged daemon and the
        # image's wardtap-bypass (root) share the file, and fs.protected_regular refuses an
        # O_CREAT open of another user's file in a sticky directory such as /run/lock.
        try:
            fd = os.open(self.lock_path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            fd = os.open(self.lock_path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd) as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # -- rendering -----------------------------------------------------------------------

    def render(self, state: str, epoch: int, family: str = "ipv4", tracking: int = 0) -> str:
        """The chain's content in iptables-restore syntax for one family. `tracking`: since
        when (CLOCK_BOOTTIME seconds) the chain has tracked connections without a break."""
        if state not in STATES:
            raise InlineError(f"unknown rule state {state!r}")
        c, m = self.chain, self.marks
        mask = f"{m.mask:#010x}"
        allow, deny = f"{m.allow(epoch):#010x}/{mask}", f"{m.deny(epoch):#010x}/{mask}"
        save = f"-j CONNMARK --save-mark --nfmask {mask} --ctmask {mask}"

        def rule(match: str, tag: str, target: str) -> str:
            return f'-A {c} {match}-m comment --comment "wardtap:{tag}" {target}'

        lines = ["*filter", f":{c} - [0:0]", f"-F {c}"]
        if state == "bypass":
            lines.append(rule("", "bypass", "-j ACCEPT"))
        else:
            lines += [
                rule(f"-m connmark --mark {allow} ", "allowed-flow", "-j ACCEPT"),
                rule(f"-m connmark --mark {deny} ", "denied-flow", "-j DROP"),
                rule(f"-m mark --mark {allow} ", "save-allow", save),
                rule(f"-m mark --mark {allow} ", "allow", "-j ACCEPT"),
                rule(f"-m mark --mark {deny} ", "save-deny", save),
                rule(f"-m mark --mark {deny} ", "deny", "-j DROP"),
            ]
            if family == "ipv6" and self.neighbour_discovery:
                lines += [rule(f"-p ipv6-icmp --icmpv6-type {t} -m hl --hl-eq {hl} ",
                               "link-plumbing", "-j ACCEPT") for t, hl in _LINK_PLUMBING]
            if state == "enforce":
                known = f"{m.known:#010x}/{mask}"
                lines.append(rule("-m conntrack --ctstatus CONFIRMED ", "known-conversation",
                                  f"-j MARK --set-xmark {known}"))
                lines.append(rule("", "queue",
                                  f"-j NFQUEUE --queue-num {self.queue} --queue-bypass"))
            else:
                lines.append(rule("", "failopen", "-j ACCEPT"))
        # The state, for status() and the watchdog: after the last verdict, never evaluated.
        lines += [f'-A {c} -m comment --comment "wardtap state={state} epoch={epoch} '
                  f'queue={self.queue} tracking={tracking}"', "COMMIT"]
        return "\n".join(lines) + "\n"

    def _write(self, state: str, epoch: int, tracking: int = 0) -> None:
        for family in FAMILIES:
            iptables, restore = _TOOLS[family]
            self._run([restore, "-w", "--noflush"],
                      stdin=self.render(state, epoch, family, tracking))
            if self._run([iptables, "-w", "-C", *self._jump()], check=False).returncode:
                self._run([iptables, "-w", "-I", self._jump()[0], "1", *self._jump()[1:]])

    def _read_state(self) -> tuple[str, int, int] | None:
        """(state, epoch, tracking since) from the IPv4 chain; None if not installed."""
        result = self._run(["iptables", "-w", "-S", self.chain], check=False)
        if result.returncode != 0:
            return None
        found = _STATE_RE.search(result.stdout)
        if not found:
            return None
        return found.group(1), int(found.group(2)), int(found.group(4) or 0)

    def _enable_bridge_netfilter(self) -> None:
        """Make this bridge's IP traffic traverse iptables/ip6tables (br_netfilter).

        The per-bridge options are set rather than the namespace-wide
        net.bridge.bridge-nf-call-ip{,6}tables sysctls, so other bridges on the host (a
        container bridge, say) are not pulled into netfilter; the kernel ORs the two.
        """
        sysfs = f"/sys/class/net/{self.bridge}/bridge"
        if not os.path.isdir(sysfs):
            raise InlineError(f"{self.bridge} is not a bridge (no {sysfs})")
        if not os.path.isdir("/proc/sys/net/bridge"):
            subprocess.run(["modprobe", "br_netfilter"], capture_output=True, timeout=30)
        if not os.path.isdir("/proc/sys/net/bridge"):
            raise InlineError("br_netfilter is not available: modprobe br_netfilter "
                              "(CONFIG_BRIDGE_NETFILTER) for inline enforcement")
        for option in ("nf_call_iptables", "nf_call_ip6tables"):
            if _read_int(os.path.join(sysfs, option)) == 1:
                continue     # already on (the image's wardtap-prepare, run as root, did it)
            try:
                with open(os.path.join(sysfs, option), "w") as fh:
                    fh.write("1")
            except OSError:   # an old kernel without the per-bridge switch
                self._run(["sysctl", "-qw",
                           f"net.bridge.bridge-{option.replace('_', '-')}=1"])

    # -- public operations ---------------------------------------------------------------

    def install(self, epoch: int | None = None, rotate: bool = False) -> int:
        """Enforce: queue undecided flows. Returns the epoch in force.

        With `rotate`, the epoch advances, so every flow marked before is decided again on
        its next packet. Idempotent: installing twice leaves one jump and one chain.
        """
        self.check_tools()
        with self._locked():
            self._enable_bridge_netfilter()
            current = self._read_state()
            if epoch is None:
                epoch = current[1] if current else self._removed_epoch()
                if rotate or current is None:
                    epoch = self.marks.next_epoch(epoch)
            # Connections are tracked from the first install after boot (the conntrack
            # matches register the kernel's tracking); bypass has none, so it starts again.
            tracking = current[2] if current and current[0] != "bypass" and current[2] \
                else boottime()
            self._write("enforce", epoch, tracking)
        return epoch

    def tracking_since(self) -> int | None:
        """Since when (CLOCK_BOOTTIME seconds) the kernel has tracked this bridge's
        connections without a break; None when the rules are absent or in bypass."""
        current = self._read_state()
        if current is None or current[0] == "bypass" or not current[2]:
            return None
        return current[2]

    def rotate(self) -> int:
        return self.install(rotate=True)

    def fail_open(self) -> bool:
        """Stop queueing (decided flows stay decided). Only from "enforce"; True if done."""
        with self._locked():
            current = self._read_state()
            if current is None or current[0] != "enforce":
                return False
            self._write("failopen", current[1], current[2])
            return True

    def resume(self) -> bool:
        """Back from "failopen" to "enforce" with the same epoch; True if done."""
        with self._locked():
            current = self._read_state()
            if current is None or current[0] != "failopen":
                return False
            self._write("enforce", current[1], current[2])
            return True

    def _removed_epoch(self) -> int:
        try:
            with open(self.epoch_path) as fh:
                return int(fh.read().strip()) % self.marks.epochs
        except (OSError, ValueError):
            return 0

    def _keep_removed_epoch(self, epoch: int) -> None:
        """Atomically (a file of another user in the directory is replaced, not written)."""
        try:
            os.makedirs(EPOCH_DIR, mode=0o755, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=EPOCH_DIR, prefix=".epoch-")
            with os.fdopen(fd, "w") as fh:
                fh.write(f"{epoch}\n")
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.epoch_path)
        except OSError as exc:
            # Not fatal: the next install may then reuse an epoch, so flows decided before
            # keep their verdicts until they end instead of being decided again.
            log.warning("inline: cannot keep the epoch in %s (%s)", EPOCH_DIR, exc.strerror)

    def bypass(self) -> None:
        """Forward everything plainly; the jump stays so `install` returns at once."""
        self.check_tools()
        with self._locked():
            current = self._read_state()
            self._write("bypass", current[1] if current else 0)

    def remove(self) -> None:
        """Delete the jumps and the chains (both families); absent rules are fine."""
        with self._locked():
            current = self._read_state()
            if current is not None:
                self._keep_removed_epoch(current[1])
            for family in FAMILIES:
                iptables, _ = _TOOLS[family]
                while self._run([iptables, "-w", "-D", *self._jump()], check=False
                                ).returncode == 0:
                    pass
                self._run([iptables, "-w", "-F", self.chain], check=False)
                self._run([iptables, "-w", "-X", self.chain], check=False)

    def status(self) -> dict[str, Any]:
        """What is installed, the rule counters, the queue's and conntrack's state."""
        out: dict[str, Any] = {"bridge": self.bridge, "queue": self.queue, "chain": self.chain,
                               "mark_mask": f"{self.marks.mask:#010x}"}
        states = set()
        families: dict[str, Any] = {}
        for family in FAMILIES:
            iptables, _ = _TOOLS[family]
            hooked = self._run([iptables, "-w", "-C", *self._jump()], check=False)
            chain = self._run([iptables, "-w", "-v", "-S", self.chain], check=False)
            found = _STATE_RE.search(chain.stdout) if chain.returncode == 0 else None
            state = found.group(1) if found else "absent"
            if found:
                out["epoch"] = int(found.group(2))
            states.add(state if hooked.returncode == 0 else "unhooked")
            packets: dict[str, int] = {}
            for tag, count, _ in _COUNTER_RE.findall(chain.stdout):
                packets[tag] = packets.get(tag, 0) + int(count)
            families[family] = {"hooked": hooked.returncode == 0, "state": state,
                                "packets": packets}
        out["state"] = states.pop() if len(states) == 1 else "inconsistent"
        out["families"] = families
        if "epoch" in out:
            out["allow_mark"] = f"{self.marks.allow(out['epoch']):#010x}"
            out["deny_mark"] = f"{self.marks.deny(out['epoch']):#010x}"
        out["bridge_nf_call"] = {
            name: _read_int(f"/sys/class/net/{self.bridge}/bridge/nf_call_{name}")
            for name in ("iptables", "ip6tables")}
        q = queue_stats(self.queue)
        out["listener"] = None if q is None else q.__dict__
        out["conntrack"] = {
            "count": _read_int("/proc/sys/net/netfilter/nf_conntrack_count"),
            "max": _read_int("/proc/sys/net/netfilter/nf_conntrack_max")}
        return out


def boottime() -> int:
    """Seconds since boot, suspend included (the clock conntrack timeouts run on)."""
    return int(time.clock_gettime(time.CLOCK_BOOTTIME))


def _read_int(path: str) -> int | None:
    try:
        with open(path) as fh:
            return int(fh.read().strip())
    except (OSError, ValueError):
        return None
