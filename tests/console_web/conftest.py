"""Fixtures for the console tests: see webkit.py."""

from webkit import artifacts, browser, fleet, postgres  # noqa: F401
