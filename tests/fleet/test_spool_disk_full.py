"""A full disk under the spool, the broker away, then back: the spool drains to 0 by itself
and every alert it took reaches the fleet (a real 12 MiB tmpfs, a real mosquitto)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from brokerkit import Broker, Watcher, quiet_port, wait_for
from conftest import small_tmpfs

from appliance.contract.broker import BrokerSettings, topic
from appliance.outputs.mqtt import MqttOutput, ReporterSettings

SITE, NAME = "s1", "a1"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path, "12m") as mnt:
        yield mnt


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _alert(n: int) -> dict[str, object]:
    return {"type": "new_device", "ts": 1.0 + n, "mac": f"02:00:00:{n >> 16 & 255:02x}:"
            f"{n >> 8 & 255:02x}:{n & 255:02x}", "n": n, "pad": "x" * 400}


def test_full_disk_then_broker_back_drains_to_zero_and_loses_nothing(
        small_disk: Path, tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker", tls=False, plain_port=quiet_port())
    settings = ReporterSettings.from_options({
        "url": broker.url, "site": SITE, "appliance": NAME, "spool": str(small_disk / "s.db"),
        "linger": 0.01, "min_interval": 0.05, "stats_interval": 3600, "reconnect_max": 1,
        "min_free_bytes": 256 << 10, "spool_reserve_bytes": 1 << 20})
    out = MqttOutput(settings, mode="monitor")
    watcher = None
    try:
        assert out.spool.status()["reserve"] is True
        # the disk fills (something else writes to it), then the spool fills the rest
        (small_disk / "filler").write_bytes(b"\0" * max(0, _free(small_disk) - (600 << 10)))
        sent = 0
        while not (out.spool.status()["disk_full"] and out.spool.status()["held_in_memory"]
                   >= 300):
            out.publish([_alert(sent + i) for i in range(50)])
            sent += 50
            assert sent < 9000, f"the disk never filled: {out.spool.status()}"
        status = out.spool.status()
        assert status["dropped"]["alerts"] == 0 and status["depth"] > 0
        state = out._state_payload("online")      # what the fleet is told on (re)connection
        assert json.loads(state)["spool"]["disk_full"] is True

        broker.start()
        watcher = Watcher(BrokerSettings.from_options(broker.url), [topic(SITE, NAME, "events")])
        seen: set[int] = set()

        def drained() -> bool:
            for msg in watcher.poll():
                for event in json.loads(msg.payload).get("events", []):
                    if "n" in event:
                        seen.add(event["n"])
            watcher.seen.clear()
            s = out.spool.status()
            return s["depth"] == 0 and s["held_in_memory"] == 0 and len(seen) == sent

        wait_for(drained, timeout=90, what=f"the spool to drain ({out.spool.status()})")
        assert seen == set(range(sent))
        status = out.spool.status()
        assert status["dropped"] == {"stats": 0, "info": 0, "alerts": 0}
        assert not status["pending_deletes"]
    finally:
        if watcher is not None:
            watcher.close()
        out.close()
        broker.stop(kill=True)
