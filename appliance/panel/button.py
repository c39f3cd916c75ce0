"""The front-panel button and the bypass relay's control lines.

`WardButton`: a gpiozero `Button` (internal pull-up, the switch shorts the pin to ground)
with `bounce_time` and `hold_time`. A short press (released before `hold_time`) calls
`on_short` (identify off / acknowledge); a long press (held `hold_time`, 5 s by default)
calls `on_long` once, while the button is still down (toggle maintenance bypass; the white
LED changes to confirm, so the technician knows when to let go).

Debouncing does not rest on the backend alone: gpiozero's MockFactory ignores bounce_time,
RPi.GPIO's bouncetime drops the edge that ends a burst (gpiozero issues #550, #697: presses
without releases, `when_held` after the release) and lgpio filters differently. So every raw
edge restarts a quiet timer, and only a level that has been stable for `bounce_time` counts
(read back from the pin, so a dropped edge cannot leave the button "stuck down"); a long
press is honoured only if the debounced state and the pin both still say "pressed".

`Heartbeat`: toggles the watchdog line at a fixed rate only while `healthy()` is true and
the datapath has called `feed()` recently; when either stops, the line stays low, the
hardware watchdog (hardware/bypass.md) times out and the relays drop the ward into bypass.
`BypassRelay`: the enable line (hold the relays / release them now) and the sense input.
gpiozero is imported only when a device is made.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from appliance.panel.pins import PinMap, backend_name, load_pinmap
from appliance.panel.pins import pin_factory as resolve_pin_factory

log = logging.getLogger("wardtap.button")

LONG_PRESS = 5.0          # seconds held for a long press (maintenance bypass toggle)


def _call(callback: Callable[[], object] | None, what: str) -> None:
    """Run a user callback; a failing one is logged, never kills the thread that called."""
    if callback is None:
        return
    try:
        callback()
    except Exception:  # noqa: BLE001
        log.exception("button: %s callback failed", what)


class WardButton:
    """The front-panel push button: short press and long press, debounced."""

    def __init__(self, on_short: Callable[[], object] | None = None,
                 on_long: Callable[[], object] | None = None, *,
                 pinmap: PinMap | None = None, pin: int | None = None,
                 bounce_time: float | None = None, hold_time: float = LONG_PRESS,
                 pin_factory: Any = None, clock: Callable[[], float] = time.monotonic) -> None:
        if pin is None or bounce_time is None:
            pm = pinmap if pinmap is not None else load_pinmap()
            pin = pm.button.bcm if pin is None else pin
            bounce_time = pm.button.bounce_ms / 1000.0 if bounce_time is None else bounce_time
        if bounce_time < 0:
            raise ValueError("bounce_time must be >= 0")
        if hold_time < 2 * bounce_time or hold_time <= 0:
            raise ValueError("hold_time must be > 0 and at least twice bounce_time")
        self.on_short = on_short
        self.on_long = on_long
        self.bounce_time = bounce_time
        self.hold_time = hold_time
        self._clock = clock
        self._cond = threading.Condition()
        self._quiet_until: float | None = None    # a raw edge was seen; settle until then
        self._pressed = False                      # the debounced state
        self._pressed_at = 0.0
        self._long_fired = False
        self._closed = False
        self.short_presses = 0
        self.long_presses = 0
        from gpiozero import Button  # here, not at import: importing must work anywhere

        factory = resolve_pin_factory(pin_factory)
        self.backend = backend_name(factory)
        # bounce_time also goes to the backend (RPi.GPIO bouncetime, lgpio debounce), which
        # cuts the callback load; the settle timer below makes the result the same everywhere
        self._button = Button(pin, pull_up=True, bounce_time=bounce_time or None,
                              hold_time=hold_time, hold_repeat=False, pin_factory=factory)
        self._button.when_pressed = self._edge
        self._button.when_released = self._edge
        self._button.when_held = self._held
        self._thread = threading.Thread(target=self._settle, name="wardtap-button",
                                        daemon=True)
        self._thread.start()

    @property
    def pin(self) -> Any:
        """The gpiozero pin (a MockPin off a Pi: tests drive it with drive_low/drive_high)."""
        return self._button.pin

    @property
    def is_pressed(self) -> bool:
        """The debounced state."""
        with self._cond:
            return self._pressed

    @property
    def settled(self) -> bool:
        """No edge is waiting out its quiet time (the debounced state is current)."""
        with self._cond:
            return self._quiet_until is None

    # -- raw edges in; debounced presses out --

    def _edge(self) -> None:
        with self._cond:
            if self.bounce_time <= 0:
                self._commit(self._button.is_pressed)
                return
            self._quiet_until = self._clock() + self.bounce_time
            self._cond.notify_all()

    def _settle(self) -> None:
        with self._cond:
            while not self._closed:
                if self._quiet_until is None:
                    self._cond.wait()
                    continue
                remaining = self._quiet_until - self._clock()
                if remaining > 0:
                    self._cond.wait(remaining)
                    continue
                self._quiet_until = None
                self._commit(self._button.is_pressed)   # the level now, after the quiet

    def _commit(self, pressed: bool) -> None:
        """A debounced level change (called with the condition held)."""
        if pressed == self._pressed:
            return
        self._pressed = pressed
        if pressed:
            self._pressed_at = self._clock()
            self._long_fired = False
            return
        held_for = self._clock() - self._pressed_at
        if not self._long_fired and held_for < self.hold_time:
            self.short_presses += 1
            callback = self.on_short
            self._cond.release()
            try:
                _call(callback, "short press")
            finally:
                self._cond.acquire()

    def _held(self) -> None:
        """gpiozero's hold timer fired: honour it only if the button is really still down."""
        with self._cond:
            if (self._closed or self._long_fired or not self._pressed
                    or not self._button.is_pressed
                    or self._clock() - self._pressed_at < 0.5 * self.hold_time):
                return
            self._long_fired = True
            self.long_presses += 1
            callback = self.on_long
        _call(callback, "long press")

    # -- life cycle --

    def close(self) -> None:
        """Release the pin; safe to call twice."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._button.close()

    def __enter__(self) -> WardButton:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Heartbeat:
    """Toggles the watchdog line while the appliance is healthy and its datapath is alive.

    The datapath calls `feed()` after each batch (a clock read and a store: cheap). Every
    half period the thread checks `healthy()` and the age of the last feed, and toggles the
    pin only if both are good; otherwise it holds the line low, which the edge-triggered
    hardware watchdog sees as silence and drops the relays after its timeout.
    """

    def __init__(self, healthy: Callable[[], bool] | None = None, *,
                 pinmap: PinMap | None = None, pin: int | None = None,
                 rate_hz: float | None = None, stale_after: float = 0.5,
                 pin_factory: Any = None, clock: Callable[[], float] = time.monotonic) -> None:
        if pin is None or rate_hz is None:
            pm = pinmap if pinmap is not None else load_pinmap()
            pin = pm.relay.heartbeat if pin is None else pin
            rate_hz = pm.relay.heartbeat_rate_hz if rate_hz is None else rate_hz
        if rate_hz <= 0 or stale_after <= 0:
            raise ValueError("rate_hz and stale_after must be > 0")
        self.healthy = healthy or (lambda: True)
        self.half_period = 0.5 / rate_hz
        self.stale_after = stale_after
        self._clock = clock
        self._last_feed: float | None = None
        self._stop = threading.Event()
        self.beating = False
        self.toggles = 0
        self._thread: threading.Thread | None = None
        from gpiozero import DigitalOutputDevice  # here, not at import

        factory = resolve_pin_factory(pin_factory)
        self.backend = backend_name(factory)
        self._out = DigitalOutputDevice(pin, initial_value=False, pin_factory=factory)

    @property
    def pin(self) -> Any:
        return self._out.pin

    def feed(self) -> None:
        """The datapath finished a batch (call after each one)."""
        self._last_feed = self._clock()

    def alive(self) -> bool:
        """Would the heartbeat toggle now? healthy() and a recent feed()."""
        last = self._last_feed
        if last is None or self._clock() - last > self.stale_after:
            return False
        try:
            return bool(self.healthy())
        except Exception:  # noqa: BLE001 - a failing health check is "not healthy"
            log.exception("heartbeat: healthy() failed")
            return False

    def start(self) -> Heartbeat:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="wardtap-heartbeat",
                                            daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.half_period):
            ok = self.alive()
            if ok:
                self._out.toggle()
                self.toggles += 1
            elif self._out.value:
                self._out.off()       # a falling edge: does not retrigger the watchdog
            if ok != self.beating:
                log.warning("heartbeat %s", "resumed" if ok else
                            "stopped: the watchdog will drop the relays into bypass")
                self.beating = ok

    def close(self) -> None:
        """Stop toggling (the watchdog then drops the relays) and release the pin."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._out.close()

    def __enter__(self) -> Heartbeat:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class BypassRelay:
    """The relay board's enable line and its sense input (hardware/bypass.md).

    `hold()` asks for the relays (inline: ward traffic through the appliance); they pull in
    only while the heartbeat also satisfies the watchdog. `release()` drops them at once
    (maintenance bypass). `engaged` reads the watchdog output: True only when the relays are
    actually held; a broken sense wire reads False (bypass), never "protected".
    """

    def __init__(self, *, pinmap: PinMap | None = None, pin_factory: Any = None) -> None:
        pm = pinmap if pinmap is not None else load_pinmap()
        from gpiozero import DigitalInputDevice, DigitalOutputDevice  # here, not at import

        factory = resolve_pin_factory(pin_factory)
        self.backend = backend_name(factory)
        self._enable = DigitalOutputDevice(pm.relay.enable, initial_value=False,
                                           pin_factory=factory)
        try:
            self._sense = DigitalInputDevice(pm.relay.sense, pull_up=False,
                                             pin_factory=factory)
        except BaseException:
            self._enable.close()
            raise
        self._closed = False

    @property
    def holding(self) -> bool:
        """The appliance asks for the relays (enable high)."""
        return bool(self._enable.value)

    @property
    def engaged(self) -> bool:
        """The relays are held (sense high): traffic goes through the appliance."""
        return bool(self._sense.value)

    @property
    def enable_pin(self) -> Any:
        return self._enable.pin

    @property
    def sense_pin(self) -> Any:
        return self._sense.pin

    def hold(self) -> None:
        self._enable.on()

    def release(self) -> None:
        self._enable.off()

    def close(self) -> None:
        """Release the relays and the pins; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._enable.off()
        self._enable.close()
        self._sense.close()

    def __enter__(self) -> BypassRelay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def bypass_toggle(relay: BypassRelay, panel: Any,
                  on_change: Callable[[bool], object] | None = None) -> Callable[[], None]:
    """The long-press action: toggle maintenance bypass, and show it on the white LED.

    `panel` is an appliance.panel.leds.LedPanel; `on_change(bypass)` lets the daemon write the
    audit log and switch its mode.
    """
    def toggle() -> None:
        if relay.holding:
            relay.release()
            bypass = True
        else:
            relay.hold()
            bypass = False
        panel.update(bypass=bypass)
        log.warning("maintenance bypass %s by the front-panel button", "on" if bypass else "off")
        if on_change is not None:
            on_change(bypass)
    return toggle
