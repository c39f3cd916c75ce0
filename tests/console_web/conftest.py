"""Fixtures for the console tests: see webkit.py."""

from console_web.webkit import artifacts, browser, fleet, postgres  # noqa: F401
