"""Child Python processes (the inline watchdog, the tshark worker) that import this wardtap."""

from __future__ import annotations

import os

# The directory that holds the `appliance` package, so a child finds the same code even when
# wardtap runs from a source tree rather than an installed package.
SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def child_env() -> dict[str, str]:
    """This process's environment with SOURCE_ROOT first on PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (SOURCE_ROOT, env.get("PYTHONPATH")) if p)
    return env
