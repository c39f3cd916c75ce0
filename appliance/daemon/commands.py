"""The commands a running daemon serves: one table, fed by every transport.

The local control socket (`wardtap status|mode|reload|propose`, the front-panel button) and
the fleet's MQTT commands (checked first by appliance.contract.commands) all arrive as a
request body `{"cmd": NAME, ...arguments}` on the daemon's main loop, between batches, and
are answered by `dispatch`. Handlers see the daemon only through `DaemonControl`.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

from appliance.common.control import Request
from appliance.contract.commands import IDENTIFY_MAX_S
from appliance.errors import PolicyError

if TYPE_CHECKING:
    from appliance.policy.model import Policy

log = logging.getLogger("wardtap.commands")

Answer = dict[str, Any]


class DaemonControl(Protocol):
    """What a command may see and do of the daemon (appliance.daemon.service.Daemon)."""

    mode: str
    policy: Policy | None

    @property
    def configured_mode(self) -> str: ...

    @property
    def policy_path(self) -> str | None: ...

    def status(self) -> Answer: ...

    def set_mode(self, mode: str) -> Answer: ...

    def reload(self) -> Answer: ...

    def propose(self, text_only: bool = False) -> Answer: ...

    def request_stop(self) -> None: ...

    def identify(self, seconds: float) -> bool: ...

    def devices(self) -> list[dict[str, Any]]: ...

    def policy_info(self) -> dict[str, Any] | None: ...

    def policy_file_change(self) -> AbstractContextManager[object]: ...


class CallbackRequest(Request):
    """A control request whose answer is also handed to a callback (MQTT responses)."""

    def __init__(self, body: dict[str, Any],
                 callback: Callable[[dict[str, Any]], None]) -> None:
        super().__init__(body)
        self.callback = callback

    def respond(self, response: dict[str, Any]) -> None:
        super().respond(response)
        try:
            self.callback(response)
        except Exception:  # noqa: BLE001  (a failed reply must never stop the main loop)
            log.exception("command reply failed")


def dispatch(control: DaemonControl, body: dict[str, Any]) -> Answer:
    """Run the command `body["cmd"]` names; an unknown one is refused."""
    handler = HANDLERS.get(str(body.get("cmd")))
    if handler is None:
        return {"ok": False, "error": f"unknown command {body.get('cmd')!r}"}
    return handler(control, body)


def _status(control: DaemonControl, body: dict[str, Any]) -> Answer:
    return {"ok": True, **control.status()}


def _mode(control: DaemonControl, body: dict[str, Any]) -> Answer:
    return control.set_mode(str(body.get("mode")))


def _reload(control: DaemonControl, body: dict[str, Any]) -> Answer:
    return control.reload()


def _propose(control: DaemonControl, body: dict[str, Any]) -> Answer:
    return control.propose(text_only=bool(body.get("text")))


def _stop(control: DaemonControl, body: dict[str, Any]) -> Answer:
    control.request_stop()
    return {"ok": True}


def _identify(control: DaemonControl, body: dict[str, Any]) -> Answer:
    seconds = float(body.get("seconds") or 600)
    if not 0 < seconds <= IDENTIFY_MAX_S:
        return {"ok": False, "error": f"seconds must be in (0, {IDENTIFY_MAX_S:g}]"}
    leds = control.identify(seconds)
    log.info("identify for %g s (%s)", seconds, "LEDs" if leds else "no LEDs attached")
    return {"ok": True, "seconds": seconds, "leds": leds}


def _inventory(control: DaemonControl, body: dict[str, Any]) -> Answer:
    return {"ok": True, "devices": control.devices()}


def _bypass(control: DaemonControl, body: dict[str, Any]) -> Answer:
    if body.get("on"):
        return dict(control.set_mode("bypass"))
    if control.mode != "bypass":
        return {"ok": True, "mode": control.mode, "unchanged": True}
    configured = control.configured_mode if control.configured_mode != "bypass" else "monitor"
    target = body.get("mode") or configured
    if target in ("monitor", "enforce") and control.policy is None:
        target = "learn"
    return dict(control.set_mode(target))


def _push_policy(control: DaemonControl, body: dict[str, Any]) -> Answer:
    """Validate a pushed policy fully, refuse silent rollbacks, write it, then reload."""
    from appliance.policy.model import compile_policy, parse_policy

    text = body.get("policy")
    if not isinstance(text, str):
        return {"ok": False, "error": "policy text missing"}
    path = control.policy_path
    if not path:
        return {"ok": False, "error": "no [policy] file is configured on this appliance to "
                "hold a pushed policy"}
    try:
        new = parse_policy(text, path)
        compile_policy(new)
    except PolicyError as exc:
        return {"ok": False, "error": f"invalid policy, nothing changed: {exc}"}
    running = control.policy
    rollback = False
    if running is not None:
        if new.digest == running.digest:
            return {"ok": True, "unchanged": True, "policy": control.policy_info()}
        if new.version == running.version:
            return {"ok": False, "error": f"version {new.version} is already running with "
                    "different content; raise the version"}
        if new.version < running.version:
            if not body.get("allow_rollback"):
                return {"ok": False, "error": f"refusing to roll back from version "
                        f"{running.version} to {new.version} (sign allow_rollback to do it "
                        "on purpose)"}
            rollback = True
    try:
        with control.policy_file_change():
            write_atomically(path, text.encode("utf-8"))
    except OSError as exc:
        return {"ok": False, "error": f"cannot write {path}: {exc.strerror}; nothing changed"}
    result = dict(control.reload())
    result["rolled_back"] = rollback
    return result


HANDLERS: dict[str, Callable[[DaemonControl, dict[str, Any]], Answer]] = {
    "status": _status, "mode": _mode, "reload": _reload, "propose": _propose, "stop": _stop,
    "identify": _identify, "inventory": _inventory, "bypass": _bypass, "policy": _push_policy,
}


def write_atomically(path: str, data: bytes) -> None:
    """Replace `path` with `data` (the old file kept as PATH.previous); fsynced."""
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.exists(path):
        with open(path, "rb") as fh:
            previous = fh.read()
        _replace(os.path.join(directory, os.path.basename(path) + ".previous"), previous)
    _replace(path, data)


def _replace(path: str, data: bytes) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".wardtap-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
