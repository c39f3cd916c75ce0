"""The front panel and the console: pin map, GPIO backend, LEDs, button, bypass relay, the
daemon's front panel, and `wardtap status` / `top`.

Imports: appliance.common.
"""
