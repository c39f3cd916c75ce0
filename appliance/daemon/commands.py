"""The commands a running daemon serves: one table, fed by every transport.

The local control socket (`wardtap status|mode|reload|propose`, the front-panel button) and
the fleet's MQTT commands (checked first by appliance.contract.commands) all arrive as a
request body `{"cmd": NAME, ...arguments}` on the daemon's main loop, between batches, and
are answered by `dispatch`. Handlers see the daemon only through `DaemonControl`. A handler
whose work runs on the policy worker returns a `Pending`; the main loop answers it once the
work is done. Whatever happens, the answer is an answer: an unknown command, a bad argument
or a handler that fails is a refusal (`{"ok": false, "reason": WORD, "error": LINE}`), never
an exception.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from appliance.common.control import Request
from appliance.contract.commands import IDENTIFY_DEFAULT_S, IDENTIFY_MAX_S

if TYPE_CHECKING:
    from appliance.policy.model import Policy

log = logging.getLogger("wardtap.commands")

Answer = dict[str, Any]


@dataclass
class Pending:
    """An answer that comes later: the policy worker runs `future`; once it is done the main
    loop calls `finish(future)` for the answer (appliance.daemon.service)."""

    future: Future[Any]
    finish: Callable[[Future[Any]], Answer]


Result = Answer | Pending


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

    def reload(self, strict: bool = False) -> Result: ...

    def push_policy(self, text: str, *, allow_rollback: bool, allow_jump: bool,
                    strict: bool) -> Result: ...

    def propose(self, text_only: bool = False) -> Answer: ...

    def request_stop(self) -> None: ...

    def identify(self, seconds: float) -> Answer: ...

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
        except Exception as exc:  # noqa: BLE001  (a failed reply must never stop the main loop)
            log.error("command reply failed: %s: %s", type(exc).__name__, exc)


def refused(reason: str, error: str, **extra: Any) -> Answer:
    """A refusal: `reason` one word (for the audit log), `error` one line for a person."""
    return {"ok": False, "reason": reason, "error": error, **extra}


def dispatch(control: DaemonControl, body: dict[str, Any]) -> Result:
    """Run the command `body["cmd"]` names. Whatever happens, the answer is an answer: an
    unknown command, bad arguments or a failing handler are refusals, never exceptions."""
    name = body.get("cmd")
    handler = HANDLERS.get(name) if isinstance(name, str) else None
    if handler is None:
        return refused("unknown_command", f"unknown command {str(name)[:64]!r}")
    try:
        return handler(control, body)
    except Exception as exc:  # noqa: BLE001  (every failure is an answered refusal)
        log.error("command %s failed: %s: %s", name, type(exc).__name__, exc)
        log.debug("command %s failed", name, exc_info=True)
        return refused("internal_error", f"{name} failed: {type(exc).__name__}: {exc}")


def finish(pending: Pending) -> Answer:
    """The answer of a Pending whose future is done (on the main loop); never raises."""
    try:
        return pending.finish(pending.future)
    except Exception as exc:  # noqa: BLE001  (every failure is an answered refusal)
        log.error("command failed: %s: %s", type(exc).__name__, exc)
        log.debug("command failed", exc_info=True)
        return refused("internal_error", f"{type(exc).__name__}: {exc}")


def _status(control: DaemonControl, body: dict[str, Any]) -> Answer:
    return {"ok": True, **control.status()}


def _mode(control: DaemonControl, body: dict[str, Any]) -> Answer:
    return control.set_mode(str(body.get("mode"))[:32])


def _flag(body: dict[str, Any], key: str) -> bool:
    return body.get(key) is True


def _reload(control: DaemonControl, body: dict[str, Any]) -> Result:
    return control.reload(strict=_flag(body, "strict"))


def _propose(control: DaemonControl, body: dict[str, Any]) -> Answer:
    return control.propose(text_only=bool(body.get("text")))


def _stop(control: DaemonControl, body: dict[str, Any]) -> Answer:
    control.request_stop()
    return {"ok": True}


def _identify(control: DaemonControl, body: dict[str, Any]) -> Answer:
    value = body.get("seconds", IDENTIFY_DEFAULT_S)
    if value is None:
        value = IDENTIFY_DEFAULT_S
    if (isinstance(value, bool) or not isinstance(value, int | float)
            or not math.isfinite(value) or not 0 < value <= IDENTIFY_MAX_S):
        return refused("invalid_args", f"seconds must be a number in (0, {IDENTIFY_MAX_S:g}]")
    return control.identify(float(value))


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
    return dict(control.set_mode(str(target)[:32]))


def _push_policy(control: DaemonControl, body: dict[str, Any]) -> Result:
    """Validate a pushed policy fully (off the main loop), refuse silent rollbacks and
    version jumps, write it as the policy file only once it compiled, then apply it."""
    text = body.get("policy")
    if not isinstance(text, str):
        return refused("invalid_args", "policy text missing")
    if not control.policy_path:
        return refused("no_policy_file", "no [policy] file is configured on this appliance "
                       "to hold a pushed policy")
    return control.push_policy(text, allow_rollback=_flag(body, "allow_rollback"),
                               allow_jump=_flag(body, "allow_jump"),
                               strict=_flag(body, "strict"))


HANDLERS: dict[str, Callable[[DaemonControl, dict[str, Any]], Result]] = {
    "status": _status, "mode": _mode, "reload": _reload, "propose": _propose, "stop": _stop,
    "identify": _identify, "inventory": _inventory, "bypass": _bypass, "policy": _push_policy,
}
