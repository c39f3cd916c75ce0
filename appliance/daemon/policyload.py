"""Loading a policy for the running daemon: off the main loop, all or nothing, the last good
one kept.

A policy becomes current only after it has been read, validated, linted and compiled: that
work runs on one worker thread (`PolicyWorker`), never on the main loop that owns the
datapath (a 1,800-rule policy takes seconds on a Pi, far beyond the inline stall budget).
The main loop only swaps the compiled tables in, between batches. A pushed policy is written
as the new policy file, atomically, only once it has compiled; every policy that was applied
is also copied to `<policy file>.last-good`, which the daemon falls back to when the policy
file cannot be used at start.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from appliance.errors import PolicyError
from appliance.policy.lint import lint
from appliance.policy.model import (
    MAX_POLICY_BYTES,
    ClassMembers,
    Policy,
    check_usable,
    compile_policy,
    load_policy,
    parse_policy,
)
from fastpath import CompiledPolicy

log = logging.getLogger("wardtap")

LAST_GOOD_SUFFIX = ".last-good"
MAX_VERSION_STEP = 1000       # a pushed version this far above the running one needs allow_jump
MAX_WARNINGS_SHOWN = 20


class Refused(Exception):
    """A policy that is valid but may not replace the running one; `reason` is one word."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class Prepared:
    """A policy ready to swap in: validated, linted and compiled (on the worker)."""

    policy: Policy
    compiled: CompiledPolicy
    warnings: list[str] = field(default_factory=list)
    source: str = ""                 # "file", "last-good", "push"
    rolled_back: bool = False


def prepare(policy: Policy, *, mode: str, generation: int, strict: bool,
            source: str) -> Prepared:
    """Lint and compile a parsed policy for `mode`; PolicyError if it may not be used."""
    check_usable(policy, mode)
    findings = lint(policy)
    warnings = [f.text(policy.path) for f in findings]
    if strict and findings:
        raise PolicyError(policy.path, f"{len(findings)} lint warning(s) and strict was asked "
                          f"for; the first: {warnings[0]}")
    compiled = compile_policy(policy, generation=generation)
    return Prepared(policy, compiled, warnings, source)


def prepare_file(path: str, *, classes: ClassMembers | None, mode: str, generation: int,
                 strict: bool = False, keep_as: str | None = None) -> Prepared:
    """The policy file, ready; with `keep_as` (the policy file's path) it is also copied to
    the last good policy (here, on the worker: the copy is fsynced)."""
    prepared = prepare(load_policy(path, classes), mode=mode, generation=generation,
                       strict=strict, source="file")
    if keep_as is not None:
        keep_last_good(prepared.policy, keep_as)
    return prepared


def prepare_push(text: str, path: str, running: Policy | None, *,
                 classes: ClassMembers | None, mode: str, generation: int,
                 allow_rollback: bool, allow_jump: bool, strict: bool,
                 write: Callable[[bytes], None]) -> Prepared | None:
    """A pushed policy: checked against the running one, compiled, then written as the
    policy file (only then); None when it is the running one. Raises PolicyError (invalid)
    or Refused (not allowed now)."""
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:         # JSON can carry a lone surrogate ("\ud800")
        raise PolicyError(path, "not UTF-8 text (a lone surrogate)") from None
    if len(data) > MAX_POLICY_BYTES:
        raise PolicyError(path, f"more than the {MAX_POLICY_BYTES:,} bytes allowed")
    new = parse_policy(text, path, classes)
    rolled_back = False
    if running is not None:
        if new.digest == running.digest:
            return None
        if new.version == running.version:
            raise Refused("same_version", f"version {new.version} is already running with "
                          "different content; raise the version")
        if new.version < running.version:
            if not allow_rollback:
                raise Refused("rollback", f"refusing to roll back from version "
                              f"{running.version} to {new.version} (sign allow_rollback to do "
                              "it on purpose)")
            rolled_back = True
        elif new.version - running.version > MAX_VERSION_STEP and not allow_jump:
            raise Refused("version_jump", f"version {new.version} is more than "
                          f"{MAX_VERSION_STEP} above the running {running.version} (sign "
                          "allow_jump to do it on purpose: every later push must then be "
                          "above it)")
    prepared = prepare(new, mode=mode, generation=generation, strict=strict, source="push")
    prepared.rolled_back = rolled_back
    try:
        write(data)
    except OSError as exc:
        raise Refused("write_failed", f"cannot write {path}: {exc.strerror or exc}; nothing "
                      "changed") from None
    keep_last_good(new, path)
    return prepared


def load_at_start(path: str, *, classes: ClassMembers | None, mode: str, generation: int
                  ) -> tuple[Prepared | None, dict[str, Any] | None]:
    """The policy a starting daemon runs: the policy file; when that cannot be used, the
    last good copy. Returns (the prepared policy or None, the fault or None)."""
    try:
        prepared = prepare_file(path, classes=classes, mode=mode, generation=generation)
    except PolicyError as exc:
        error = str(exc)
    else:
        warn(prepared)
        keep_last_good(prepared.policy, path)
        return prepared, None
    log.error("the policy cannot be used: %s", error)
    fault: dict[str, Any] = {"error": error, "running": None, "since": time.time(),
                             "bypass": False}
    fallback = last_good_path(path)
    if not os.path.exists(fallback):
        return None, fault
    try:
        prepared = prepare_file(fallback, classes=classes, mode=mode, generation=generation)
    except PolicyError as exc:
        log.error("the last good policy cannot be used either: %s", exc)
        return None, fault
    fault["running"] = "last-good"
    log.error("POLICY FAULT: running the last good policy (%s v%d from %s) until the policy "
              "file is fixed and reloaded", prepared.policy.name, prepared.policy.version,
              fallback)
    return prepared, fault


def warn(prepared: Prepared) -> None:
    """Log a policy's lint warnings (the first MAX_WARNINGS_SHOWN)."""
    for warning in prepared.warnings[:MAX_WARNINGS_SHOWN]:
        log.warning("policy lint: %s", warning)
    if len(prepared.warnings) > MAX_WARNINGS_SHOWN:
        log.warning("policy lint: %d more warnings (`wardtap policy check FILE` lists them)",
                    len(prepared.warnings) - MAX_WARNINGS_SHOWN)


class PolicyWorker:
    """One thread for policy work; one job at a time (a second is refused as busy)."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wardtap-policy")
        self.running: Future[Any] | None = None

    def busy(self) -> bool:
        return self.running is not None and not self.running.done()

    def submit(self, job: Callable[[], Any]) -> Future[Any]:
        self.running = self._pool.submit(job)
        return self.running

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


# -- the files -----------------------------------------------------------------------------------

def last_good_path(policy_path: str) -> str:
    return policy_path + LAST_GOOD_SUFFIX


def keep_last_good(policy: Policy, policy_path: str) -> None:
    """Copy an applied policy's text to `<policy file>.last-good` (when it changed)."""
    path = last_good_path(policy_path)
    data = policy.text.encode("utf-8")
    try:
        with open(path, "rb") as fh:
            if fh.read(len(data) + 1) == data:
                return
    except OSError:
        pass
    try:
        replace_file(path, data)
    except OSError as exc:
        log.error("cannot keep the last good policy in %s: %s", path, exc.strerror or exc)


def write_atomically(path: str, data: bytes) -> None:
    """Replace `path` with `data` (the old file kept as PATH.previous); fsynced."""
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.exists(path):
        with open(path, "rb") as fh:
            previous = fh.read()
        replace_file(os.path.join(directory, os.path.basename(path) + ".previous"), previous)
    replace_file(path, data)


def replace_file(path: str, data: bytes) -> None:
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


def policy_members(store: str | None, config_path: str | None) -> ClassMembers:
    """What a policy's load-time selectors hold: `class`, `role`, `maker` from the store's
    inventory; `mud_controller` from the appliance configuration's [mud.controllers], read
    again from the file at each load, so a changed controller address applies on reload
    without importing the MUD file again. A configuration that no longer reads is a
    PolicyError: the reload is refused and the running policy stays."""
    from appliance.errors import WardtapError
    from appliance.inventory.identify import class_members
    from appliance.system.config import load_config

    inventory = class_members(store) if store else None
    controllers: dict[str, list[str]] | None = None

    def members(kind: str, value: str) -> list[str]:
        nonlocal controllers
        if kind != "mud_controller":
            return inventory(kind, value) if inventory else []
        if controllers is None:
            try:
                controllers = load_config(config_path).mud_controllers if config_path else {}
            except WardtapError as exc:
                raise PolicyError(config_path or "", f"[mud.controllers] not read: {exc}") \
                    from None
        return list(controllers.get(value, []))

    return members
