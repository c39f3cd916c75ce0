"""How an LED is drawn on a screen: a glyph per pattern and a console colour per LED colour.

Shared by the front panel's own line (appliance.panel.leds) and `wardtap status`
(appliance.panel.statustext), which must not pay for importing the panel to draw a dot.
"""

from __future__ import annotations

# pattern (appliance.panel.leds.Pattern value) -> glyph
GLYPHS = {"off": "○", "steady": "●", "slow blink": "◐", "fast blink": "◉",
          "double flash": "◑"}
# LED colour (pinmap) -> console colour (rich's names)
RICH_COLOURS = {"green": "green", "amber": "dark_orange", "red": "red", "blue": "dodger_blue1",
                "white": "bright_white", "yellow": "yellow", "orange": "orange1"}
