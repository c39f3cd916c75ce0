"""LED patterns and priorities: the pure rules, then the real gpiozero devices on mock pins,
with blink periods measured from the pins' timestamped states."""

from __future__ import annotations

import threading
import time

import pytest
from rich.text import Text

from appliance.panel.leds import (
    FAST_HALF,
    IDENTIFY_LEDS,
    RULES,
    ApplianceState,
    LedPanel,
    Pattern,
    Timing,
    decide,
    next_change,
    render_markup,
    rules_markdown,
)

from .conftest import ON_RIG, ROOT
from .helpers import absolute_edges, assert_timing, changes, durations, wait_for

pytestmark = pytest.mark.skipif(ON_RIG, reason="timing is read back from mock pins only")

OFF, STEADY, SLOW, FAST, DOUBLE = (Pattern.OFF, Pattern.STEADY, Pattern.SLOW, Pattern.FAST,
                                   Pattern.DOUBLE)
RUNNING = ApplianceState(mode="enforce", datapath_running=True, broker_connected=True)


def patterns(state: ApplianceState, now: float = 1000.0):
    return tuple(p for _, p in decide(state, now).patterns)


# ---- the rules ----------------------------------------------------------------------------

@pytest.mark.parametrize("state,expected", [
    # health learn violation broker bypass
    (RUNNING, (STEADY, OFF, OFF, STEADY, OFF)),
    (ApplianceState(mode="learn", datapath_running=True), (DOUBLE, STEADY, OFF, SLOW, OFF)),
    (ApplianceState(mode="monitor", datapath_running=True, broker_configured=False),
     (DOUBLE, SLOW, OFF, OFF, OFF)),
    (ApplianceState(mode="enforce"), (SLOW, OFF, OFF, SLOW, OFF)),           # starting
    (ApplianceState(mode="enforce", healthy=False, datapath_running=True),
     (OFF, OFF, OFF, SLOW, OFF)),
    # bypass: health off, white steady (planned) or fast (after a fault)
    (ApplianceState(mode="bypass", datapath_running=True), (OFF, OFF, OFF, SLOW, STEADY)),
    (ApplianceState(mode="enforce", bypass=True, datapath_running=True, broker_connected=True),
     (OFF, OFF, OFF, STEADY, STEADY)),
    (ApplianceState(mode="enforce", bypass=True, healthy=False, datapath_running=True),
     (OFF, OFF, OFF, SLOW, FAST)),
    (ApplianceState(mode="learn", bypass=True), (OFF, OFF, OFF, SLOW, FAST)),
    # integrity alarm outranks a violation on the red LED
    (ApplianceState(mode="enforce", datapath_running=True, integrity_alarm=True,
                    last_violation=999.0), (STEADY, OFF, DOUBLE, SLOW, OFF)),
    # policy fault: on the last good policy (green fast), or in bypass without one (white fast)
    (ApplianceState(mode="enforce", datapath_running=True, policy_fault=True),
     (FAST, OFF, OFF, SLOW, OFF)),
    (ApplianceState(mode="bypass", datapath_running=True, policy_fault=True),
     (OFF, OFF, OFF, SLOW, FAST)),
], ids=["enforcing", "learning", "monitoring-standalone", "starting", "unhealthy",
        "mode-bypass", "commanded-bypass", "fault-bypass", "bypass-not-running",
        "integrity-alarm", "policy-fault-last-good", "policy-fault-bypass"])
def test_rules(state, expected):
    assert patterns(state) == expected


def test_violation_fades_and_acknowledge_clears():
    t = Timing(violation_fresh=10, violation_hold=900)
    s = RUNNING.__class__(**{**RUNNING.__dict__, "last_violation": 1000.0})
    assert decide(s, 1000.0, t)["violation"] is FAST
    assert decide(s, 1009.9, t)["violation"] is FAST
    assert decide(s, 1010.0, t)["violation"] is STEADY
    assert decide(s, 1899.9, t)["violation"] is STEADY
    assert decide(s, 1900.0, t)["violation"] is OFF
    assert next_change(s, 1000.0, t) == 1010.0
    assert next_change(s, 1500.0, t) == 1900.0
    assert next_change(s, 1900.0, t) is None
    acked = ApplianceState(**{**s.__dict__, "acknowledged": 1005.0})
    assert decide(acked, 1006.0, t)["violation"] is OFF
    again = ApplianceState(**{**acked.__dict__, "last_violation": 1007.0})
    assert decide(again, 1008.0, t)["violation"] is FAST   # a newer violation lights it again


def test_identify_never_hides_bypass_or_a_violation():
    d = decide(ApplianceState(mode="bypass", identify=True, integrity_alarm=True), 0.0)
    assert d.identify
    assert d.as_dict() == {"health": "identify", "learn": "identify", "violation": "double flash",
                           "broker": "identify", "bypass": "fast blink"}
    d = decide(ApplianceState(mode="enforce", datapath_running=True, identify=True,
                              last_violation=999.0), 1000.0)
    assert (d.as_dict()["violation"], d.as_dict()["bypass"]) == ("fast blink", "off")


def test_every_led_has_a_default_rule_and_bad_modes_are_refused():
    for led, rules in RULES.items():
        assert rules[-1].test(None) is True, led       # the last rule always holds
    with pytest.raises(ValueError, match="mode must be one of"):
        ApplianceState(mode="panic")


def test_docs_table_is_rendered_from_the_rules(pinmap):
    doc = (ROOT / "docs" / "leds.md").read_text(encoding="utf-8")
    assert rules_markdown(pinmap) in doc
    for rules in RULES.values():
        for rule in rules:
            assert rule.meaning in doc


def test_render_markup():
    d = decide(ApplianceState(mode="monitor", datapath_running=True, broker_connected=True,
                              last_violation=999.0), 1000.0)
    markup = render_markup(d, {"health": "green", "learn": "amber", "violation": "red",
                               "broker": "blue", "bypass": "white"})
    assert markup.startswith("[green]◑[/] health (double flash)  [dark_orange]◐[/] learn")
    plain = Text.from_markup(markup).plain
    assert plain == ("◑ health (double flash)  ◐ learn (slow blink)  ◉ violation (fast blink)"
                     "  ● broker  ○ bypass")
    ident = Text.from_markup(render_markup(decide(ApplianceState(identify=True), 0.0))).plain
    assert ident == "identify ◉ health  ◉ learn  ○ violation  ◉ broker  ○ bypass"


# ---- on the pins --------------------------------------------------------------------------

@pytest.fixture
def panel(factory, pinmap):
    p = LedPanel(pinmap, pin_factory=factory, state=RUNNING)
    yield p
    p.close()


def pins(factory, pinmap):
    return {led.name: factory.pin(led.bcm) for led in pinmap.leds}


def assert_periods(pin, on: float, off: float, cycles: int) -> None:
    """The pin toggles with the given on/off times, for `cycles` full cycles."""
    pin.clear_states()
    assert wait_for(lambda: changes(pin) >= 2 * cycles + 2, timeout=2 * cycles * (on + off) + 2)
    seq = durations(pin)[: 2 * cycles]
    assert_timing([lasted for state, lasted in seq if state], on)
    assert_timing([lasted for state, lasted in seq if not state], off)


def test_steady_and_off_on_the_pins(panel, factory, pinmap):
    p = pins(factory, pinmap)
    assert [p[n].state for n in ("health", "learn", "violation", "broker", "bypass")] == \
        [True, False, False, True, False]
    assert panel.backend == "mock"
    assert all(pin.function == "output" for pin in p.values())


def test_slow_blink_is_1hz_and_unrelated_updates_keep_its_phase(panel, factory, pinmap):
    panel.update(broker_connected=False)               # broker: slow blink
    pin = factory.pin(pinmap.led("broker").bcm)
    pin.clear_states()
    stop = threading.Event()

    def churn() -> None:                                # other LEDs change meanwhile
        while not stop.wait(0.1):
            panel.update(healthy=False)
            panel.update(healthy=True)

    t = threading.Thread(target=churn)
    t.start()
    try:
        assert wait_for(lambda: changes(pin) >= 8, timeout=6)
    finally:
        stop.set()
        t.join()
    assert_timing([lasted for _, lasted in durations(pin, skip=1)[:6]], 0.5)


def test_fast_blink_is_4hz(panel, factory, pinmap):
    panel.update(last_violation=time.monotonic())
    assert_periods(factory.pin(pinmap.led("violation").bcm), 0.125, 0.125, cycles=4)


def test_double_flash(panel, factory, pinmap):
    panel.update(mode="learn")
    pin = factory.pin(pinmap.led("health").bcm)
    pin.clear_states()
    assert wait_for(lambda: changes(pin) >= 10, timeout=4)
    seq = durations(pin, skip=1)
    # find the long dark gap, then expect: on 0.1, off 0.1, on 0.1, off 0.7
    start = next(i for i, (state, lasted) in enumerate(seq) if not state and lasted > 0.5) + 1
    cycle = seq[start:start + 4]
    assert [s for s, _ in cycle] == [True, False, True, False]
    # gpiozero's source loop waits 0.1 s per frame, so jitter adds up over the 7-frame gap
    for (_, lasted), expected in zip(cycle, (0.1, 0.1, 0.1, 0.7), strict=True):
        assert abs(lasted - expected) <= max(0.06, 0.15 * expected), seq


@pytest.mark.parametrize("before", [
    {},                                                         # steady and off LEDs
    {"mode": "learn", "broker_connected": False, "last_violation": 0.0},   # blinking ones
], ids=["from-steady", "from-blinking"])
def test_identify_blinks_all_together_then_ends(panel, factory, pinmap, before):
    """health, learn and broker blink together at 4 Hz; violation and bypass keep their state."""
    if "last_violation" in before:
        before = {**before, "last_violation": time.monotonic()}
    panel.update(**before)
    p = pins(factory, pinmap)
    if before:
        # start identify half a fast period out of phase with the LEDs' own blink threads,
        # so that one left running would show up as extra edges
        red = p["violation"]
        red.clear_states()
        assert wait_for(lambda: changes(red) >= 2, timeout=1)
        edge = time.monotonic()
        assert wait_for(lambda: time.monotonic() >= edge + FAST_HALF / 2, timeout=1)
    t0 = time.monotonic()
    for pin in p.values():
        pin.clear_states()
    panel.identify(seconds=2.0)
    ident = {name: p[name] for name in IDENTIFY_LEDS}
    assert wait_for(lambda: all(changes(pin) >= 15 for pin in ident.values()), timeout=4)
    edges = {name: absolute_edges(pin, t0) for name, pin in ident.items()}
    # every edge of health after the first has a twin on the other identify LEDs (same
    # state, same moment: one thread drives them), and they come at 4 Hz
    reference = edges["health"][1:15]
    for name, e in edges.items():
        for t, state in reference:
            assert any(abs(t2 - t) < 0.02 and s2 == state for t2, s2 in e), (name, t, e)
    reference_times = [t for t, _ in reference]
    gaps = [b - a for a, b in zip(reference_times, reference_times[1:], strict=False)]
    assert_timing(gaps, 0.125)
    # and nothing else writes to them meanwhile (an LED's own blink thread left running
    # would add edges): waits are relative, so no gap is ever shorter than 0.125 s
    for name, e in edges.items():
        times = [t for t, _ in e if reference_times[0] <= t <= reference_times[-1]]
        short = [round(b - a, 3) for a, b in zip(times, times[1:], strict=False)
                 if b - a < 0.11]
        assert not short, (name, short)
    # the violation LED went on showing the violation (fast blink), the bypass LED stayed off
    if before:
        assert changes(p["violation"]) >= 8
    else:
        assert changes(p["violation"]) == 0 and not p["violation"].state
    assert not p["bypass"].state and changes(p["bypass"]) == 0
    # after its time, identify ends by itself and the rules are back
    assert wait_for(lambda: not panel.state.identify, timeout=3)
    if not before:
        assert wait_for(lambda: p["health"].state and not p["learn"].state
                        and p["broker"].state and not p["violation"].state
                        and not p["bypass"].state, timeout=1)
    else:
        assert panel.display["health"] is DOUBLE and panel.display["broker"] is SLOW
        broker = p["broker"]
        broker.clear_states()
        assert wait_for(lambda: changes(broker) >= 3, timeout=2)      # blinking again


def test_short_press_acknowledge_ends_identify(panel, factory, pinmap):
    panel.identify(seconds=None)
    assert panel.display.identify
    panel.acknowledge()
    assert not panel.display.identify
    assert wait_for(lambda: factory.pin(pinmap.led("health").bcm).state, timeout=1)


def test_violation_hold_on_the_pins(factory, pinmap):
    timing = Timing(violation_fresh=0.4, violation_hold=1.5)
    with LedPanel(pinmap, pin_factory=factory, state=RUNNING, timing=timing) as panel:
        red = factory.pin(pinmap.led("violation").bcm)
        red.clear_states()
        panel.note_violation()
        assert panel.display["violation"] is FAST
        assert wait_for(lambda: changes(red) >= 3, timeout=1)           # blinking
        assert wait_for(lambda: panel.display["violation"] is STEADY, timeout=1)
        assert wait_for(lambda: red.state, timeout=0.5)
        red.clear_states()
        assert not wait_for(lambda: changes(red) > 0, timeout=0.2)      # steady: no edges
        assert wait_for(lambda: not red.state, timeout=2.5)             # the hold ran out
        assert panel.display["violation"] is OFF
        panel.note_violation()                                          # and acknowledged
        assert wait_for(lambda: panel.display["violation"] is FAST, timeout=0.5)
        panel.acknowledge()
        assert wait_for(lambda: not red.state, timeout=0.5)
        assert panel.display["violation"] is OFF


def test_bypass_priorities_on_the_pins(panel, factory, pinmap):
    p = pins(factory, pinmap)
    panel.update(bypass=True)
    assert wait_for(lambda: not p["health"].state and p["bypass"].state, timeout=1)
    panel.update(healthy=False)                      # a fault: white fast blink
    white = p["bypass"]
    assert_periods(white, 0.125, 0.125, cycles=4)
    assert not p["health"].state


def test_render_follows_the_state(panel):
    assert Text.from_markup(panel.render()).plain == \
        "● health  ○ learn  ○ violation  ● broker  ○ bypass"
    panel.update(bypass=True)
    assert Text.from_markup(panel.render()).plain.endswith("○ health  ○ learn  ○ violation  "
                                                           "● broker  ● bypass")
    assert "mock" in repr(panel)


def test_update_rejects_unknown_fields(panel):
    with pytest.raises(TypeError, match="unknown state field"):
        panel.update(colour="red")


def test_concurrent_updates(panel):
    errors = []

    def hammer(i: int) -> None:
        try:
            for j in range(50):
                panel.update(broker_connected=bool((i + j) % 2), mode=("learn", "enforce")[j % 2])
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert not errors


def test_close_releases_pins_twice_safe_and_context_manager(factory, pinmap):
    with LedPanel(pinmap, pin_factory=factory, state=RUNNING) as panel:
        panel.update(mode="learn")                     # a double flash source thread runs
    assert panel.closed
    panel.close()                                      # twice: no error
    for led in pinmap.leds:
        assert factory.pin(led.bcm).function == "input"
    # the pins are free again: a new panel can take them
    again = LedPanel(pinmap, pin_factory=factory)
    again.close()
    again.close()


def test_default_factory_is_gpiozeros(factory, pinmap):
    """No pin_factory given: the panel uses gpiozero's Device.pin_factory (the fixture's)."""
    with LedPanel(pinmap) as panel:
        assert panel.backend == "mock"
        assert factory.pin(pinmap.led("health").bcm).function == "output"
