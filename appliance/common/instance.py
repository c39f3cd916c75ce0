"""One daemon per configuration: an exclusive lock on the configuration file.

Two daemons on one configuration would share one store, one spool, one control socket and
one set of netfilter rules, each undoing the other. `InstanceLock` takes a `flock` on the
configuration file itself (read-only is enough, so a read-only root works too); the kernel
drops it when the process ends however it ends, so a crash never leaves a stale lock.
"""

from __future__ import annotations

import fcntl
import os

from appliance.errors import WardtapError


class InstanceLock:
    """Held from construction until close() (safe twice) or the end of the process."""

    def __init__(self, path: str, what: str = "wardtap") -> None:
        self.path = path
        try:
            self._fd: int | None = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise WardtapError(f"{path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = holder_pid(self._fd)
            os.close(self._fd)
            self._fd = None
            who = f" (pid {holder})" if holder else ""
            raise WardtapError(f"another {what} is already running with {path}{who}; stop "
                               "it first (one daemon per configuration)") from None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> InstanceLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def holder_pid(fd: int) -> int | None:
    """The pid holding a flock on the file open as `fd`, from /proc/locks (Linux)."""
    st = os.fstat(fd)
    want = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as fh:
            for line in fh:
                fields = line.split()
                if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == want:
                    return int(fields[4]) if fields[4].isdigit() else None
    except OSError:
        return None
    return None
