"""The front-panel button (debounce, short and long press from simulated edges), the relay
heartbeat (stops when feeds or health stop, resumes after) and the relay enable/sense lines."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from appliance.panel.button import BypassRelay, Heartbeat, WardButton, bypass_toggle
from appliance.panel.leds import ApplianceState, LedPanel, Pattern

from .conftest import ON_RIG
from .helpers import assert_timing, changes, durations, wait_for

pytestmark = pytest.mark.skipif(ON_RIG, reason="simulated edges need mock pins")

BOUNCE = 0.05
HOLD = 0.4


class Recorder:
    def __init__(self) -> None:
        self.short = 0
        self.long = 0

    def on_short(self) -> None:
        self.short += 1

    def on_long(self) -> None:
        self.long += 1


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


@pytest.fixture
def button(factory, pinmap, rec) -> Iterator[WardButton]:
    b = WardButton(rec.on_short, rec.on_long, pinmap=pinmap, bounce_time=BOUNCE,
                   hold_time=HOLD, pin_factory=factory)
    yield b
    b.close()


def press(button: WardButton) -> None:
    button.pin.drive_low()
    assert wait_for(lambda: button.is_pressed, timeout=1)


def release(button: WardButton) -> None:
    button.pin.drive_high()
    assert wait_for(lambda: not button.is_pressed and button.settled, timeout=1)


def test_button_pin_and_backend_debounce(button, pinmap):
    assert button.pin.pull == "up"                       # pulled up: released reads high
    assert button.pin.state is True
    assert button.pin.bounce == BOUNCE                   # also handed to the backend
    assert button.backend == "mock"
    assert not button.is_pressed
    default = WardButton(pinmap=pinmap, pin=6)           # bounce from the pin map
    try:
        assert default.bounce_time == pinmap.button.bounce_ms / 1000
        assert default.hold_time == 5.0
    finally:
        default.close()


def test_short_press(button, rec):
    press(button)
    release(button)
    assert wait_for(lambda: rec.short == 1, timeout=1)
    assert rec.long == 0
    assert button.short_presses == 1


def test_bounces_faster_than_bounce_time_are_ignored(button, rec):
    pin = button.pin
    # a burst of contact bounce that ends released: no press at all
    for _ in range(10):
        pin.drive_low()
        pin.drive_high()
    assert wait_for(lambda: button.settled, timeout=1)
    assert not button.is_pressed and rec.short == 0
    # a burst that ends pressed: exactly one press
    for _ in range(5):
        pin.drive_low()
        pin.drive_high()
    pin.drive_low()
    assert wait_for(lambda: button.is_pressed, timeout=1)
    # a glitch while held (5 ms open) is not a release
    pin.drive_high()
    pin.drive_low()
    assert wait_for(lambda: button.settled, timeout=1)
    assert button.is_pressed and rec.short == 0
    # the real release, itself bouncing: one short press
    for _ in range(5):
        pin.drive_high()
        pin.drive_low()
    release(button)
    assert wait_for(lambda: rec.short == 1, timeout=1)
    assert not wait_for(lambda: rec.short > 1 or rec.long, timeout=0.2)


def test_long_press_fires_once_while_held_and_is_not_a_short_press(button, rec):
    press(button)
    assert wait_for(lambda: rec.long == 1, timeout=HOLD + 1)   # while still held
    assert button.pin.state is False
    assert not wait_for(lambda: rec.long > 1, timeout=HOLD + 0.2)  # no repeat
    release(button)
    assert not wait_for(lambda: rec.short, timeout=0.2)
    assert (button.short_presses, button.long_presses) == (0, 1)
    press(button)                                              # the next press is fresh
    release(button)
    assert wait_for(lambda: rec.short == 1, timeout=1)


def test_press_released_before_hold_time_is_short(button, rec):
    press(button)
    assert not wait_for(lambda: rec.long, timeout=HOLD / 4)
    release(button)
    assert wait_for(lambda: rec.short == 1, timeout=1) and rec.long == 0


def test_a_failing_callback_does_not_stop_the_button(factory, pinmap):
    calls = []

    def boom() -> None:
        calls.append(1)
        raise RuntimeError("callback bug")

    with WardButton(boom, pinmap=pinmap, bounce_time=BOUNCE, hold_time=HOLD,
                    pin_factory=factory) as b:
        for expected in (1, 2):
            press(b)
            release(b)
            assert wait_for(lambda n=expected: len(calls) == n, timeout=1)


def test_button_close_twice_and_validation(factory, pinmap):
    b = WardButton(pinmap=pinmap, bounce_time=BOUNCE, hold_time=HOLD, pin_factory=factory)
    b.close()
    b.close()
    assert factory.pin(pinmap.button.bcm).function == "input"
    with pytest.raises(ValueError, match="hold_time"):
        WardButton(pinmap=pinmap, bounce_time=0.3, hold_time=0.4, pin_factory=factory)


def test_zero_bounce_time_commits_at_once(factory, pinmap, rec):
    with WardButton(rec.on_short, pinmap=pinmap, bounce_time=0, hold_time=HOLD,
                    pin_factory=factory) as b:
        b.pin.drive_low()
        assert b.is_pressed
        b.pin.drive_high()
        assert rec.short == 1


# ---- heartbeat ----------------------------------------------------------------------------

class Feeder:
    """The datapath: feeds the heartbeat after each 'batch' while running."""

    def __init__(self, hb: Heartbeat) -> None:
        self.hb = hb
        self.running = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop)
        self.thread.start()

    def loop(self) -> None:
        while not self.stop.wait(0.01):
            if self.running.is_set():
                self.hb.feed()

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


def test_heartbeat_defaults_from_the_pin_map(factory, pinmap):
    with Heartbeat(pinmap=pinmap, pin_factory=factory) as hb:
        assert hb.half_period == pytest.approx(0.5 / pinmap.relay.heartbeat_rate_hz)
        assert factory.pin(pinmap.relay.heartbeat).function == "output"
        assert not hb.alive()                 # never fed: never toggles


def test_heartbeat_toggles_only_while_fed_and_healthy(factory, pinmap):
    healthy = threading.Event()
    healthy.set()
    hb = Heartbeat(healthy.is_set, pinmap=pinmap, rate_hz=20.0, stale_after=0.15,
                   pin_factory=factory)
    pin = hb.pin
    feeder = Feeder(hb)
    try:
        hb.start()
        assert not wait_for(lambda: hb.toggles, timeout=0.15)       # not fed yet: silent
        feeder.running.set()
        pin.clear_states()
        assert wait_for(lambda: changes(pin) >= 8, timeout=2)
        assert hb.beating
        # 20 Hz: 25 ms per half period
        assert_timing([lasted for _, lasted in durations(pin, skip=1)[:6]], 0.025, tol=0.01,
                      each=0.05)

        feeder.running.clear()                                     # the datapath stalls
        assert wait_for(lambda: not hb.beating, timeout=1)
        assert pin.state is False                                  # held low
        pin.clear_states()
        assert not wait_for(lambda: changes(pin) > 0, timeout=0.3)  # silence

        feeder.running.set()                                       # it recovers
        assert wait_for(lambda: changes(pin) >= 4 and hb.beating, timeout=1)

        healthy.clear()                                            # a self-check fails
        assert wait_for(lambda: not hb.beating, timeout=1)
        pin.clear_states()
        assert not wait_for(lambda: changes(pin) > 0, timeout=0.3)
        healthy.set()
        assert wait_for(lambda: changes(pin) >= 4, timeout=1)
    finally:
        feeder.close()
        hb.close()
    hb.close()                                                     # twice: fine
    assert factory.pin(pinmap.relay.heartbeat).function == "input"


def test_heartbeat_health_check_that_raises_counts_as_unhealthy(factory, pinmap):
    def broken() -> bool:
        raise OSError("disk gone")

    with Heartbeat(broken, pinmap=pinmap, rate_hz=20.0, pin_factory=factory) as hb:
        hb.feed()
        assert not hb.alive()
        assert not wait_for(lambda: hb.toggles, timeout=0.15)


# ---- relay lines and the long-press bypass toggle -----------------------------------------

def test_bypass_relay_lines(factory, pinmap):
    relay = BypassRelay(pinmap=pinmap, pin_factory=factory)
    enable = factory.pin(pinmap.relay.enable)
    sense = factory.pin(pinmap.relay.sense)
    assert enable.state is False and not relay.holding      # starts released: bypass
    assert sense.pull == "down" and not relay.engaged       # broken wire reads bypass
    relay.hold()
    assert enable.state is True and relay.holding
    sense.drive_high()                                       # the watchdog output rises
    assert relay.engaged
    relay.release()
    assert enable.state is False
    relay.close()
    relay.close()
    assert enable.function == "input"


def test_long_press_toggles_maintenance_bypass_with_the_white_led(factory, pinmap):
    changes_seen: list[bool] = []
    state = ApplianceState(mode="enforce", datapath_running=True, broker_connected=True)
    with LedPanel(pinmap, pin_factory=factory, state=state) as panel, \
            BypassRelay(pinmap=pinmap, pin_factory=factory) as relay, \
            WardButton(panel.acknowledge, bypass_toggle(relay, panel, changes_seen.append),
                       pinmap=pinmap, bounce_time=BOUNCE, hold_time=HOLD,
                       pin_factory=factory) as button:
        relay.hold()
        white = factory.pin(pinmap.led("bypass").bcm)
        green = factory.pin(pinmap.led("health").bcm)
        assert not white.state and green.state
        press(button)
        assert wait_for(lambda: white.state and not green.state, timeout=HOLD + 1)
        assert button.is_pressed                         # confirmed while still held
        assert not relay.holding
        assert wait_for(lambda: changes_seen == [True], timeout=1)   # then audited
        assert panel.display["bypass"] is Pattern.STEADY
        release(button)
        press(button)
        assert wait_for(lambda: not white.state and green.state, timeout=HOLD + 1)
        release(button)
        assert relay.holding
        assert wait_for(lambda: changes_seen == [True, False], timeout=1)
