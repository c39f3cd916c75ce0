"""The front panel of a running daemon: status LEDs, the push button, the relay heartbeat.

The daemon calls `refresh()` between batches with what it knows; the panel turns that into
LED patterns (appliance.panel.leds), feeds the relay watchdog only while the datapath is alive,
and turns button presses into requests the daemon's main loop handles (never touching the
classifier from a GPIO thread). Off a Pi everything runs on gpiozero's simulated pins.
"""

from __future__ import annotations

import logging
import queue
import sys
import time
from typing import Any

from appliance.common.control import Request

log = logging.getLogger("wardtap")

HEARTBEAT_STALE = 2.0      # seconds without a batch before the relay watchdog is starved


class FrontPanel:
    """LEDs, button, heartbeat and (inline) bypass relay. A context manager; close() is safe
    to call twice."""

    def __init__(self, requests: queue.Queue[Request], *, inline: bool = False,
                 show: bool = False, pin_factory: Any = None) -> None:
        from appliance.panel.button import BypassRelay, Heartbeat, WardButton
        from appliance.panel.leds import LedPanel

        self.requests = requests
        self.show = show
        self._shown = ""
        self._alive = time.monotonic()
        self._healthy = True
        self._mode = "learn"
        self.leds = LedPanel(pin_factory=pin_factory)
        self.heartbeat = Heartbeat(healthy=self._datapath_healthy,
                                   stale_after=HEARTBEAT_STALE, pin_factory=pin_factory)
        self.button = WardButton(on_short=self.leds.acknowledge, on_long=self._toggle_bypass,
                                 pin_factory=pin_factory)
        self.relay = BypassRelay(pin_factory=pin_factory) if inline else None
        log.info("front panel on %s pins", self.leds.backend)

    def _datapath_healthy(self) -> bool:
        return self._healthy and time.monotonic() - self._alive < HEARTBEAT_STALE

    def _toggle_bypass(self) -> None:
        """Long press: maintenance bypass on or off, through the daemon's request queue."""
        mode = "monitor" if self._mode == "bypass" else "bypass"
        try:
            self.requests.put_nowait(Request({"cmd": "mode", "mode": mode,
                                              "source": "button"}))
        except queue.Full:
            log.error("button: the daemon is busy; long press ignored")

    def feed(self) -> None:
        """The datapath finished a batch (or an idle poll): it is alive."""
        self._alive = time.monotonic()
        self.heartbeat.feed()

    def refresh(self, *, mode: str, healthy: bool, datapath_running: bool,
                broker_configured: bool, broker_connected: bool,
                policy_fault: bool = False) -> None:
        self._mode = mode
        self._healthy = healthy
        bypass = mode == "bypass"
        self.leds.update(mode=mode, healthy=healthy, datapath_running=datapath_running,
                         broker_configured=broker_configured,
                         broker_connected=broker_connected, bypass=bypass,
                         policy_fault=policy_fault)
        if self.relay is not None:
            if bypass or not healthy:
                self.relay.release()
            else:
                self.relay.hold()
        self._print()

    def violation(self) -> None:
        self.leds.note_violation()

    def identify(self, seconds: float) -> None:
        self.leds.identify(seconds)
        self._print()

    def render(self) -> str:
        return self.leds.render()

    def _print(self) -> None:
        """In the foreground, show the (simulated) LEDs whenever their patterns change."""
        if not self.show:
            return
        line = self.render()
        if line != self._shown:
            self._shown = line
            from rich.console import Console

            Console(file=sys.stderr, highlight=False, soft_wrap=True).print(f"LEDs  {line}")

    def close(self) -> None:
        for part in (self.button, self.heartbeat, self.relay, self.leds):
            if part is not None:
                try:
                    part.close()
                except Exception as exc:  # noqa: BLE001  (closing must reach every part)
                    log.error("front panel: closing %s failed: %s", type(part).__name__, exc)

    def __enter__(self) -> FrontPanel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
