"""Helpers for the console tests (fixtures re-exported by conftest.py).

The fleet console with real parts: mosquitto, PostgreSQL 15, a collector, `wardtap run`,
`wardtap fleet serve`, and a headless Chromium (Debian's chromium + chromium-driver).

One PostgreSQL, one browser and one fleet (broker, collector, appliance, console) per test
session, shared by the console tests; screenshots go to `console-screens/` in pytest's
temporary directory (or $WARDTAP_ARTIFACTS).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fleet"))

from brokerkit import ROOT, ApplianceProcess, Broker, free_port, running_broker  # noqa: E402
from netns import wait_for  # noqa: E402
from pgkit import Postgres, postgres  # noqa: E402,F401

SITE = "st-marys"
PILOT = "ward-4b"
NEIGHBOUR = "ward-4c"          # the rest of the site in a staged rollout
HOSTILE_SITE = "elsewhere"     # a misbehaving 'appliance', on another site
PASSWORD = {"admin": "admin-pass-0123456789", "viewer": "viewer-pass-0123456789",
            "operator": "operator-pass-0123456789"}
HOSTILE_NAME = "<script>alert('x')</script>"


def wardtap(*args: str, stdin: str | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "appliance.cli", *args], input=stdin,
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)


class ConsoleServer:
    """`wardtap fleet serve` as a real process on a free loopback port."""

    def __init__(self, directory: Path, db: str, broker_url: str | None,
                 key: str | None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = directory / f"console-{self.port}.log"
        args = ["fleet", "serve", "--db", db, "--listen", f"127.0.0.1:{self.port}"]
        if broker_url:
            args += ["--broker", broker_url]
        if key:
            args += ["--key", key]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        env.pop("WARDTAP_BROKER", None)
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "appliance.cli", *args],
                                         cwd=ROOT, env=env, stdout=log,
                                         stderr=subprocess.STDOUT)
        wait_for(self._up, timeout=30, what="the console to listen")

    def _up(self) -> bool:
        import httpx

        if self.proc.poll() is not None:
            raise AssertionError(f"the console exited: {self.log()}")
        try:
            httpx.get(self.url + "/health", timeout=2)
            return True
        except httpx.HTTPError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=15)


def login(url: str, user: str, password: str | None = None) -> Any:
    """An httpx client logged in as `user` (the real log-in form, CSRF included)."""
    import httpx

    client = httpx.Client(base_url=url, follow_redirects=False, timeout=30)
    page = client.get("/login")
    token = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert token, page.text
    r = client.post("/login", data={"csrf": token.group(1), "username": user,
                                     "password": password or PASSWORD[user], "next": "/"},
                    headers={"Origin": url})
    assert r.status_code == 303, r.text
    return client


def csrf_of(page: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', page)
    assert m, page[:2000]
    return m.group(1)


@dataclass
class Fleet:
    directory: Path
    broker: Broker
    db: str
    key: str
    appliance_dir: Path
    appliance: ApplianceProcess
    neighbour: ApplianceProcess
    collector: Any
    console: ConsoleServer
    extra: dict[str, Any] = field(default_factory=dict)

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        from appliance.fleet.db import connect

        db = connect(self.db, migrate=False)
        try:
            return db.query(sql, params)
        finally:
            db.close()


def _appliance_dir(directory: Path, broker_url: str, fleet_pub: str,
                   name: str = PILOT) -> Path:
    from demoward.ward import DEMO_POLICY, write_demo_ward

    directory.mkdir(parents=True, exist_ok=True)
    write_demo_ward(str(directory / "ward.pcap"), packets=3000)
    (directory / "policy.toml").write_text(DEMO_POLICY)
    (directory / "wardtap.toml").write_text(
        '[appliance]\nmode = "learn"\n'
        '[datapath]\ntype = "replay"\nfiles = ["ward.pcap"]\nstay = true\n'
        '[policy]\nfile = "policy.toml"\n[store]\npath = "wardtap.db"\n'
        '[control]\nsocket = "control.sock"\n'
        f'[broker]\nurl = "{broker_url}"\nsite = "{SITE}"\nappliance = "{name}"\n'
        f'fleet_key = "{fleet_pub}"\nreconnect_max = 2\nlinger = 0.05\nmin_interval = 0.2\n'
        'stats_interval = 2\ninventory_interval = 2\n')
    return directory


def _publish_hostile_appliance(broker: Broker) -> None:
    """Another 'appliance' on the broker reporting devices with hostile names."""
    from appliance.contract.broker import BrokerSettings, connect_and_wait, make_client

    settings = BrokerSettings.from_options(broker.url)
    client = make_client(settings, "hostile-appliance")
    connect_and_wait(client, settings)
    now = time.time()
    base = f"wardtap/v1/{HOSTILE_SITE}/ward-9z"
    client.publish(f"{base}/state", json.dumps({
        "v": 1, "status": "online", "ts": now, "mode": "monitor", "version": "0.1.0",
        "policy": {"name": "<b>bold</b>", "version": 1, "sha256": "x"}}), qos=1,
        retain=True).wait_for_publish(5)
    client.publish(f"{base}/inventory", json.dumps({
        "v": 1, "ts": now, "count": 2, "devices": [
            {"mac": "02:00:00:00:00:01", "vendor": HOSTILE_NAME, "class": "infusion pump",
             "names": [HOSTILE_NAME, "pump-' OR 1=1 --"], "ipv4": "10.9.9.9",
             "make": "Acme <i>", "model": "X-1", "firmware": {"version": "1.2"}},
            {"mac": "02:00:00:00:00:02", "names": ["%_\\"], "ipv4": "10.9.9.10",
             "vendor": '=HYPERLINK("http://evil.example")'}]}),
        qos=1, retain=True).wait_for_publish(5)
    client.publish(f"{base}/events", b"{not json", qos=1).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()


@pytest.fixture(scope="session")
def fleet(postgres: Postgres, tmp_path_factory: pytest.TempPathFactory  # noqa: F811
          ) -> Iterator[Fleet]:
    from appliance.contract.broker import BrokerSettings
    from appliance.contract.signing import generate_keypair
    from appliance.fleet.collector import Collector

    directory = tmp_path_factory.mktemp("console")
    db = postgres.create_database()
    key, pub = str(directory / "fleet.key"), str(directory / "fleet.pub")
    generate_keypair(key, pub)
    with running_broker(directory / "broker", tls=False) as broker:
        collector = Collector(db, BrokerSettings.from_options(broker.url), collector_id="c1")
        collector.start()
        wait_for(collector.subscribed.is_set, timeout=15, what="the collector")
        for role, password in PASSWORD.items():
            r = wardtap("fleet", "user", "add", role, "--role", role, "--password-stdin",
                        "--db", db, stdin=password + "\n")
            assert r.returncode == 0, r.stderr
        ap_dir = _appliance_dir(directory / "appliance", broker.url, pub)
        appliance = ApplianceProcess(ap_dir)
        appliance.start()
        neighbour = ApplianceProcess(_appliance_dir(directory / "neighbour", broker.url, pub,
                                                    NEIGHBOUR))
        neighbour.start()
        console = ConsoleServer(directory, db, broker.url, key)
        f = Fleet(directory, broker, db, key, ap_dir, appliance, neighbour, collector, console)
        try:
            wait_for(lambda: f.query("SELECT count(*) FROM appliances WHERE site = ? AND "
                                     "status = 'online'", (SITE,)) == [(2,)], timeout=60,
                     what="both appliances online in the fleet database")
            _publish_hostile_appliance(broker)
            wait_for(lambda: f.query("SELECT count(*) FROM devices WHERE appliance = "
                                     "'ward-9z'")[0][0] == 2, timeout=20,
                     what="the hostile appliance's inventory")
            yield f
        finally:
            console.close()
            appliance.close()
            neighbour.close()
            collector.close()


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = Path(os.environ.get("WARDTAP_ARTIFACTS") or tmp_path_factory.mktemp("console-screens"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """A headless Chromium from Debian, driven by chromedriver (Selenium)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary = "/usr/bin/chromium"
    assert os.path.exists(binary), "chromium is not installed: run scripts/setup.sh"
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    profile = tempfile.mkdtemp(prefix="wardtap-chromium-")
    for arg in ("--headless", "--no-sandbox", "--disable-gpu",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                f"--user-data-dir={profile}", "--window-size=1300,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    driver.set_page_load_timeout(60)
    driver.implicitly_wait(10)          # find_element waits for the next page's elements
    try:
        yield driver
    finally:
        driver.quit()
        import shutil

        shutil.rmtree(profile, ignore_errors=True)
