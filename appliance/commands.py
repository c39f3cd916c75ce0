"""Fleet commands over MQTT: verification, replay protection, audit, and the daemon handlers.

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
    invalid_args     arguments of the wrong type or value
    replayed         sequence number not above the last accepted one (persisted)

Only then is it handed to the daemon's main loop (the loop that owns the classifier), which
applies it between batches through the same `_handle` path as the local control socket.
Every request and its outcome is written to the `audit` table of the store.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from appliance.control import Request
from appliance.errors import PolicyError, StoreError
from appliance.signing import BadSignature, Verifier

log = logging.getLogger("wardtap.commands")

MAX_COMMAND_BYTES = 256 * 1024
MAX_VALIDITY_S = 24 * 3600        # a signed command may not be valid for longer than a day
CLOCK_SKEW_S = 300                # tolerated difference between fleet and appliance clocks
IDENTIFY_MAX_S = 3600.0

# name -> (changes enforcement, {argument: (types, required)})
ArgSpec = dict[str, tuple[tuple[type, ...], bool]]
COMMANDS: dict[str, tuple[bool, ArgSpec]] = {
    "status": (False, {}),
    "identify": (False, {"seconds": ((int, float), False)}),
    "inventory": (False, {}),
    "mode": (True, {"mode": ((str,), True)}),
    "bypass": (True, {"on": ((bool,), True), "mode": ((str,), False)}),
    "policy": (True, {"policy": ((str,), True), "allow_rollback": ((bool,), False)}),
    "reload": (True, {}),
}
MODES = ("learn", "monitor", "enforce", "bypass")


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
        """What the daemon's `_handle` receives."""
        return {**self.args, "cmd": self.name, "source": "mqtt"}


class AuditLog:
    """The `audit`, `meta` (command sequence) and `policy_history` tables of a store file."""

    def __init__(self, path: str) -> None:
        from appliance.store import Store

        Store(path).close()
        self.path = path
        self.lock = threading.Lock()
        try:
            self.conn: sqlite3.Connection | None = sqlite3.connect(
                path, timeout=30, isolation_level=None, check_same_thread=False)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error as exc:
            raise StoreError(f"{path}: cannot open the audit log: {exc}") from None

    def _db(self) -> sqlite3.Connection:
        if self.conn is None:
            raise StoreError(f"{self.path}: the audit log is closed")
        return self.conn

    def last_seq(self) -> int:
        with self.lock:
            row = self._db().execute("SELECT value FROM meta WHERE key = 'command.seq'"
                                     ).fetchone()
        return int(row[0]) if row else 0

    def accept_seq(self, seq: int) -> int | None:
        """Record `seq` if it is above the last accepted one; else return that last one."""
        with self.lock:
            db = self._db()
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute("SELECT value FROM meta WHERE key = 'command.seq'").fetchone()
                last = int(row[0]) if row else 0
                if seq <= last:
                    db.execute("ROLLBACK")
                    return last
                db.execute("INSERT INTO meta (key, value) VALUES ('command.seq', ?) "
                           "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (str(seq),))
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        return None

    def record(self, source: str, command: Command | None, outcome: str,
               reason: str | None = None, detail: str | None = None,
               request_sha256: str = "", name: str | None = None) -> int:
        row = (time.time(), source, command.name if command else name,
               command.request_id if command else None, command.seq if command else None,
               int(command.signed) if command else None, command.key_id if command else None,
               command.issuer if command else None, command.target if command else None,
               outcome, reason, detail, request_sha256 or (command.sha256 if command else ""))
        with self.lock:
            cur = self._db().execute(
                "INSERT INTO audit (ts, source, command, request_id, seq, signed, key_id, "
                "issuer, target, outcome, reason, detail, request_sha256) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
            return int(cur.lastrowid or 0)

    def finish(self, audit_id: int, outcome: str, response: dict[str, Any],
               reason: str | None = None, detail: str | None = None) -> None:
        text = json.dumps(response, separators=(",", ":"), default=str)[:4096]
        with self.lock:
            self._db().execute("UPDATE audit SET outcome = ?, reason = coalesce(?, reason), "
                               "detail = coalesce(?, detail), response = ?, finished = ? "
                               "WHERE id = ?",
                               (outcome, reason, detail, text, time.time(), audit_id))

    def policy_applied(self, source: str, policy: dict[str, Any], text: str) -> None:
        with self.lock:
            self._db().execute(
                "INSERT INTO policy_history (ts, source, name, version, sha256, text) "
                "VALUES (?, ?, ?, ?, ?, ?)", (time.time(), source, policy.get("name"),
                                              policy.get("version"), policy.get("sha256"), text))

    def rows(self) -> list[dict[str, Any]]:
        with self.lock:
            cur = self._db().execute("SELECT * FROM audit ORDER BY id")
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def close(self) -> None:
        with self.lock:
            if self.conn is not None:
                self.conn.close()
                self.conn = None


class CommandProcessor:
    """Checks requests for one appliance; never applies anything itself."""

    def __init__(self, site: str, appliance: str, verifier: Verifier | None, audit: AuditLog,
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
            envelope = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            raise Rejected("malformed", "the request is not JSON") from None
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
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                   for x in (issued, expires)):
            raise Rejected("malformed", "\"issued\" and \"expires\" must be Unix times")
        issuer = body.get("issuer")
        command.seq, command.target = seq, target
        command.issuer = issuer if isinstance(issuer, str) else None
        issued_at, expires_at = float(body["issued"]), float(body["expires"])
        command.expires = expires_at
        if target != self.target:
            raise Rejected("wrong_appliance", f"signed for {target}, this is {self.target}")
        now = self.clock()
        if now > expires_at:
            raise Rejected("expired", f"expired {now - expires_at:.0f} s ago")
        if issued_at > now + CLOCK_SKEW_S:
            raise Rejected("expired", "issued in the future (check the fleet's clock)")
        if expires_at - issued_at > MAX_VALIDITY_S:
            raise Rejected("expired", f"valid for more than {MAX_VALIDITY_S} s")


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
    if name == "identify" and not 0 < args.get("seconds", 1) <= IDENTIFY_MAX_S:
        raise Rejected("invalid_args", f"identify seconds must be in (0, {IDENTIFY_MAX_S:g}]")


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


# -- handlers run by the daemon's main loop (Daemon._handle) ---------------------------------

def daemon_commands(daemon: Any) -> dict[str, Callable[[dict[str, Any]], dict[str, Any]]]:
    """The commands the daemon adds to its control requests (besides status/mode/reload)."""
    return {
        "identify": lambda body: identify(daemon, body),
        "inventory": lambda body: inventory(daemon),
        "bypass": lambda body: bypass(daemon, body),
        "policy": lambda body: push_policy(daemon, body),
    }


def identify(daemon: Any, body: dict[str, Any]) -> dict[str, Any]:
    seconds = float(body.get("seconds") or 600)
    if not 0 < seconds <= IDENTIFY_MAX_S:
        return {"ok": False, "error": f"seconds must be in (0, {IDENTIFY_MAX_S:g}]"}
    hook = getattr(daemon, "on_identify", None)
    if hook is not None:
        hook(seconds)
    log.info("identify for %g s (%s)", seconds, "LEDs" if hook else "no LEDs attached")
    return {"ok": True, "seconds": seconds, "leds": hook is not None}


def inventory(daemon: Any) -> dict[str, Any]:
    from appliance.records import device_dict

    devices = [device_dict(rec) for rec in daemon.classifier.device_list()]
    return {"ok": True, "devices": devices}


def bypass(daemon: Any, body: dict[str, Any]) -> dict[str, Any]:
    if body.get("on"):
        return dict(daemon.set_mode("bypass"))
    if daemon.mode != "bypass":
        return {"ok": True, "mode": daemon.mode, "unchanged": True}
    configured = daemon.config.mode if daemon.config.mode != "bypass" else "monitor"
    target = body.get("mode") or configured
    if target in ("monitor", "enforce") and daemon.policy is None:
        target = "learn"
    return dict(daemon.set_mode(target))


def push_policy(daemon: Any, body: dict[str, Any]) -> dict[str, Any]:
    """Validate a pushed policy fully, refuse silent rollbacks, write it, then reload."""
    from appliance.policy import compile_policy, parse_policy

    text = body.get("policy")
    if not isinstance(text, str):
        return {"ok": False, "error": "policy text missing"}
    path = daemon.config.policy
    if not path:
        return {"ok": False, "error": "no [policy] file is configured on this appliance to "
                "hold a pushed policy"}
    try:
        new = parse_policy(text, path)
        compile_policy(new)
    except PolicyError as exc:
        return {"ok": False, "error": f"invalid policy, nothing changed: {exc}"}
    running = daemon.policy
    rollback = False
    if running is not None:
        if new.digest == running.digest:
            return {"ok": True, "unchanged": True, "policy": daemon._policy_info()}
        if new.version == running.version:
            return {"ok": False, "error": f"version {new.version} is already running with "
                    "different content; raise the version"}
        if new.version < running.version:
            if not body.get("allow_rollback"):
                return {"ok": False, "error": f"refusing to roll back from version "
                        f"{running.version} to {new.version} (sign allow_rollback to do it "
                        "on purpose)"}
            rollback = True
    # A change made through wardtap: the integrity manifest listing the policy follows it.
    monitor = getattr(daemon, "integrity", None)
    try:
        with monitor.updating(path) if monitor is not None else contextlib.nullcontext():
            _write_atomically(path, text.encode("utf-8"))
    except OSError as exc:
        return {"ok": False, "error": f"cannot write {path}: {exc.strerror}; nothing changed"}
    result = dict(daemon.reload())
    result["rolled_back"] = rollback
    return result


def _write_atomically(path: str, data: bytes) -> None:
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
