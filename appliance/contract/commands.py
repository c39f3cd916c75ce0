"""Signed fleet commands: the checks an appliance makes before anything is applied.

A request arrives on `wardtap/v1/{site}/{appliance}/cmd` (docs/mqtt.md, "Commands"). It is
checked on the MQTT network thread, in this order, and rejected with a one-word reason:

    oversized        more than `max_bytes`
    malformed        not JSON, not an object, bad envelope or fields
    unknown_command  not one of COMMANDS
    unsigned         changes enforcement but carries no signature
    no_fleet_key     signed, but this appliance has no fleet public key configured
    unknown_key      signed by a key this appliance does not trust
    bad_signature    the signature does not match (forged or altered)
    wrong_appliance  signed for another appliance ("target")
    expired          past its expiry, or an expiry too far ahead / issued in the future
                     (times must be finite numbers, the expiry after the issue time)
    invalid_args     arguments of the wrong type or value
    replayed         sequence number not above the last accepted one (persisted)

Only then is it handed to the daemon's main loop, which applies it between batches through
the same command table as the local control socket (appliance.daemon.commands).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from appliance.common.bounded import BoundsError, load_json
from appliance.contract.signing import BadSignature, Verifier

MAX_COMMAND_BYTES = 256 * 1024
MAX_COMMAND_DEPTH = 8             # the deepest request is 3 levels; room to spare
MAX_VALIDITY_S = 24 * 3600        # a signed command may not be valid for longer than a day
CLOCK_SKEW_S = 300                # tolerated difference between fleet and appliance clocks
# Sequence numbers are at most microseconds since the epoch (docs/mqtt.md); one far beyond
# the clock would block every later command (each must be above the last), so it is refused.
MAX_SEQ_AHEAD_S = 24 * 3600
IDENTIFY_DEFAULT_S = 300.0
IDENTIFY_MAX_S = 600.0

# name -> (changes enforcement, {argument: (types, required)})
ArgSpec = dict[str, tuple[tuple[type, ...], bool]]
COMMANDS: dict[str, tuple[bool, ArgSpec]] = {
    "status": (False, {}),
    "identify": (False, {"seconds": ((int, float), False)}),
    "inventory": (False, {}),
    "propose": (False, {}),          # the policy learned so far, and the running one (text)
    "mode": (True, {"mode": ((str,), True)}),
    "bypass": (True, {"on": ((bool,), True), "mode": ((str,), False)}),
    "policy": (True, {"policy": ((str,), True), "allow_rollback": ((bool,), False),
                      "allow_jump": ((bool,), False), "strict": ((bool,), False)}),
    "reload": (True, {"strict": ((bool,), False)}),
}
MODES = ("learn", "monitor", "enforce", "bypass")



class SequenceLog(Protocol):
    """Where accepted sequence numbers persist (appliance.outputs.audit.AuditLog)."""

    def accept_seq(self, seq: int) -> int | None: ...


class Rejected(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class Command:
    name: str
    args: dict[str, Any]
    signed: bool
    seq: int | None = None
    key_id: str | None = None
    issuer: str | None = None
    request_id: str | None = None
    target: str | None = None
    expires: float | None = None
    sha256: str = ""
    audit_id: int | None = None
    received: float = field(default_factory=time.time)

    def body(self) -> dict[str, Any]:
        """The request body the daemon's command table receives (appliance.daemon.commands)."""
        return {**self.args, "cmd": self.name, "source": "mqtt"}


class CommandProcessor:
    """Checks requests for one appliance; never applies anything itself."""

    def __init__(self, site: str, appliance: str, verifier: Verifier | None, audit: SequenceLog,
                 max_bytes: int = MAX_COMMAND_BYTES,
                 clock: Callable[[], float] = time.time) -> None:
        self.target = f"{site}/{appliance}"
        self.verifier = verifier
        self.audit = audit
        self.max_bytes = max_bytes
        self.clock = clock

    def check(self, payload: bytes) -> Command:
        """A verified, accepted command (its sequence recorded); or raise Rejected."""
        if len(payload) > self.max_bytes:
            raise Rejected("oversized", f"{len(payload)} bytes, at most {self.max_bytes}")
        try:
            envelope = load_json(payload, max_bytes=self.max_bytes,
                                 max_depth=MAX_COMMAND_DEPTH)
        except BoundsError as exc:
            raise Rejected("malformed", f"the request is not usable JSON: {exc}") from None
        if not isinstance(envelope, dict):
            raise Rejected("malformed", "the request must be a JSON object")
        signed = "sig" in envelope or "body" in envelope
        key = None
        if signed:
            if self.verifier is None:
                raise Rejected("no_fleet_key", "signed command, but no fleet public key is "
                               "configured here ([broker] fleet_key)")
            try:
                _, body = self.verifier.open(envelope)
            except BadSignature as exc:
                raise Rejected(exc.reason, exc.detail) from None
            key = self.verifier.key_id
        else:
            body = envelope
        name = body.get("cmd")
        if not isinstance(name, str):
            raise Rejected("malformed", "no \"cmd\" string")
        args = body.get("args", {})
        if not isinstance(args, dict):
            raise Rejected("malformed", "\"args\" must be an object")
        if name not in COMMANDS:
            raise Rejected("unknown_command", f"{name!r} (one of: {', '.join(COMMANDS)})")
        enforcing, spec = COMMANDS[name]
        request_id = body.get("id")
        command = Command(name, args, signed, key_id=key,
                          request_id=request_id if isinstance(request_id, str) else None,
                          sha256=hashlib.sha256(payload).hexdigest(), received=self.clock())
        if not signed:
            if enforcing:
                raise Rejected("unsigned", f"{name} changes enforcement and must be signed "
                               "with the fleet key")
        else:
            self._check_signed(body, command)
        _check_args(name, args, spec)
        if signed:
            assert command.seq is not None
            last = self.audit.accept_seq(command.seq)
            if last is not None:
                raise Rejected("replayed", f"sequence {command.seq} is not above the last "
                               f"accepted {last}")
        return command

    def _check_signed(self, body: dict[str, Any], command: Command) -> None:
        if body.get("v") != 1:
            raise Rejected("malformed", f"signed body version {body.get('v')!r} is not 1")
        target, seq = body.get("target"), body.get("seq")
        issued, expires = body.get("issued"), body.get("expires")
        if not isinstance(target, str):
            raise Rejected("malformed", "signed command without a \"target\"")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq <= 0:
            raise Rejected("malformed", "\"seq\" must be a whole number above 0")
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                   for x in (issued, expires)):
            raise Rejected("malformed", "\"issued\" and \"expires\" must be Unix times "
                           "(finite numbers)")
        issuer = body.get("issuer")
        command.seq, command.target = seq, target
        command.issuer = issuer if isinstance(issuer, str) else None
        issued_at, expires_at = float(body["issued"]), float(body["expires"])
        command.expires = expires_at
        if target != self.target:
            raise Rejected("wrong_appliance", f"signed for {target}, this is {self.target}")
        now = self.clock()
        if expires_at < issued_at:
            raise Rejected("expired", "expires before it was issued")
        if now > expires_at:
            raise Rejected("expired", f"expired {now - expires_at:.0f} s ago")
        if issued_at > now + CLOCK_SKEW_S:
            raise Rejected("expired", "issued in the future (check the fleet's clock)")
        if expires_at - issued_at > MAX_VALIDITY_S:
            raise Rejected("expired", f"valid for more than {MAX_VALIDITY_S} s")
        if seq > (now + MAX_SEQ_AHEAD_S) * 1_000_000:
            raise Rejected("malformed", f"sequence {seq} is beyond microseconds since the "
                           "epoch by this appliance's clock (it would block every later "
                           "command)")


def _check_args(name: str, args: dict[str, Any], spec: ArgSpec) -> None:
    for key, value in args.items():
        if key not in spec:
            raise Rejected("invalid_args", f"{name}: unknown argument {key!r}")
        types, _ = spec[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise Rejected("invalid_args", f"{name}: {key} must be "
                           f"{' or '.join(t.__name__ for t in types)}")
    for key, (_, required) in spec.items():
        if required and key not in args:
            raise Rejected("invalid_args", f"{name}: {key} is required")
    if name == "mode" and args["mode"] not in MODES:
        raise Rejected("invalid_args", f"mode must be one of {', '.join(MODES)}")
    if name == "bypass" and "mode" in args and args["mode"] not in MODES[:3]:
        raise Rejected("invalid_args", "leaving bypass needs mode learn, monitor or enforce")
    seconds = args.get("seconds", 1)
    if name == "identify" and not (math.isfinite(seconds) and 0 < seconds <= IDENTIFY_MAX_S):
        raise Rejected("invalid_args", f"identify seconds must be in (0, {IDENTIFY_MAX_S:g}]")


