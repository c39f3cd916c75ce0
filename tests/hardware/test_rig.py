"""On a Pi with the LEDs, button and relay board wired (WARDTAP_PI_RIG=1): real pins.

The LEDs cannot be read back, so the panel is cycled through its patterns for a person to
watch; the relay board's watchdog can be checked: sense must follow the heartbeat.
"""

from __future__ import annotations

import time

import pytest

from appliance.panel.button import BypassRelay, Heartbeat
from appliance.panel.leds import ApplianceState, LedPanel
from appliance.panel.pins import choose_backend

from .conftest import ON_RIG
from .helpers import wait_for

pytestmark = pytest.mark.skipif(not ON_RIG, reason="set WARDTAP_PI_RIG=1 on a wired Pi")


@pytest.fixture
def real_factory():
    backend = choose_backend()
    assert backend.name != "mock", backend.simulated_because
    yield backend.factory
    backend.factory.close()


def test_panel_cycles_on_real_pins(real_factory, pinmap):
    with LedPanel(pinmap, pin_factory=real_factory) as panel:
        for state in (ApplianceState(mode="enforce", datapath_running=True,
                                     broker_connected=True),
                      ApplianceState(mode="learn", datapath_running=True),
                      ApplianceState(mode="bypass", healthy=False)):
            panel.set_state(state)
            time.sleep(1.5)          # for the person watching, not for correctness
        panel.identify(seconds=1.5)
        assert wait_for(lambda: not panel.state.identify, timeout=3)


def test_watchdog_holds_only_while_the_heartbeat_runs(real_factory, pinmap):
    timeout = pinmap.relay.watchdog_timeout_s
    with BypassRelay(pinmap=pinmap, pin_factory=real_factory) as relay, \
            Heartbeat(pinmap=pinmap, pin_factory=real_factory) as hb:
        assert not relay.engaged                           # not held before we ask
        relay.hold()
        fed = [True]

        def feed() -> bool:
            if fed[0]:
                hb.feed()
            return relay.engaged

        assert wait_for(feed, timeout=timeout * 2)        # held while fed
        fed[0] = False                                     # the datapath stalls
        assert wait_for(lambda: not relay.engaged, timeout=timeout * 2 + hb.stale_after)
        relay.release()
