"""First-boot provisioning from a file on the boot partition.

A technician writes `wardtap-provision.toml` to the SD card's boot partition (FAT, readable
on any laptop) before the first boot. `wardtap-provision.service` runs

    python -m appliance.system.provision apply /boot/firmware/wardtap-provision.toml

which checks the whole file first and changes nothing unless every part of it is valid:

```toml
[appliance]
site = "st-marys"                  # fleet site id (MQTT topics)
id = "ward4b-01"                   # appliance id; the client certificate's CN must match
mode = "monitor"                   # initial mode: learn | monitor | enforce | bypass
datapath = "inline"                # inline (bridge br0, the default) | tap
# interface = "eth1"               # tap: the mirror port

[broker]
url = "mqtts://broker.hosp.example:8883"     # TLS only
ca = "ca.pem"                      # a file beside this one, or the PEM text itself
cert = "ward4b-01.pem"             # client certificate (CN = appliance id), signed by ca
key = "ward4b-01.key"              # its private key, unencrypted
fleet_key = "fleet.pub"            # Ed25519 public key that signs fleet commands

[policy]                           # optional; monitor and enforce need it
file = "ward4b.policy.toml"

[management]                       # optional; default: DHCP on eth2
interface = "eth2"                 # a NIC outside the bypassed pair (see image/README.md)
# vlan = 20                        # or: a tagged VLAN on that interface
# address = "10.20.0.41/24"        # default "dhcp"
# gateway = "10.20.0.1"
# dns = ["10.20.0.2"]

[ssh]                              # optional: keys for the admin account (no passwords)
user = "wardadmin"
authorized_keys = ["ssh-ed25519 AAAA... it-team@hospital"]
```

On success one new generation is written under the data partition and switched on with a
single atomic rename (`config` -> `config.<generation>`; /etc/wardtap points at it), the
integrity manifest of the configuration is written with it, and the provisioning file (it
holds a private key) is deleted from the boot partition. On any error nothing is written:
the message goes to the console and the journal (one line per problem, naming the file,
line and field), the LEDs show the provisioning fault (see image/README.md), and the
appliance stays in bypass: wardtap.service needs /etc/wardtap/wardtap.toml to start.

`python -m appliance.system.provision check FILE` runs the same checks on a laptop.
"""

from __future__ import annotations

import argparse
import contextlib
import grp
import json
import os
import pwd
import shutil
import sys
import time
from typing import Any

from appliance.errors import WardtapError
from appliance.system.provcheck import Plan, check

DATA_DIR = "/var/lib/wardtap"
INSTALL_MANIFEST = "/usr/share/wardtap/install.manifest.json"
ETC_LINK = "/etc/wardtap"
ERROR_FILE = "/run/wardtap-provision.error"


def _config_text(plan: Plan, generation: str, data: str, etc: str,
                 install_manifest: str | None) -> str:
    state = os.path.join(data, "state", generation)
    manifests = [m for m in (install_manifest, os.path.join(state, "integrity.json")) if m]
    lines = [
        f"# Written by wardtap-provision from {os.path.basename(plan.source)} "
        f"(sha256 {plan.source_sha256[:16]}) on {time.strftime('%Y-%m-%d %H:%M:%S %Z')}.",
        "# Do not edit: changes are reported by the integrity check. Provision again.",
        "[appliance]", f'mode = "{plan.mode}"', f'name = "{plan.appliance}"', "",
        "[datapath]",
        *(f"{k} = {json.dumps(v)}" for k, v in plan.datapath.items()), "",
        "[store]", f'path = "{os.path.join(data, "state", "wardtap.db")}"', "",
        "[control]", 'socket = "/run/wardtap/control.sock"', "",
    ]
    if plan.policy is not None:
        lines += ["[policy]", f'file = "{os.path.join(state, "policy.toml")}"', ""]
    lines += ["[broker]", f"url = {json.dumps(plan.broker_url)}", f'site = "{plan.site}"',
              f'appliance = "{plan.appliance}"', f'ca = "{etc}/tls/ca.pem"',
              f'cert = "{etc}/tls/client.pem"', f'key = "{etc}/tls/client.key"',
              f'fleet_key = "{etc}/fleet.pub"', "",
              "[integrity]", f"manifests = {json.dumps(manifests)}", "interval = 900", ""]
    return "\n".join(lines)


def _ids(user: str | None, group: str | None) -> tuple[int, int]:
    uid = pwd.getpwnam(user).pw_uid if user else -1
    gid = grp.getgrnam(group).gr_gid if group else -1
    return uid, gid


def _write(path: str, data: bytes, mode: int, uid: int = -1, gid: int = -1) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    if uid != -1 or gid != -1:
        os.chown(path, uid, gid)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def apply(plan: Plan, data: str = DATA_DIR, etc: str = ETC_LINK,
          install_manifest: str | None = INSTALL_MANIFEST, user: str | None = "wardtap",
          group: str | None = "wardtap", generation: str | None = None) -> str:
    """Write the plan as a new generation and switch to it atomically; return the
    generation. A failure before the switch removes what it wrote and leaves the previous
    configuration (or none) in force."""
    from appliance.system import integrity
    from appliance.system.config import load_config

    if not os.path.isdir(data):
        raise WardtapError(f"{data}: the data partition is not mounted")
    generation = generation or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    uid, gid = _ids(user, group)
    config_dir = os.path.join(data, f"config.{generation}")
    state_dir = os.path.join(data, "state", generation)
    link = os.path.join(data, "config")
    written: list[str] = []
    try:
        for directory, owner in ((config_dir, (0, gid)), (state_dir, (uid, gid))):
            if os.path.lexists(directory):
                raise WardtapError(f"{directory} exists already: provisioned twice within a "
                                   "second?")
            os.makedirs(directory, mode=0o750)
            written.append(directory)
            if owner != (0, -1) and (uid != -1 or gid != -1):
                os.chown(directory, owner[0] if owner[0] != -1 else -1, owner[1])
        for name, content in sorted(plan.files.items()):
            # group-readable: the wardtap service reads its key; sshd reads the keys as the
            # admin (in the wardtap group). Nothing here is writable by the service.
            _write(os.path.join(config_dir, name), content, 0o640, 0 if gid != -1 else -1, gid)
        for sub in {os.path.dirname(n) for n in plan.files if "/" in n}:
            os.chmod(os.path.join(config_dir, sub), 0o750)
            if gid != -1:
                os.chown(os.path.join(config_dir, sub), 0, gid)
        text = _config_text(plan, generation, data, etc, install_manifest)
        _write(os.path.join(config_dir, "wardtap.toml"), text.encode(), 0o640,
               0 if gid != -1 else -1, gid)
        load_config(os.path.join(config_dir, "wardtap.toml"))    # what we wrote must load
        _write(os.path.join(config_dir, "provision.json"), json.dumps({
            "site": plan.site, "appliance": plan.appliance, "generation": generation,
            "source_sha256": plan.source_sha256, "provisioned": time.time(),
            "warnings": plan.warnings}, indent=1).encode(), 0o644)
        if plan.policy is not None:
            # the service's own directory: a policy pushed by the fleet replaces this file
            _write(os.path.join(state_dir, "policy.toml"), plan.policy, 0o640, uid, gid)
        # The manifest names files as the daemon sees them: through /etc/wardtap.
        doc = integrity.build([os.path.join(config_dir, n) for n in
                               [*plan.files, "wardtap.toml"]] +
                              ([os.path.join(state_dir, "policy.toml")] if plan.policy else []))
        doc["files"] = {(os.path.join(etc, os.path.relpath(p, config_dir))
                         if p.startswith(config_dir + os.sep) else p): v
                        for p, v in doc["files"].items()}
        doc["generation"] = generation
        manifest = os.path.join(state_dir, "integrity.json")
        integrity.write(doc, manifest, 0o640)
        if uid != -1 or gid != -1:
            os.chown(manifest, uid, gid)
        for directory in (config_dir, state_dir, os.path.dirname(state_dir)):
            _fsync_dir(directory)
        # the switch: one rename of a symbolic link
        tmp_link = os.path.join(data, f".config.{generation}.link")
        os.symlink(os.path.basename(config_dir), tmp_link)
        written.append(tmp_link)
        os.replace(tmp_link, link)
        written.clear()
        _fsync_dir(data)
    except BaseException:
        for path in reversed(written):
            with contextlib.suppress(OSError):
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                else:
                    os.unlink(path)
        raise
    _prune(data, generation)
    return generation


def _prune(data: str, keep: str, generations: int = 2) -> None:
    """Keep the newest `generations` configurations (the previous one for reference)."""
    names = sorted(n for n in os.listdir(data) if n.startswith("config.") and
                   os.path.isdir(os.path.join(data, n)))
    for name in names[:-generations]:
        gen = name.removeprefix("config.")
        if gen == keep:
            continue
        shutil.rmtree(os.path.join(data, name), ignore_errors=True)
        shutil.rmtree(os.path.join(data, "state", gen), ignore_errors=True)


# -- the fault display -----------------------------------------------------------------------

def show_fault(message: str, console: str | None = "/dev/console",
               issue_dir: str | None = "/run/issue.d") -> None:
    """Tell the person at the appliance: console, login prompt, journal."""
    text = ("\nwardtap: PROVISIONING FAILED: the appliance stays in bypass (the ward link is "
            "not inspected).\n" + "".join(f"  {line}\n" for line in message.splitlines()) +
            "Fix wardtap-provision.toml on the boot partition and restart.\n\n")
    print(text, file=sys.stderr, flush=True)
    for target, content in ((console, text), (issue_dir and os.path.join(
            issue_dir, "50-wardtap-provision.issue"), text.replace("\\", "\\\\"))):
        if not target:
            continue
        with contextlib.suppress(OSError):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "w") as fh:
                fh.write(content)


def blink_fault(stop: Any = None, pin_factory: Any = None) -> None:
    """The provisioning-fault LED pattern until stopped: health off, violation red double
    flash, bypass white fast blink (bypass after a fault)."""
    import threading

    from appliance.panel.leds import LedPanel

    stop = stop or threading.Event()
    with contextlib.closing(LedPanel(pin_factory=pin_factory)) as leds:
        leds.update(mode="bypass", bypass=True, healthy=False, integrity_alarm=True,
                    datapath_running=False, broker_configured=False)
        while not stop.wait(1.0):
            pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m appliance.system.provision",
                                     description="wardtap first-boot provisioning")
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="validate a provisioning file, change nothing")
    c.add_argument("file")
    a = sub.add_parser("apply", help="validate, then write the configuration atomically")
    a.add_argument("file")
    a.add_argument("--data", default=DATA_DIR)
    a.add_argument("--etc", default=ETC_LINK)
    a.add_argument("--install-manifest", default=INSTALL_MANIFEST)
    a.add_argument("--user", default="wardtap")
    a.add_argument("--group", default="wardtap")
    a.add_argument("--keep-source", action="store_true",
                   help="do not delete the file (it holds the private key) after applying")
    a.add_argument("--error-file", default=ERROR_FILE)
    a.add_argument("--console", default="/dev/console", help="'' for none")
    a.add_argument("--issue-dir", default="/run/issue.d",
                   help="where the login prompt's messages go ('' for none)")
    f = sub.add_parser("fault", help="show the provisioning fault on the LEDs until stopped")
    f.add_argument("--error-file", default=ERROR_FILE)
    args = parser.parse_args(argv)
    if args.command == "fault":
        import signal
        import threading

        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        with contextlib.suppress(OSError):
            with open(args.error_file) as fh:
                show_fault(fh.read().strip(), console=None, issue_dir=None)
        blink_fault(stop)
        return 0
    if args.command == "apply" and not os.path.exists(args.file) and \
            os.path.exists(os.path.join(args.etc, "wardtap.toml")):
        print(f"wardtap-provision: already provisioned ({os.path.realpath(args.etc)}); "
              f"no {args.file}")
        return 0
    try:
        plan = check(args.file)
        for warning in plan.warnings:
            print(f"wardtap-provision: warning: {warning}", file=sys.stderr)
        if args.command == "check":
            print(f"{args.file}: ok: {plan.site}/{plan.appliance}, mode {plan.mode}, "
                  f"{plan.datapath['type']}, broker {plan.broker_url}")
            return 0
        manifest = args.install_manifest if os.path.exists(args.install_manifest) else None
        generation = apply(plan, args.data, args.etc, manifest, args.user or None,
                           args.group or None)
    except WardtapError as exc:
        if args.command == "check":
            print(f"wardtap-provision: error: {exc}", file=sys.stderr)
            return exc.exit_code
        with contextlib.suppress(OSError):
            with open(args.error_file, "w") as fh:
                fh.write(str(exc) + "\n")
        show_fault(str(exc), console=args.console or None, issue_dir=args.issue_dir or None)
        return exc.exit_code
    for stale in (args.error_file, os.path.join(args.issue_dir or "/nonexistent",
                                                "50-wardtap-provision.issue")):
        with contextlib.suppress(OSError):
            os.unlink(stale)
    if not args.keep_source:
        try:
            os.unlink(args.file)
        except OSError as exc:
            print(f"wardtap-provision: warning: could not delete {args.file} (it holds the "
                  f"private key): {exc.strerror}", file=sys.stderr)
    print(f"wardtap-provision: provisioned {plan.site}/{plan.appliance} (generation "
          f"{generation}), mode {plan.mode}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
