"""The interface every packet source fills (capture file, AF_PACKET tap, NFQUEUE inline).

A source is opened, then its acquire loop yields batches until `stop` is set; an inline
source also takes the verdicts of each batch before the next one is read. A source that
cannot start (missing interface, missing capability) raises SourceError with the fix in
the message, at open(), before any traffic is touched.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any, ClassVar

from appliance.errors import WardtapError
from appliance.sources.capture import Batch


class SourceError(WardtapError):
    """A packet source that cannot start or went away."""


class Source:
    """Base class: one instance per datapath; a context manager; close() is idempotent."""

    name: ClassVar[str] = ""
    inline: ClassVar[bool] = False           # gives verdicts that decide forwarding
    capabilities: ClassVar[tuple[str, ...]] = ()   # Linux capabilities open() needs
    # The daemon's wake-up eventfd (appliance.common.control.RequestQueue; -1: none). Live
    # sources poll it with their packets and, when it is readable, yield an empty batch at
    # once so the loop answers a request now; the loop, not the source, resets it.
    wakeup_fd = -1

    def __init__(self, **options: Any) -> None:
        self.options = options

    def open(self) -> None:
        """Acquire the interface/queue/file; raise SourceError naming what is missing."""

    def batches(self, stop: threading.Event) -> Iterator[Batch]:
        """Yield batches until `stop` is set or the source ends.

        Live sources yield an empty batch (count 0) at least every `idle_interval` seconds
        when there is no traffic, so the caller can expire flows and feed watchdogs, and as
        soon as `wakeup_fd` is readable.
        """
        raise NotImplementedError

    def verdict(self, batch: Batch, verdicts: memoryview, mode: str,
                reasons: memoryview | None = None) -> None:
        """Inline sources: apply the batch's verdicts (allow=1, deny=2, malformed=3); the
        reasons tell a verdict for this packet only (an unsolicited answer) from a flow's."""

    def set_bypass(self, on: bool) -> None:
        """The daemon entered (on) or left bypass. Sources that forward (inline) stop or
        resume filtering; the others have nothing to change."""

    def flows_changed(self, events: list[dict[str, Any]]) -> None:
        """A new policy changed these flows' verdicts (appliance.common.records.event_dict
        rows). Inline sources make the kernel decide those flows again; the others need
        nothing."""

    def stats(self) -> dict[str, int]:
        """Source counters, e.g. kernel drops."""
        return {}

    def close(self) -> None:
        """Release everything; safe to call twice."""

    def __enter__(self) -> Source:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
