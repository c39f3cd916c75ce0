"""The five status LEDs: appliance state in, one pattern per LED out, driven by gpiozero.

Each LED's meaning is fixed (docs/leds.md has the table, rendered from `RULES` below):
health (green), learn (amber), violation (red), broker (blue), bypass (white). `decide` is a
pure function from an `ApplianceState` to a `Display` (a `Pattern` per LED): each LED has an
ordered rule list, the first rule that holds wins. "Identify" blinks the health, learn and
broker LEDs together so a technician finds the unit in a closet; the violation and bypass LEDs
go on showing their state (an identify request, signed or not, never hides a violation or a
bypass).

`LedPanel` puts a Display on the pins with gpiozero (an `LEDBoard` of `LED`s): steady and off
are `on()`/`off()`, slow and fast blinks are gpiozero's blink threads (`LED.blink`), identify
is one thread of ours toggling its three LEDs in phase, and the double flash is a
gpiozero `source` (a repeating frame sequence). A small timer thread re-decides when a rule
expires by itself (a violation's hold time, the end of identify). gpiozero is imported only
when a panel is made, so importing this module works anywhere; off a Pi the pins are
simulated (appliance.panel.pins) and `render()` shows the same states on a console.
"""

from __future__ import annotations

import enum
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace
from typing import Any

from appliance.panel.glyphs import GLYPHS, RICH_COLOURS  # noqa: F401  (RICH_COLOURS: the console's)
from appliance.panel.pins import LED_NAMES, PinMap, backend_name, load_pinmap
from appliance.panel.pins import pin_factory as resolve_pin_factory

log = logging.getLogger("wardtap.leds")


class Pattern(enum.Enum):
    OFF = "off"
    STEADY = "steady"
    SLOW = "slow blink"        # 1 Hz: 0.5 s on, 0.5 s off
    FAST = "fast blink"        # 4 Hz: 0.125 s on, 0.125 s off
    DOUBLE = "double flash"    # two 0.1 s flashes, then 0.7 s dark; 1 s period


SLOW_HALF = 0.5
FAST_HALF = 0.125
DOUBLE_TICK = 0.1
DOUBLE_FRAMES = (1, 0, 1, 0, 0, 0, 0, 0, 0, 0)
IDENTIFY_HALF = FAST_HALF
IDENTIFY_LEDS = ("health", "learn", "broker")     # never the violation or bypass LED
MODES = ("learn", "monitor", "enforce", "bypass")


@dataclass(frozen=True)
class ApplianceState:
    """What the LEDs show. Times are `time.monotonic()` seconds."""

    mode: str = "learn"               # learn | monitor | enforce | bypass
    healthy: bool = True              # self-checks pass (store writable, policy loaded, ...)
    datapath_running: bool = False    # packets are being read and classified
    broker_configured: bool = True    # a fleet broker is configured at all
    broker_connected: bool = False
    bypass: bool = False              # ward traffic bypasses the classifier (relays released)
    identify: bool = False
    integrity_alarm: bool = False     # signature, store or image integrity check failed
    policy_fault: bool = False        # the policy file was refused at start: running the
                                      # last good policy, or in bypass without one
    last_violation: float | None = None
    acknowledged: float | None = None  # the last acknowledge (short press)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")


@dataclass(frozen=True)
class Timing:
    violation_fresh: float = 10.0     # fast blink this long after a violation
    violation_hold: float = 900.0     # then steady until this long after it (15 min)


@dataclass(frozen=True)
class Facts:
    """What the rules look at: the state plus what follows from it at one instant."""

    state: ApplianceState
    bypass: bool            # bypass relays released or mode bypass
    fault: bool             # unhealthy, a policy fault, or the datapath is not running
    violation_fresh: bool   # an unacknowledged violation within violation_fresh
    violation_recent: bool  # an unacknowledged violation within violation_hold


@dataclass(frozen=True)
class Rule:
    when: str                           # the condition, as the documentation says it
    test: Callable[[Facts], bool]
    pattern: Pattern
    meaning: str


def _always(_: Facts) -> bool:
    return True


def _duration(seconds: float) -> str:
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"


_FRESH = _duration(Timing.violation_fresh)
_HOLD = _duration(Timing.violation_hold)


# Per LED, in priority order: the first rule whose test holds decides the LED's pattern.
RULES: dict[str, tuple[Rule, ...]] = {
    "health": (
        Rule("bypass", lambda f: f.bypass, Pattern.OFF,
             "traffic bypasses the classifier: nothing is checked"),
        Rule("not healthy", lambda f: not f.state.healthy, Pattern.OFF,
             "a self-check failed: see `wardtap status` and the log"),
        Rule("policy fault", lambda f: f.state.policy_fault, Pattern.FAST,
             "the policy file was refused: running the last good policy; see `wardtap "
             "status`, fix the file, `wardtap reload`"),
        Rule("datapath not running", lambda f: not f.state.datapath_running, Pattern.SLOW,
             "starting, or the datapath has stopped"),
        Rule("mode enforce", lambda f: f.state.mode == "enforce", Pattern.STEADY,
             "healthy and enforcing the allow-list"),
        Rule("mode learn or monitor", _always, Pattern.DOUBLE,
             "healthy, observing only: nothing is blocked"),
    ),
    "learn": (
        Rule("bypass", lambda f: f.bypass, Pattern.OFF, "bypass (see the white LED)"),
        Rule("mode learn", lambda f: f.state.mode == "learn", Pattern.STEADY,
             "learning each device's baseline; nothing is blocked"),
        Rule("mode monitor", lambda f: f.state.mode == "monitor", Pattern.SLOW,
             "monitoring: violations are reported, nothing is blocked"),
        Rule("mode enforce", _always, Pattern.OFF, "enforcing (see the green LED)"),
    ),
    "violation": (
        Rule("integrity alarm", lambda f: f.state.integrity_alarm, Pattern.DOUBLE,
             "integrity alarm (policy signature, store or image check failed); "
             "stays until the cause is fixed, a short press does not clear it"),
        Rule(f"violation in the last {_FRESH}", lambda f: f.violation_fresh, Pattern.FAST,
             "a conversation outside the allow-list, just now"),
        Rule(f"violation in the last {_HOLD}", lambda f: f.violation_recent, Pattern.STEADY,
             "a violation within the hold time; a short press acknowledges it"),
        Rule("none", _always, Pattern.OFF, "no unacknowledged violation"),
    ),
    "broker": (
        Rule("no broker configured", lambda f: not f.state.broker_configured, Pattern.OFF,
             "standalone: no fleet broker configured"),
        Rule("connected", lambda f: f.state.broker_connected, Pattern.STEADY,
             "connected to the fleet broker"),
        Rule("disconnected", _always, Pattern.SLOW,
             "broker unreachable: events are spooled and sent when it is back"),
    ),
    "bypass": (
        Rule("bypass after a fault", lambda f: f.bypass and f.fault, Pattern.FAST,
             "fail-open after a fault (crash, hang, self-check): the ward is NOT protected"),
        Rule("bypass", lambda f: f.bypass, Pattern.STEADY,
             "bypass by command, long press or mode bypass: the ward is NOT protected"),
        Rule("inline or tap", _always, Pattern.OFF,
             "ward traffic passes through the classifier"),
    ),
}
IDENTIFY_MEANING = ("identify (a fleet command): health, learn and broker blink together at "
                    "4 Hz; violation and bypass keep showing their state; ends after its time "
                    "(at most 10 min) or with a short press")
assert tuple(RULES) == LED_NAMES


@dataclass(frozen=True)
class Display:
    """A pattern per LED (in LED_NAMES order); identify: all blink together."""

    patterns: tuple[tuple[str, Pattern], ...]
    identify: bool = False

    def __getitem__(self, name: str) -> Pattern:
        for led, pattern in self.patterns:
            if led == name:
                return pattern
        raise KeyError(name)

    def as_dict(self) -> dict[str, str]:
        return {led: ("identify" if self.identify and led in IDENTIFY_LEDS else p.value)
                for led, p in self.patterns}


def facts(state: ApplianceState, now: float, timing: Timing = Timing()) -> Facts:
    age = None
    if state.last_violation is not None and not (
            state.acknowledged is not None and state.acknowledged >= state.last_violation):
        age = now - state.last_violation
    return Facts(
        state=state,
        bypass=state.bypass or state.mode == "bypass",
        fault=not state.healthy or state.policy_fault or not state.datapath_running,
        violation_fresh=age is not None and age < timing.violation_fresh,
        violation_recent=age is not None and age < timing.violation_hold,
    )


def decide(state: ApplianceState, now: float | None = None,
           timing: Timing = Timing()) -> Display:
    """The pattern of every LED for `state` at monotonic time `now`."""
    f = facts(state, time.monotonic() if now is None else now, timing)
    patterns = tuple((led, next(r.pattern for r in RULES[led] if r.test(f)))
                     for led in LED_NAMES)
    return Display(patterns, identify=state.identify)


def next_change(state: ApplianceState, now: float, timing: Timing = Timing()) -> float | None:
    """The next monotonic time at which `decide` may change with no new input, if any."""
    if state.last_violation is None:
        return None
    times = [state.last_violation + timing.violation_fresh,
             state.last_violation + timing.violation_hold]
    future = [t for t in times if t > now]
    return min(future) if future else None


# ---- documentation and console ------------------------------------------------------------

def rules_markdown(pinmap: PinMap | None = None) -> str:
    """The table in docs/leds.md: every LED, every pattern, in priority order."""
    colours = {led.name: led.colour for led in pinmap.leds} if pinmap else {}
    rows = ["| LED | priority | when | pattern | meaning |", "|---|---|---|---|---|",
            f"| {', '.join(IDENTIFY_LEDS)} | 0 | identify | {Pattern.FAST.value}, together | "
            f"{IDENTIFY_MEANING} |"]
    for led in LED_NAMES:
        name = f"{led} ({colours[led]})" if led in colours else led
        for i, rule in enumerate(RULES[led], 1):
            rows.append(f"| {name} | {i} | {rule.when} | {rule.pattern.value} | "
                        f"{rule.meaning} |")
    return "\n".join(rows) + "\n"


SYMBOLS = {pattern: GLYPHS[pattern.value] for pattern in Pattern}


def render_markup(display: Display, colours: dict[str, str] | None = None) -> str:
    """One console line in `rich` markup, e.g. '[green]●[/] health  [grey50]○[/] learn ...'.

    ● steady, ○ off, ◐ slow blink, ◉ fast blink, ◑ double flash (the pattern is named).
    """
    colours = colours or {}
    parts = []
    for led, pattern in display.patterns:
        identify = display.identify and led in IDENTIFY_LEDS
        if identify:
            pattern = Pattern.FAST
        colour = RICH_COLOURS.get(colours.get(led, ""), "white")
        style = "grey50" if pattern is Pattern.OFF else colour
        plain = identify or pattern in (Pattern.OFF, Pattern.STEADY)
        label = led if plain else f"{led} ({pattern.value})"
        parts.append(f"[{style}]{SYMBOLS[pattern]}[/] {label}")
    line = "  ".join(parts)
    return f"[bold]identify[/] {line}" if display.identify else line


# ---- the panel on the pins ----------------------------------------------------------------

class LedPanel:
    """The five LEDs on GPIO, showing an ApplianceState. A context manager; close() twice is
    safe. Thread-safe: update() may be called from any thread."""

    def __init__(self, pinmap: PinMap | None = None, *, pin_factory: Any = None,
                 state: ApplianceState | None = None, timing: Timing = Timing(),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.pinmap = pinmap if pinmap is not None else load_pinmap()
        self.timing = timing
        self._clock = clock
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._state = state or ApplianceState()
        self._identify_until: float | None = None
        self._applied: Display | None = None
        self._identify_stop: threading.Event | None = None
        self._identify_thread: threading.Thread | None = None
        self._closed = False
        from gpiozero import LEDBoard  # here, not at import: importing must work anywhere

        factory = resolve_pin_factory(pin_factory)
        self.backend = backend_name(factory)
        self._board = LEDBoard(**{led.name: led.bcm for led in self.pinmap.leds},
                               _order=list(LED_NAMES), pin_factory=factory)
        self._leds = {name: getattr(self._board, name) for name in LED_NAMES}
        self._colours = {led.name: led.colour for led in self.pinmap.leds}
        try:
            self._show(decide(self._state, self._clock(), self.timing))
            self._thread = threading.Thread(target=self._run, name="wardtap-leds",
                                            daemon=True)
            self._thread.start()
        except BaseException:
            self._board.close()
            raise

    # -- state in --

    @property
    def state(self) -> ApplianceState:
        with self._lock:
            return self._state

    @property
    def display(self) -> Display:
        with self._lock:
            return decide(self._state, self._clock(), self.timing)

    def update(self, **changes: Any) -> Display:
        """Change some fields of the state (see ApplianceState) and show the result."""
        unknown = set(changes) - {f.name for f in fields(ApplianceState)}
        if unknown:
            raise TypeError(f"unknown state field(s): {', '.join(sorted(unknown))}")
        with self._lock:
            if "identify" in changes and not changes["identify"]:
                self._identify_until = None
            self._state = replace(self._state, **changes)
            return self._refresh()

    def set_state(self, state: ApplianceState) -> Display:
        with self._lock:
            self._state = state
            if not state.identify:
                self._identify_until = None
            return self._refresh()

    def note_violation(self, at: float | None = None) -> Display:
        """A violation was seen (now, or at monotonic time `at`)."""
        return self.update(last_violation=self._clock() if at is None else at)

    def acknowledge(self) -> Display:
        """Short press: end identify and acknowledge the violations seen so far."""
        return self.update(identify=False, acknowledged=self._clock())

    def identify(self, seconds: float | None = 600.0) -> Display:
        """Blink all LEDs together for `seconds` (None: until acknowledge or update)."""
        with self._lock:
            self._state = replace(self._state, identify=True)
            self._identify_until = None if seconds is None else self._clock() + seconds
            return self._refresh()

    # -- out --

    def render(self) -> str:
        """The current LED states as one line of rich markup, for the console."""
        return render_markup(self.display, self._colours)

    def _refresh(self) -> Display:
        display = decide(self._state, self._clock(), self.timing)
        if not self._closed:
            self._show(display)
            self._wake.notify_all()
        return display

    def _show(self, display: Display) -> None:
        """Put a Display on the pins, touching only the LEDs whose pattern changed."""
        before = self._applied
        if display.identify and (before is None or not before.identify):
            for name in IDENTIFY_LEDS:
                led = self._leds[name]
                led.source = None        # stop a double flash
                led.off()                # stop the LED's own blink thread
            self._start_identify()
        elif not display.identify and before is not None and before.identify:
            self._stop_identify()
            before = None
        for name, pattern in display.patterns:
            if display.identify and name in IDENTIFY_LEDS:
                continue
            if before is None or before[name] is not pattern:
                self._drive(self._leds[name], pattern)
        self._applied = display

    def _start_identify(self) -> None:
        """One thread toggles the identify LEDs together (in phase) until stopped."""
        stop = threading.Event()
        leds = [self._leds[name] for name in IDENTIFY_LEDS]

        def blink() -> None:
            on = True
            while True:
                for led in leds:
                    led.value = on
                on = not on
                if stop.wait(IDENTIFY_HALF):
                    return

        self._identify_stop = stop
        self._identify_thread = threading.Thread(target=blink, name="wardtap-identify",
                                                 daemon=True)
        self._identify_thread.start()

    def _stop_identify(self) -> None:
        stop, thread = self._identify_stop, self._identify_thread
        self._identify_stop = self._identify_thread = None
        if stop is not None:
            stop.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2)

    @staticmethod
    def _drive(led: Any, pattern: Pattern) -> None:
        led.source = None            # stop a double flash, if one runs
        DRIVERS[pattern](led)

    def _run(self) -> None:
        """Re-decide when a rule expires by itself: violation hold times, identify's end."""
        with self._lock:
            while not self._closed:
                now = self._clock()
                if self._identify_until is not None and now >= self._identify_until:
                    self._identify_until = None
                    self._state = replace(self._state, identify=False)
                display = decide(self._state, now, self.timing)
                if display != self._applied:
                    self._show(display)
                deadlines = [t for t in (next_change(self._state, now, self.timing),
                                         self._identify_until) if t is not None]
                timeout = max(0.0, min(deadlines) - now) + 0.001 if deadlines else None
                self._wake.wait(timeout)

    # -- life cycle --

    def close(self) -> None:
        """Turn the LEDs off and release the pins; safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._wake.notify_all()
        self._stop_identify()
        thread = getattr(self, "_thread", None)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        for led in self._leds.values():
            led.source = None
        self._board.off()
        self._board.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> LedPanel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<LedPanel {self.backend} {self.display.as_dict()}>"


def _double_flash(led: Any) -> None:
    led.off()
    led.source_delay = DOUBLE_TICK
    led.source = _frames(DOUBLE_FRAMES)


def _frames(frames: tuple[int, ...]) -> Iterator[int]:
    return itertools.cycle(frames)


# how each pattern is put on a gpiozero LED
DRIVERS: dict[Pattern, Callable[[Any], None]] = {
    Pattern.OFF: lambda led: led.off(),
    Pattern.STEADY: lambda led: led.on(),
    Pattern.SLOW: lambda led: led.blink(on_time=SLOW_HALF, off_time=SLOW_HALF),
    Pattern.FAST: lambda led: led.blink(on_time=FAST_HALF, off_time=FAST_HALF),
    Pattern.DOUBLE: _double_flash,
}
