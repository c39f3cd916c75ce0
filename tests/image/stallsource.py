"""A datapath for the notify tests: idle batches every 20 ms, except while the file named by
$WARDTAP_TEST_STALL exists, when asking for the next batch hangs (as a stuck capture or a
wedged NFQUEUE read would). On entering the hang it writes `<file>.stalled`."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any

from appliance.sources.base import Source
from appliance.sources.capture import Batch

_EMPTY = memoryview(b"")


class StallSource(Source):
    name = "replay"

    def __init__(self, files: list[str] | None = None, **options: Any) -> None:
        super().__init__(**options)
        self.stall = os.environ["WARDTAP_TEST_STALL"]

    def batches(self, stop: threading.Event) -> Iterator[Batch]:
        while not stop.is_set():
            if os.path.exists(self.stall):
                with open(self.stall + ".stalled", "w"):
                    pass
                while os.path.exists(self.stall) and not stop.is_set():
                    time.sleep(0.005)            # hung: no batch, no idle poll
                os.unlink(self.stall + ".stalled")
            yield Batch(_EMPTY, *(_EMPTY,) * 5, count=0, first_index=0)
            stop.wait(0.02)
