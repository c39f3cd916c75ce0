"""wardtap appliance: the slow path, the daemon and the command line around the fast path."""

__version__ = "0.1.0"
