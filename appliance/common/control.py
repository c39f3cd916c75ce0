"""The daemon's local control socket: one JSON request line, one JSON response line.

Requests are handed to the daemon's main loop and answered between batches, so they never
race the classifier. The queue they wait in (`RequestQueue`) also wakes the loop: its
eventfd is polled by the packet source with its packets, so an idle source hands the loop an
empty batch at once instead of at the end of its idle poll (up to a second inline), and a
request is answered within a batch's time. A main loop that does not answer within the
timeout gets
{"ok": false, "error": "busy"}: a hung datapath is visible from the console. A reload or a
proposal (policy work on a worker thread) gets SLOW_ANSWER_TIMEOUT. The request is parsed
within bounds (appliance.common.bounded), and its `source` is always "control".
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import socket
import threading
from typing import Any

from appliance.errors import WardtapError

DEFAULT_CONTROL = "/run/wardtap/control.sock"   # the daemon's socket unless configured
MAX_REQUEST = 64 * 1024
MAX_REQUEST_DEPTH = 8
ANSWER_TIMEOUT = 2.0
SLOW_ANSWER_TIMEOUT = 60.0
SLOW_COMMANDS = frozenset({"reload", "propose"})


class Request:
    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body
        self._done = threading.Event()
        self.response: dict[str, Any] = {"ok": False, "error": "busy"}

    def respond(self, response: dict[str, Any]) -> None:
        self.response = response
        self._done.set()

    def wait(self, timeout: float) -> dict[str, Any]:
        self._done.wait(timeout)
        return self.response


class RequestQueue(queue.Queue[Request]):
    """The main loop's requests (control socket, front-panel button, broker commands). Every
    put wakes the loop: `wakeup_fd` (an eventfd) becomes readable until `clear()`."""

    def __init__(self, maxsize: int) -> None:
        super().__init__(maxsize)
        self.wakeup_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    def _put(self, item: Request) -> None:
        super()._put(item)
        self.wake()

    def wake(self) -> None:
        """Make the loop look now (a request, or policy work that finished)."""
        with contextlib.suppress(BlockingIOError, OSError):   # already woken, or closed
            os.eventfd_write(self.wakeup_fd, 1)

    def clear(self) -> None:
        """The loop is about to look at the queue: later puts wake it again."""
        with contextlib.suppress(BlockingIOError, OSError):   # nothing was pending
            os.eventfd_read(self.wakeup_fd)

    def close(self) -> None:
        fd, self.wakeup_fd = self.wakeup_fd, -1     # a late wake() finds no fd, not another's
        if fd >= 0:
            os.close(fd)


class ControlServer(threading.Thread):
    def __init__(self, path: str, requests: queue.Queue[Request],
                 stop: threading.Event) -> None:
        super().__init__(name="wardtap-control", daemon=True)
        self.path = path
        self.requests = requests
        self.stop_event = stop
        directory = os.path.dirname(path)
        try:
            os.makedirs(directory, exist_ok=True)
            # bound and listening under a temporary name, then renamed: a client never finds
            # the socket before it listens (that would be "connection refused")
            fresh = f"{path}~"
            with contextlib.suppress(FileNotFoundError):
                os.unlink(fresh)
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.bind(fresh)
            os.chmod(fresh, 0o660)
            self.sock.listen(8)
            os.replace(fresh, path)
            self.sock.settimeout(0.5)
        except OSError as exc:
            raise WardtapError(f"control socket {path}: {exc.strerror or exc}") from None

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(ANSWER_TIMEOUT)
                try:
                    response = self._answer(self._read(conn))
                    conn.sendall(json.dumps(response).encode() + b"\n")
                except OSError:
                    continue

    @staticmethod
    def _read(conn: socket.socket) -> bytes:
        data = b""
        while b"\n" not in data and len(data) < MAX_REQUEST:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
        return data

    def _answer(self, data: bytes) -> dict[str, Any]:
        from appliance.common.bounded import BoundsError, load_json  # the daemon's side only

        try:
            body = load_json(data.split(b"\n", 1)[0] or b"null", max_bytes=MAX_REQUEST,
                             max_depth=MAX_REQUEST_DEPTH)
        except BoundsError:
            return {"ok": False, "error": "request is not JSON"}
        if not isinstance(body, dict):
            return {"ok": False, "error": "request must be a JSON object"}
        body["source"] = "control"
        request = Request(body)
        try:
            self.requests.put_nowait(request)
        except queue.Full:
            return {"ok": False, "error": "busy"}
        slow = body.get("cmd") in SLOW_COMMANDS
        return request.wait(SLOW_ANSWER_TIMEOUT if slow else ANSWER_TIMEOUT)

    def close(self) -> None:
        self.stop_event.set()
        with contextlib.suppress(OSError):
            self.sock.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout=2)


def request(path: str, body: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    """Send one request to a running daemon; WardtapError when none is listening."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            sock.sendall(json.dumps(body).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except FileNotFoundError:
        raise WardtapError(f"wardtap is not running (no control socket at {path})") from None
    except ConnectionRefusedError:
        raise WardtapError(f"wardtap is not running (nothing listens on {path})") from None
    except TimeoutError:
        raise WardtapError(f"wardtap did not answer on {path} within {timeout} s") from None
    except PermissionError:
        raise WardtapError(f"{path}: permission denied (the control socket is for root and "
                           f"its group)") from None
    except OSError as exc:
        raise WardtapError(f"{path}: {exc.strerror or exc}") from None
    try:
        return dict(json.loads(data))
    except ValueError:
        raise WardtapError(f"unexpected answer from {path}: {data[:200]!r}") from None
