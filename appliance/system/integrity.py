"""Integrity manifests: SHA-256 of wardtap's installed files, configuration and policy.

A manifest is a JSON file written when the image is built (the installed program,
`/opt/wardtap`, the units and scripts) or when the appliance is provisioned (its
configuration, certificates, fleet key and policy):

    {"version": 1, "created": 1735689600.0, "tool": "wardtap 0.1.0",
     "roots": ["/opt/wardtap"],
     "files": {"/opt/wardtap/bin/wardtap": {"sha256": "...", "size": 220, "mode": "0755"},
               "/opt/wardtap/bin/python3": {"link": "/usr/bin/python3.11"}, ...}}

`roots` are directories recorded whole: a file added under one (a `.pth` dropped into
site-packages, say) is reported as well as a changed or missing one. Symbolic links are
recorded as their target text, not followed.

The daemon verifies its manifests at start and every `interval` seconds in a thread
(`IntegrityMonitor`), off the packet path; a mismatch becomes an `integrity_alarm` event
(to every output, so the fleet hears of it over MQTT), an entry in the store's audit log and
the integrity LED. Changes made through wardtap's own commands (a signed policy pushed by
the fleet) update the manifest (`IntegrityMonitor.updating`); anything else is reported.

What it is for: an SD card edited offline, a hand edit nobody reviewed, a package or file
replaced behind wardtap's back. What it is not: protection against an attacker with root
on the running appliance, who can rewrite the manifest too (the root file system is mounted
read-only and the manifests of the image are on it; see image/README.md).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from appliance.common.bounded import load_json
from appliance.errors import WardtapError

log = logging.getLogger("wardtap.integrity")

MANIFEST_VERSION = 1
MAX_MANIFEST_BYTES = 64 << 20
DEFAULT_INTERVAL = 900.0
CHUNK = 1 << 20
MAX_LISTED = 20          # paths named in one event, per kind


class IntegrityError(WardtapError):
    """A manifest that cannot be read or written."""


# -- building and checking -------------------------------------------------------------------

def _entry(path: str) -> dict[str, Any]:
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        return {"link": os.readlink(path)}
    if not stat.S_ISREG(st.st_mode):
        return {"type": "other"}
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return {"sha256": digest.hexdigest(), "size": st.st_size,
            "mode": f"{stat.S_IMODE(st.st_mode):04o}"}


def _walk(root: str) -> Iterator[str]:
    for directory, dirs, files in os.walk(root):
        dirs.sort()
        # a symlinked directory is recorded as a link, never followed
        for name in [d for d in dirs if os.path.islink(os.path.join(directory, d))]:
            dirs.remove(name)
            yield os.path.join(directory, name)
        for name in sorted(files):
            yield os.path.join(directory, name)


def build(paths: Iterable[str], exclude: Iterable[str] = ()) -> dict[str, Any]:
    """A manifest of files and directories (absolute paths as given, not resolved)."""
    import fnmatch

    from appliance import __version__

    patterns = list(exclude)
    roots: list[str] = []
    files: dict[str, dict[str, Any]] = {}
    for path in paths:
        path = os.path.abspath(path)
        if os.path.isdir(path) and not os.path.islink(path):
            roots.append(path)
            members: Iterable[str] = _walk(path)
        elif os.path.lexists(path):
            members = [path]
        else:
            raise IntegrityError(f"{path}: no such file or directory")
        for member in members:
            if any(fnmatch.fnmatch(member, p) for p in patterns):
                continue
            try:
                files[member] = _entry(member)
            except OSError as exc:
                raise IntegrityError(f"{member}: cannot read: {exc.strerror}") from None
    return {"version": MANIFEST_VERSION, "created": time.time(),
            "tool": f"wardtap {__version__}", "roots": roots, "exclude": patterns,
            "files": files}


@dataclass
class Findings:
    manifest: str
    changed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    error: str | None = None          # the manifest itself is missing or unreadable
    checked: int = 0

    @property
    def ok(self) -> bool:
        return not (self.changed or self.missing or self.added or self.error)

    def key(self) -> tuple[Any, ...]:
        return (self.manifest, tuple(self.changed), tuple(self.missing), tuple(self.added),
                self.error)

    def summary(self) -> str:
        if self.error:
            return f"{self.manifest}: {self.error}"
        parts = [f"{len(v)} {k}" for k, v in (("changed", self.changed), ("missing",
                 self.missing), ("added", self.added)) if v]
        first = (self.changed + self.missing + self.added)[:3]
        return f"{self.manifest}: {', '.join(parts)} ({', '.join(first)}" + \
            (", ...)" if len(self.changed + self.missing + self.added) > 3 else ")")

    def as_dict(self) -> dict[str, Any]:
        return {"manifest": self.manifest, "changed": self.changed[:MAX_LISTED],
                "missing": self.missing[:MAX_LISTED], "added": self.added[:MAX_LISTED],
                "counts": {"changed": len(self.changed), "missing": len(self.missing),
                           "added": len(self.added)},
                **({"error": self.error} if self.error else {})}


def load(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            doc = load_json(fh.read(MAX_MANIFEST_BYTES + 1), max_bytes=MAX_MANIFEST_BYTES,
                            max_depth=8)
    except FileNotFoundError:
        raise IntegrityError(f"{path}: no such manifest") from None
    except (OSError, ValueError) as exc:
        raise IntegrityError(f"{path}: not a readable manifest: {exc}") from None
    if not isinstance(doc, dict) or doc.get("version") != MANIFEST_VERSION or \
            not isinstance(doc.get("files"), dict):
        raise IntegrityError(f"{path}: not a wardtap manifest (version {MANIFEST_VERSION})")
    return doc


def verify(path: str, doc: dict[str, Any] | None = None) -> Findings:
    """Compare the files named in manifest `path` (or `doc`) with what is on disk now."""
    import fnmatch

    found = Findings(path)
    if doc is None:
        try:
            doc = load(path)
        except IntegrityError as exc:
            found.error = str(exc).removeprefix(f"{path}: ")
            return found
    files: dict[str, dict[str, Any]] = doc["files"]
    for name, expected in files.items():
        found.checked += 1
        try:
            actual = _entry(name)
        except FileNotFoundError:
            found.missing.append(name)
            continue
        except OSError:
            found.changed.append(name)      # unreadable now: cannot vouch for it
            continue
        if any(actual.get(k) != expected.get(k) for k in ("sha256", "link", "mode", "type")):
            found.changed.append(name)
    patterns = doc.get("exclude") or []
    for root in doc.get("roots") or []:
        if not os.path.isdir(root):
            continue
        for member in _walk(root):
            if member not in files and not any(fnmatch.fnmatch(member, p) for p in patterns):
                found.added.append(member)
    return found


def write(doc: dict[str, Any], path: str, mode: int = 0o644) -> None:
    """Write a manifest atomically (a temporary file renamed over the old one)."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".manifest-", dir=directory)
    except OSError as exc:
        raise IntegrityError(f"{path}: cannot write: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(doc, fh, indent=1, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise IntegrityError(f"{path}: cannot write: {exc.strerror}") from None


def accept(manifest: str, paths: Iterable[str]) -> None:
    """Record the current content of `paths` in `manifest` (a change made by wardtap)."""
    doc = load(manifest)
    for path in paths:
        doc["files"][os.path.abspath(path)] = _entry(os.path.abspath(path))
    doc["updated"] = time.time()
    write(doc, manifest, stat.S_IMODE(os.stat(manifest).st_mode))


# -- the daemon's monitor --------------------------------------------------------------------

class IntegrityMonitor:
    """Verifies manifests in a thread; the daemon's main loop delivers what it finds.

    `pending` is set when a result differs from the last one delivered; the main loop checks
    it between batches (one attribute read) and calls `deliver(daemon)`.
    """

    def __init__(self, manifests: list[str], interval: float = DEFAULT_INTERVAL) -> None:
        self.manifests = manifests
        self.interval = interval
        self.pending = threading.Event()
        self.wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._epoch = 0                      # bumped around every accepted change
        self._latest: list[Findings] | None = None
        self._delivered: tuple[Any, ...] | None = None
        self.alarm = False
        self.checks = 0
        self.last_check: float | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def from_config(cls, options: dict[str, Any]) -> IntegrityMonitor:
        return cls(list(options["manifests"]), float(options.get("interval",
                                                                 DEFAULT_INTERVAL)))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="wardtap-integrity",
                                        daemon=True)
        self._thread.start()

    def check_now(self) -> None:
        self.wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                epoch = self._epoch
            results = [verify(m) for m in self.manifests]
            with self._lock:
                if epoch != self._epoch:     # wardtap changed a file meanwhile: look again
                    continue
                self._latest = results
                self.checks += 1
                self.last_check = time.time()
                if tuple(r.key() for r in results) != self._delivered:
                    self.pending.set()
            self.wake.wait(self.interval)
            self.wake.clear()

    @contextlib.contextmanager
    def updating(self, path: str) -> Iterator[None]:
        """Around a change wardtap makes itself: the manifest that lists `path` is updated
        afterwards, and no check running meanwhile reports the change."""
        with self._lock:
            self._epoch += 1
        try:
            yield
            target = os.path.abspath(path)         # only a change that was made is recorded
            for manifest in self.manifests:
                try:
                    if target in load(manifest)["files"]:
                        accept(manifest, [target])
                        log.info("integrity: %s updated in %s", target, manifest)
                except (IntegrityError, OSError) as exc:
                    log.error("integrity: cannot record %s in %s: %s", target, manifest, exc)
        finally:
            with self._lock:
                self._epoch += 1
            self.wake.set()

    def deliver(self, daemon: Any) -> None:
        """Main loop: turn the latest findings into events, an audit entry and the LED."""
        self.pending.clear()
        with self._lock:
            results, self._latest = self._latest, None
        if results is None:
            return
        key = tuple(r.key() for r in results)
        if key == self._delivered:
            return
        self._delivered = key
        bad = [r for r in results if not r.ok]
        if bad:
            self.alarm = True
            detail = "; ".join(r.summary() for r in bad)
            log.error("integrity alarm: %s", detail)
            daemon._emit({"type": "integrity_alarm",
                          "manifests": [r.as_dict() for r in bad]})
            _audit(daemon, "alarm", detail)
        elif self.alarm:
            self.alarm = False
            log.warning("integrity restored: every file matches its manifest again")
            daemon._emit({"type": "integrity_restored",
                          "manifests": [r.manifest for r in results]})
            _audit(daemon, "restored", "every file matches its manifest again")
        else:
            log.info("integrity: %d manifests, %d files verified", len(results),
                     sum(r.checked for r in results))
        panel = getattr(daemon, "panel", None)
        if panel is not None:
            panel.leds.update(integrity_alarm=self.alarm)

    def status(self) -> dict[str, Any]:
        return {"alarm": self.alarm, "checks": self.checks, "last_check": self.last_check,
                "manifests": self.manifests, "interval_s": self.interval}

    def close(self) -> None:
        self._stop.set()
        self.wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def _audit(daemon: Any, outcome: str, detail: str) -> None:
    """An entry in the store's audit table (appliance.outputs.audit.AuditLog), if there is one."""
    store = getattr(daemon.config, "store", None)
    if not store:
        return
    from appliance.outputs.audit import AuditLog

    try:
        audit = AuditLog(store)
        try:
            audit.record("integrity", None, outcome, reason="integrity_" + outcome,
                         detail=detail[:4000], name="integrity")
        finally:
            audit.close()
    except Exception as exc:  # noqa: BLE001  (an audit failure must not stop the daemon)
        log.error("integrity: audit entry not written: %s", exc)


# -- command line: `wardtap integrity write|verify|accept` -----------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="integrity_command", required=True, metavar="ACTION")
    w = sub.add_parser("write", help="record files and directories in a manifest")
    w.add_argument("paths", nargs="*", metavar="PATH", help="files and directories to record")
    w.add_argument("--root", action="append", default=[], metavar="DIR",
                   help="a directory recorded whole (repeatable; same as a PATH)")
    w.add_argument("--exclude", action="append", default=[], metavar="GLOB")
    w.add_argument("-o", "--out", required=True, help="the manifest to write")
    v = sub.add_parser("verify", help="check files against manifests (exit 1 on a mismatch)")
    v.add_argument("manifests", nargs="+", metavar="MANIFEST")
    v.add_argument("--json", action="store_true")
    a = sub.add_parser("accept", help="record the current content of files in a manifest")
    a.add_argument("manifest")
    a.add_argument("paths", nargs="+", metavar="PATH")


def run(args: argparse.Namespace, out: Callable[[str], None] = print) -> int:
    if args.integrity_command == "write":
        paths = [*args.root, *args.paths]
        if not paths:
            raise IntegrityError("nothing to record: give PATHs or --root DIR")
        doc = build(paths, args.exclude)
        write(doc, args.out)
        out(f"{args.out}: {len(doc['files'])} files recorded")
        return 0
    if args.integrity_command == "accept":
        accept(args.manifest, args.paths)
        out(f"{args.manifest}: {len(args.paths)} files recorded")
        return 0
    results = [verify(m) for m in args.manifests]
    if args.json:
        out(json.dumps([{**r.as_dict(), "ok": r.ok, "checked": r.checked} for r in results],
                       indent=2))
    else:
        for r in results:
            out(f"{r.manifest}: ok, {r.checked} files" if r.ok else f"MISMATCH {r.summary()}")
    failed = sum(1 for r in results if not r.ok)
    if failed:
        import sys

        print(f"wardtap: error: {failed} of {len(results)} manifests do not match (see above)",
              file=sys.stderr)
    return 0 if not failed else 1
