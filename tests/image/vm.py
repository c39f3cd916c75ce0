"""The built image booted in qemu: the stage's own systemd, units, bridge and first boot.

    ward ns 10.77.0.10 --tap-- eth1 [ br0 ] eth0 --tap-- uplink ns 10.77.0.20
                                  the VM
                                eth2 (slirp: DHCP; 10.0.2.2 is this machine's loopback;
                                      ssh forwarded from 127.0.0.1:<port>)

qemu creates its tap devices in this namespace; they are then moved into the ward and
uplink namespaces and addressed there, so each tap is the far end of one of the
appliance's bridged ports. The disk is a copy of image/make-vm-disk.sh's, with the given
files written to its boot partition: every boot is a first boot.

No pytest here: bench/bench_watchdog.py drives the same VM. ward.py has what the tests
put on the boot partition and the stall measurement.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
from netns import UPLINK_IP, WARD_IP, sh, wait_for  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
BOOT_OFFSET = "@@1M"              # p1 starts at 1 MiB (image/make-vm-disk.sh)
# qemu's KVM on this kind of machine starts guests that never get past the kernel's
# decompression (the nested CPU lacks most CPUID features), so emulation is the default.
ACCEL = os.environ.get("WARDTAP_VM_ACCEL", "tcg,thread=multi")
# qemu for the image's architecture (OUT/arch from make-vm-disk.sh): the binary and machine
# options, and the serial console's name. An i6300esb watchdog on the PC.
QEMU = {
    "amd64": (["qemu-system-x86_64", "-device", "i6300esb"], "ttyS0"),
    "arm64": (["qemu-system-aarch64", "-M", "virt", "-cpu", "max"], "ttyAMA0"),
}
# Where the image build keeps its base system between test runs (WARDTAP_IMAGE_CACHE).
IMAGE_CACHE = Path("/var/cache/wardtap-test/image")
HOST_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_image(out: Path, arch: str | None = None) -> Path:
    """Build the stage in a chroot and make the VM disk in `out` (about 4 minutes natively),
    with an SSH key for the admin account baked in, as pi-gen's PUBKEY_SSH_FIRST_USER
    would. `arch` (Debian's name) builds for another architecture under qemu-user."""
    out.mkdir(parents=True, exist_ok=True)
    key = out / "admin_key"
    if not key.exists():
        sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "wardtap-test", "-f", str(key)])
    root = out / "root"
    # The base system (debootstrap, kernel) is kept between runs: image/build-chroot.sh
    # BASE_CACHE; every step of the stage itself runs fresh.
    env = {**os.environ, "PUBKEY_SSH_FIRST_USER": (out / "admin_key.pub").read_text().strip(),
           "BASE_CACHE": os.environ.get("WARDTAP_IMAGE_CACHE", str(IMAGE_CACHE)),
           **({"ARCH": arch} if arch else {})}
    try:
        for cmd in ([str(REPO / "image/build-chroot.sh"), str(root)],
                    [str(REPO / "image/make-vm-disk.sh"), str(root), str(out)]):
            # its own process group: on a timeout the whole build is killed, not just bash
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, start_new_session=True)
            try:
                output, _ = proc.communicate(timeout=7200)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise
            if proc.returncode != 0:
                raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}):\n{output[-5000:]}")
    finally:
        # build-chroot.sh unmounts on exit; after a kill its trap never ran, and a later
        # rm -r of the temporary directory must not walk into this machine's /dev or /sys
        for mount in ("dev/pts", "dev", "sys", "proc"):
            sh(["umount", "-l", str(root / mount)], check=False)
    return out


class ApplianceVM:
    """One boot of the image. `boot_files` go onto the boot partition before it starts."""

    def __init__(self, build: Path, work: Path, boot_files: dict[str, bytes] | None = None,
                 memory_mib: int = 1024) -> None:
        self.build = build
        self.work = work
        self.boot_files = boot_files or {}
        self.memory_mib = memory_mib
        tag = uuid.uuid4().hex[:6]
        self.ward_ns, self.uplink_ns = f"wtv{tag}-ward", f"wtv{tag}-up"
        self.taps = {"uplink": f"wtv{tag}a", "ward": f"wtv{tag}b"}   # eth0, eth1
        self.ssh_port = free_port()
        # One SSH connection per key, kept open and shared by every command (ControlMaster):
        # each new connection costs the emulated guest a key exchange of a second or more.
        # A short directory: a socket's path has a 108-byte limit.
        self.ssh_sockets = Path(tempfile.mkdtemp(prefix="wtssh-"))
        self.console = work / "console.log"
        self.proc: subprocess.Popen[bytes] | None = None

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> ApplianceVM:
        self.work.mkdir(parents=True, exist_ok=True)
        disk = self.work / "disk.img"
        sh(["cp", "--sparse=always", str(self.build / "disk.img"), str(disk)], timeout=300)
        for name, data in self.boot_files.items():
            (self.work / name).write_bytes(data)
            sh(["mcopy", "-o", "-i", f"{disk}{BOOT_OFFSET}", str(self.work / name), f"::/{name}"])
        arch_file = self.build / "arch"
        qemu, console = QEMU[arch_file.read_text().strip() if arch_file.exists() else HOST_ARCH]
        cmdline = (self.build / "cmdline").read_text().strip().replace(
            "console=ttyS0", f"console={console}") + " systemd.show_status=1"
        nics = []
        for letter, (_, tap) in zip("ab", self.taps.items(), strict=True):
            nics += ["-netdev", f"tap,id={letter},ifname={tap},script=no,downscript=no",
                     "-device", f"virtio-net-pci,netdev={letter},mac=52:54:00:77:00:0{letter}"]
        cmd = [*qemu, "-accel", ACCEL, "-smp", "2", "-m", str(self.memory_mib),
               "-nographic", "-no-reboot", "-monitor", "none",
               "-kernel", str(self.build / "vmlinuz"), "-initrd", str(self.build / "initrd"),
               "-append", cmdline,
               "-drive", f"file={disk},format=raw,if=virtio",
               *nics,
               "-netdev", f"user,id=m,hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22",
               "-device", "virtio-net-pci,netdev=m,mac=52:54:00:77:00:0c",
               "-serial", f"file:{self.console}"]
        with open(self.work / "qemu.log", "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        try:
            self._wire()
        except BaseException:
            self.close()
            raise
        return self

    def _wire(self) -> None:
        """Move the taps into the ward and uplink namespaces, as those hosts' interfaces."""
        wait_for(lambda: all(Path(f"/sys/class/net/{t}").exists() for t in self.taps.values())
                 or self._exited(), timeout=30, what="qemu's tap devices")
        hosts = {"uplink": (self.uplink_ns, UPLINK_IP), "ward": (self.ward_ns, WARD_IP)}
        for side, tap in self.taps.items():
            ns, ip = hosts[side]
            sh(["ip", "netns", "add", ns])
            sh(["ip", "link", "set", tap, "netns", ns])
            for cmd in ("ip link set lo up", f"ip link set {tap} name eth0",
                        f"ip addr add {ip}/24 dev eth0", "ip link set eth0 up"):
                sh(["ip", "netns", "exec", ns, *shlex.split(cmd)])

    def _exited(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"qemu exited ({self.proc.returncode}): "
                                 f"{(self.work / 'qemu.log').read_text()[-2000:]}")
        return False

    def close(self) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=10)
        finally:
            for socket_path in self.ssh_sockets.glob("*"):
                subprocess.run(["ssh", "-o", f"ControlPath={socket_path}", "-O", "exit", "vm"],
                               capture_output=True, timeout=10, check=False)
            shutil.rmtree(self.ssh_sockets, ignore_errors=True)
            for ns in (self.ward_ns, self.uplink_ns):
                sh(["ip", "netns", "del", ns], check=False)
            (self.work / "disk.img").unlink(missing_ok=True)

    def __enter__(self) -> ApplianceVM:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- looking in ------------------------------------------------------------------------

    def console_text(self) -> str:
        return self.console.read_text(errors="replace") if self.console.exists() else ""

    def wait_console(self, pattern: str, timeout: float) -> re.Match[str]:
        """The first console line matching `pattern` (a regex), within `timeout` s."""
        found: list[re.Match[str]] = []

        def seen() -> bool:
            self._exited()
            match = re.search(pattern, self.console_text())
            if match:
                found.append(match)
            return match is not None
        wait_for(seen, timeout=timeout, interval=0.5, what=f"console: {pattern}")
        return found[0]

    def ssh(self, command: str, key: Path, user: str = "wardadmin", check: bool = True,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        # the shared connection is per key: a key that must be refused is never let in
        # through another key's connection
        shared = self.ssh_sockets / f"{user}-{hashlib.sha256(str(key).encode()).hexdigest()[:8]}"
        args = ["ssh", "-i", str(key), "-p", str(self.ssh_port), "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR",
                "-o", "ControlMaster=auto", "-o", f"ControlPath={shared}",
                "-o", "ControlPersist=300", f"{user}@127.0.0.1", command]
        result = subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                                stdin=subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise RuntimeError(f"ssh {command!r} failed ({result.returncode}): "
                               f"{result.stdout}{result.stderr}")
        return result

    def wait_ssh(self, key: Path, timeout: float) -> None:
        def answers() -> bool:
            self._exited()
            try:
                return self.ssh("true", key, check=False, timeout=20).returncode == 0
            except subprocess.TimeoutExpired:
                return False
        wait_for(answers, timeout=timeout, interval=2, what="ssh into the VM")

    def unit(self, key: Path, name: str) -> dict[str, str]:
        """A few `systemctl show` properties of a unit in the VM."""
        out = self.ssh(f"systemctl show {shlex.quote(name)} -p ActiveState -p SubState "
                       "-p MainPID -p NRestarts -p Result -p ConditionResult "
                       "-p ExecMainStartTimestampMonotonic -p WatchdogUSec", key).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def run_in(self, side: str, cmd: str | list[str], check: bool = True,
               timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """A command on the ward or uplink host."""
        ns = self.ward_ns if side == "ward" else self.uplink_ns
        args = shlex.split(cmd) if isinstance(cmd, str) else cmd
        return sh(["ip", "netns", "exec", ns, *args], check=check, timeout=timeout)

    def popen_in(self, side: str, args: list[str]) -> subprocess.Popen[str]:
        ns = self.ward_ns if side == "ward" else self.uplink_ns
        return subprocess.Popen(["ip", "netns", "exec", ns, *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)


def have_tools() -> list[str]:
    """The host tools the VM tests need that are missing."""
    return [t for t in (QEMU[HOST_ARCH][0][0], "mcopy", "mkfs.vfat", "sfdisk", "debootstrap",
                        "ssh") if shutil.which(t) is None]



if __name__ == "__main__":
    # python tests/image/vm.py DIR [ARCH]: build once, then WARDTAP_IMAGE_BUILD=DIR pytest ...
    print(build_image(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None))
