"""`wardtap demo`: the demo ward through everything that has landed, on built-in defaults.

It writes a generated ward capture and its allow-list, starts a throw-away mosquitto on
loopback (when mosquitto is installed), replays the ward through the fast path with device
identification (tshark) and fleet reporting, shows the simulated LEDs as they change, prints
the summary and the inventory, and finally the fleet's view of the appliance.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from appliance.errors import WardtapError

SITE, APPLIANCE = "st-marys", "ward-4b"


class LocalBroker:
    """A mosquitto on 127.0.0.1 for the demo only: anonymous, no persistence, stopped after."""

    def __init__(self, directory: str) -> None:
        binary = shutil.which("mosquitto") or next(
            (p for p in ("/usr/sbin/mosquitto", "/usr/bin/mosquitto") if os.path.exists(p)), None)
        if binary is None:
            raise WardtapError("mosquitto is not installed (scripts/setup.sh installs it)")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        conf = os.path.join(directory, "mosquitto-demo.conf")
        with open(conf, "w", encoding="utf-8") as fh:
            fh.write(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
                     "persistence false\n")
        self.log = open(os.path.join(directory, "mosquitto-demo.log"), "w")  # noqa: SIM115
        self.proc = subprocess.Popen([binary, "-c", conf], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.close()
                    raise WardtapError("the demo broker did not start; see "
                                       f"{self.log.name}") from None
                time.sleep(0.05)
        self.url = f"mqtt://127.0.0.1:{self.port}"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.log.close()


def prepare_console(directory: str, capture: str, policy_path: str,
                    fleet_db: str) -> tuple[str, str]:
    """The fleet console's view of the demo: the learned-vs-running policy (what the
    appliance would answer to `propose`) and a one-off admin account; (user, password)."""
    import secrets

    from appliance.fleet import accounts, rollout
    from appliance.fleet.db import connect
    from appliance.policy.writer import render
    from appliance.review.baseline import learn
    from appliance.review.propose import propose

    baseline = learn([capture])
    learned = render(propose(baseline, "learned", [capture]))
    with open(policy_path, encoding="utf-8") as fh:
        running = fh.read()
    with open(os.path.join(directory, "learned-policy.toml"), "w", encoding="utf-8") as fh:
        fh.write(learned)
    db = connect(fleet_db)
    try:
        rollout.store_proposal(db, SITE, APPLIANCE, learned, running,
                               f"{len(baseline.conversations)} conversations (demo capture)")
        password = secrets.token_urlsafe(12)      # made now, shown once: no default password
        db.execute("DELETE FROM users WHERE username = 'demo'")
        accounts.add_user(db, "demo", "admin", password)
    finally:
        db.close()
    return "demo", password


def serve_console(fleet_db: str, broker_url: str | None, port: int, user: str,
                  password: str, keep_running: bool) -> None:
    """Print the console's loopback URL; with keep_running, serve it until Ctrl-C."""
    from appliance.contract.broker import BrokerSettings

    if port == 0:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    if keep_running:
        print(f"\nthe fleet console: {url}  (log in as {user} / {password})")
    else:
        print(f"\nthe fleet console (`wardtap demo --serve` runs it; log in as {user} / "
              f"{password}):")
    print(f"  the appliance:   {url}appliances/{SITE}/{APPLIANCE}")
    print(f"  its violations:  {url}violations?window=all")
    print(f"  policy review:   {url}policies/{SITE}/{APPLIANCE} (learned vs running)")
    if not keep_running:
        print(f"  or: wardtap fleet serve --db {fleet_db}")
        return
    import uvicorn

    from appliance.fleet.web.app import ConsoleConfig
    from appliance.fleet.web.server import create_app

    config = ConsoleConfig(db=fleet_db, broker=BrokerSettings.from_options(broker_url)
                           if broker_url else None)
    print("serving; Ctrl-C stops it", flush=True)
    uvicorn.run(create_app(config), host="127.0.0.1", port=port, log_level="warning",
                access_log=False)


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def run_demo(directory: str, packets: int, as_json: bool, wide: bool = False,
             serve: bool = False, port: int = 0) -> int:
    from appliance.panel.frontpanel import FrontPanel
    from appliance.replay.job import ReplayJob, run_job
    from demoward.ward import write_demo_policy, write_demo_ward

    os.makedirs(directory, exist_ok=True)
    capture = os.path.join(directory, "ward.pcap")
    policy = os.path.join(directory, "ward-policy.toml")
    db = os.path.join(directory, "wardtap.db")
    for old in (db, db + "-wal", db + "-shm"):
        if os.path.exists(old):
            os.unlink(old)             # each demo starts from an empty store
    write_demo_ward(capture, packets=packets)
    write_demo_policy(policy)
    say = (lambda *a: None) if as_json else print

    # SIGTERM ends the demo through its `finally`, so the throw-away broker goes with it
    # (uvicorn, serving the console, hands a SIGTERM it caught back to this handler).
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    broker: LocalBroker | None = None
    try:
        broker = LocalBroker(directory)
    except WardtapError as exc:
        say(f"(no fleet reporting in this demo: {exc})")
    say(f"demo ward: {capture} ({packets:,} packets)\n  policy {policy}\n  store  {db}"
        + (f"\n  broker {broker.url} as {SITE}/{APPLIANCE}" if broker else "") + "\n")

    collector = None
    fleet_db = os.path.join(directory, "fleet.db")
    if broker is not None:
        # The fleet side: a collector subscribed before the appliance reports, so every
        # event is delivered (mosquitto refuses a publish with no subscriber as unmatched).
        from appliance.contract.broker import BrokerSettings
        from appliance.fleet.collector import Collector

        for old in (fleet_db, fleet_db + "-wal", fleet_db + "-shm"):
            if os.path.exists(old):
                os.unlink(old)
        collector = Collector(fleet_db, BrokerSettings.from_options(broker.url))
        collector.start()
    job = ReplayJob([capture], policy=policy, db=db, dissect=True, json=as_json, wide=wide)
    if broker:
        job.broker, job.site, job.appliance = broker.url, SITE, APPLIANCE
    panel = FrontPanel(queue.Queue(), show=not as_json)
    try:
        state: dict[str, Any] = dict(mode="monitor", healthy=True, broker_configured=bool(broker),
                                     broker_connected=bool(broker))
        panel.refresh(datapath_running=True, **state)

        def light(events: list[dict[str, Any]]) -> None:
            if any(e["type"] == "violation" for e in events):
                panel.violation()
                panel.refresh(datapath_running=True, **state)

        code = run_job(job, on_events=light)
        panel.refresh(datapath_running=False, **state)
        if collector is not None and broker is not None:
            collector.close()
            collector = None
            if not as_json:
                print(f"\nthe fleet's view (collected from {broker.url} into {fleet_db}):")
                sys.stdout.flush()
                from appliance.fleet.collector import fleet_rows
                from appliance.fleet.listing import render

                print(render(fleet_rows(fleet_db, time.time()), wide=wide))
        if broker is not None and not as_json:
            user, password = prepare_console(directory, capture, policy, fleet_db)
            serve_console(fleet_db, broker.url, port if serve else (port or 8080), user,
                          password, serve)
        return code
    finally:
        panel.close()
        if collector is not None:
            collector.close()
        if broker is not None:
            broker.close()
