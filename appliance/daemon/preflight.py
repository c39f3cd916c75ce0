"""`wardtap run --check`: everything the daemon needs, checked before anything starts.

Each check gives one line: `ok`, `warning` (the daemon runs, but something will not work:
a broker or syslog receiver that does not answer now; the daemon keeps events until it
does) or `error` (the daemon would stop at start, or run without a part the configuration
asks for). Nothing is changed: no rule installed, no file written, no socket bound.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from appliance.errors import WardtapError
from appliance.system.config import Config


@dataclass
class Report:
    lines: list[tuple[str, str]] = field(default_factory=list)    # (level, text)

    def add(self, level: str, text: str) -> None:
        self.lines.append((level, text))

    @property
    def errors(self) -> int:
        return sum(1 for level, _ in self.lines if level == "error")

    @property
    def warnings(self) -> int:
        return sum(1 for level, _ in self.lines if level == "warning")

    def render(self) -> str:
        return "\n".join(f"{level:8} {text}" for level, text in self.lines)


def _writable_dir(path: str) -> str | None:
    """None if files can be made in `path`'s directory, else why not."""
    directory = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(directory):
        return f"directory {directory} does not exist"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"cannot write in {directory}"
    if os.path.exists(path) and not os.access(path, os.W_OK):
        return f"{path} is not writable"
    return None


def _step(report: Report, what: str, check: Callable[[], str]) -> None:
    try:
        report.add("ok", f"{what}: {check()}")
    except WardtapError as exc:
        report.add("error", f"{what}: {exc}")
    except OSError as exc:
        report.add("error", f"{what}: {exc.strerror or exc}")


def check(cfg: Config, provision: str | None = None, timeout: float = 3.0) -> Report:
    report = Report()
    report.add("ok", f"configuration {cfg.path}: mode {cfg.mode}, datapath {cfg.datapath}")
    if provision:
        _step(report, f"provisioning {provision}", lambda: _provision(provision))
    if cfg.policy:
        _step(report, "policy", lambda: _policy(cfg))
    for label, path in (("store", cfg.store), ("event log", cfg.event_log),
                        ("control socket", cfg.control_socket)):
        if path:
            problem = _writable_dir(path)
            report.add("error" if problem else "ok",
                       f"{label} {path}: {problem or 'can be written'}")
    if cfg.store and os.path.exists(cfg.store):
        from appliance.outputs.history import open_store

        def store() -> str:
            with open_store(cfg.store or ""):
                return "a wardtap store of this version"
        _step(report, f"store {cfg.store}", store)
    _datapath(cfg, report)
    for kind, options in cfg.outputs:
        _output(kind, options, report, timeout)
    if cfg.broker:
        _broker(cfg, report, timeout)
    for manifest in (cfg.integrity or {}).get("manifests", []):
        report.add("ok" if os.path.isfile(manifest) else "error",
                   f"integrity manifest {manifest}: "
                   + ("present" if os.path.isfile(manifest) else "no such file"))
    return report


def _provision(path: str) -> str:
    from appliance.system.provcheck import check as check_provision

    plan = check_provision(path)
    return f"valid (appliance {getattr(plan, 'site', '?')}/{getattr(plan, 'appliance', '?')})"


def _policy(cfg: Config) -> str:
    from appliance.daemon.policyload import policy_members
    from appliance.policy.model import compile_policy, load_policy

    policy = load_policy(cfg.policy or "", classes=policy_members(cfg.store, cfg.path))
    compile_policy(policy)
    left = f", {len(policy.disabled)} left out for review" if policy.disabled else ""
    return (f"{policy.name} v{policy.version}: {len(policy.groups)} groups, "
            f"{len(policy.rules)} rules{left}")


def _datapath(cfg: Config, report: Report) -> None:
    options = cfg.datapath_options
    if cfg.datapath == "replay":
        for path in options.get("files", []):
            ok = os.path.isfile(path) and os.access(path, os.R_OK)
            report.add("ok" if ok else "error", f"capture {path}: "
                       + ("readable" if ok else "no such file or not readable"))
        return
    if cfg.datapath == "tap":
        iface = options.get("interface", "")
        ok = os.path.isdir(f"/sys/class/net/{iface}")
        report.add("ok" if ok else "error",
                   f"tap interface {iface}: " + ("present" if ok else "no such interface"))
        return
    bridge = options.get("bridge", "br0")
    ok = os.path.isdir(f"/sys/class/net/{bridge}/bridge")
    report.add("ok" if ok else "error",
               f"inline bridge {bridge}: " + ("present" if ok else "no such bridge"))
    for tool in ("iptables", "ip6tables"):
        found = shutil.which(tool)
        report.add("ok" if found else "error",
                   f"{tool}: " + (found or "not installed (apt install iptables)"))
    try:
        import ctypes.util

        lib = ctypes.util.find_library("netfilter_queue")
        report.add("ok" if lib else "error", "libnetfilter_queue: " + (
            lib or "not installed (apt install libnetfilter-queue1)"))
    except OSError as exc:
        report.add("error", f"libnetfilter_queue: {exc}")


def _reachable(host: str, port: int, timeout: float) -> str | None:
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        return str(exc.strerror or exc) if not isinstance(exc, TimeoutError) else \
            f"no answer within {timeout:g} s"
    return None


def _output(kind: str, options: dict[str, object], report: Report, timeout: float) -> None:
    if kind == "eve":
        path = str(options["path"])
        problem = _writable_dir(path)
        report.add("error" if problem else "ok",
                   f"EVE file {path}: {problem or 'can be written'}")
        return
    from appliance.outputs.siem import SyslogFormatter
    from appliance.outputs.syslog import parse_syslog_url

    transport, host, port = parse_syslog_url(str(options["url"]))
    try:
        SyslogFormatter(str(options.get("format", "rfc5424")),
                        str(options.get("facility", "local0")))
    except ValueError as exc:
        report.add("error", f"syslog {options['url']}: {exc}")
        return
    if transport == "udp":
        report.add("ok", f"syslog {options['url']}: UDP (cannot be checked without sending)")
        return
    problem = _reachable(host, port, timeout)
    report.add("warning" if problem else "ok", f"syslog {options['url']}: "
               + (f"not reachable now ({problem}); events wait in a bounded queue"
                  if problem else "reachable"))


def _broker(cfg: Config, report: Report, timeout: float) -> None:
    from appliance.contract.broker import probe
    from appliance.outputs.settings import ReporterSettings

    assert cfg.broker is not None
    try:
        settings = ReporterSettings.from_options(cfg.broker)
    except WardtapError as exc:
        report.add("error", f"broker: {exc}")
        return
    report.add("ok", f"broker settings: {settings.broker.url} as "
               f"{settings.site}/{settings.appliance}")
    try:
        probe(settings.broker, timeout)
        report.add("ok", f"broker {settings.broker.url}: reachable"
                   + (", TLS accepted" if settings.broker.tls else ""))
    except WardtapError as exc:
        report.add("warning", f"{exc}; events wait in the spool until it answers")
